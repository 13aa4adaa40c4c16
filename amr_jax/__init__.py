"""amr_jax: label-distribution losses, models and training for facial age estimation in JAX."""

import importlib

from amr_jax import xla_flags as _xla_flags

__version__ = "0.1.0"

# Before JAX starts its CPU backend: jaxlib 0.11-0.12's YNNPACK fusions make bfloat16 convolutions NaN there.
_xla_flags.turn_off_cpu_ynn_fusion()


def __getattr__(name):
  # ``amr_jax.AgeEstimator`` is imported when first asked for: ``import amr_jax`` (and the core install, which
  # has no detector, Pillow or ONNX reader) stays as light as the losses need.
  if name in ("AgeEstimator", "FaceAge"):
    return getattr(importlib.import_module("amr_jax.age_estimator"), name)
  raise AttributeError(f"module 'amr_jax' has no attribute {name!r}")
