"""amr_jax: label-distribution losses, models and training for facial age estimation in JAX."""

__version__ = "0.1.0"
