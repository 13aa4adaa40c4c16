"""Layers shared by the models: convolution and BatchNorm with the conventions every model uses."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# Normal with std sqrt(2 / (k * k * out_channels)): He et al.'s init as torchvision
# (kaiming_normal_, mode="fan_out") and the Torch7 MSRinit used by DLDL-v2 apply it.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel: int, stride: int = 1, *, dtype: Any = jnp.float32, name: str | None = None,
         same_padding: bool = False, groups: int = 1) -> nn.Conv:
  """A bias-free convolution: PyTorch's symmetric ``kernel // 2`` padding, or TensorFlow's "SAME"."""
  pad = "SAME" if same_padding else ((kernel // 2, kernel // 2),) * 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad,
                 use_bias=False, feature_group_count=groups, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=he_normal_fan_out, name=name)


def batch_norm(train: bool, *, dtype: Any = jnp.float32, axis_name: str | None = None, epsilon: float = 1e-5,
               momentum: float = 0.9, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm; ``momentum=0.9`` is PyTorch's 0.1. With ``axis_name`` the batch statistics are averaged over devices."""
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon, dtype=dtype,
                      param_dtype=jnp.float32, axis_name=axis_name, name=name)


def global_average_pool(x):
  return jnp.mean(x, axis=(1, 2))


__all__ = ["batch_norm", "conv", "global_average_pool", "he_normal_fan_out"]


def normalize_input(x, normalization, dtype: Any):
  """``x`` as ``dtype``, minus ``mean`` and divided by ``std`` of ``normalization = (mean, std)`` (each a number or
  one per channel); as it is for ``None``."""
  x = jnp.asarray(x, dtype)
  if normalization is None:
    return x
  mean, std = normalization
  return (x - jnp.asarray(mean, dtype)) / jnp.asarray(std, dtype)
