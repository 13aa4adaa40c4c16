"""amr_jax: label-distribution losses, models and training for facial age estimation in JAX."""

from amr_jax import xla_flags as _xla_flags

__version__ = "0.1.0"

# Before JAX starts its CPU backend: jaxlib 0.11-0.12's YNNPACK fusions make bfloat16 convolutions NaN there.
_xla_flags.turn_off_cpu_ynn_fusion()
