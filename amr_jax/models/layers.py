"""Layers shared by the models: convolution and BatchNorm with the conventions every model uses.

Every model's convolutions are :class:`Conv`: Flax's ``nn.Conv`` for what the models use of it (the same
parameters, names and arithmetic), plus one choice Flax no longer offers a supported hook for. Inside
:func:`patch_convolutions`, a convolution that is not grouped is traced as one matrix product of image patches
(im2col) instead of XLA's convolution. The two are the same sum in another order. Folds trained at once
(:func:`amr_jax.training.step_functions.folds_train_step`) vmap the model over each fold's weights, and XLA turns
a convolution with batched weights into a grouped one; the patches make it a batched matrix product instead,
which XLA:CPU ran 6.5 times faster in float64 (``python -m benchmarks.lopo_speed``).
"""

import contextlib
import contextvars
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

# Normal with std sqrt(2 / (k * k * out_channels)): He et al.'s init as torchvision
# (kaiming_normal_, mode="fan_out") and the Torch7 MSRinit used by DLDL-v2 apply it.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


_PATCHES = contextvars.ContextVar("amr_jax_patch_convolutions", default=False)


@contextlib.contextmanager
def patch_convolutions(enabled: bool = True):
  """Within it, :class:`Conv` traces an ungrouped convolution as a matrix product of image patches."""
  token = _PATCHES.set(enabled)
  try:
    yield
  finally:
    _PATCHES.reset(token)


def patches_convolution(x, kernel, strides: Sequence[int], padding: Sequence[tuple[int, int]]):
  """``lax.conv_general_dilated`` (NHWC, HWIO, ungrouped, undilated) as one product of ``x``'s patches and ``kernel``.

  The patches ``[n, h, w, kh * kw * c]`` are gathered from strided slices of the padded input and contracted with
  the kernel reshaped to ``[kh * kw * c, features]``; a 1x1 convolution is a plain matrix product.
  """
  kh, kw = kernel.shape[:2]
  (sh, sw), (ph, pw) = strides, padding
  x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
  out_h, out_w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  columns = [x[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]
             for i in range(kh) for j in range(kw)]
  patches = columns[0] if len(columns) == 1 else jnp.concatenate(columns, axis=-1)
  return jnp.einsum("nhwk,kf->nhwf", patches, kernel.reshape(-1, kernel.shape[-1]))


class Conv(nn.Module):
  """A 2-D convolution with ``nn.Conv``'s parameters (``kernel`` HWIO, ``bias``) and arithmetic, NHWC.

  ``padding``: "SAME", "VALID" or ``((top, bottom), (left, right))``; ``groups``: the feature group count.
  """
  features: int
  kernel_size: int
  strides: int = 1
  padding: Any = "SAME"
  use_bias: bool = False
  groups: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Any = he_normal_fan_out

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1] // self.groups, self.features),
                        self.param_dtype)
    x, kernel = jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype)
    strides = (self.strides, self.strides)
    padding = (lax.padtype_to_pads(x.shape[1:3], (k, k), strides, self.padding) if isinstance(self.padding, str)
               else tuple(tuple(p) for p in self.padding))
    if self.groups == 1 and _PATCHES.get():
      y = patches_convolution(x, kernel, strides, padding)
    else:
      y = lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   feature_group_count=self.groups)
    if self.use_bias:
      y = y + jnp.asarray(self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype), self.dtype)
    return y


def conv(features: int, kernel: int, stride: int = 1, *, dtype: Any = jnp.float32, name: str | None = None,
         same_padding: bool = False, groups: int = 1) -> Conv:
  """A bias-free convolution: PyTorch's symmetric ``kernel // 2`` padding, or TensorFlow's "SAME"."""
  pad = "SAME" if same_padding else ((kernel // 2, kernel // 2),) * 2
  return Conv(features, kernel, stride, pad, groups=groups, dtype=dtype, name=name)


def batch_norm(train: bool, *, dtype: Any = jnp.float32, axis_name: str | None = None, epsilon: float = 1e-5,
               momentum: float = 0.9, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm; ``momentum=0.9`` is PyTorch's 0.1. With ``axis_name`` the batch statistics are averaged over devices."""
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon, dtype=dtype,
                      param_dtype=jnp.float32, axis_name=axis_name, name=name)


def global_average_pool(x):
  return jnp.mean(x, axis=(1, 2))


__all__ = ["Conv", "batch_norm", "conv", "global_average_pool", "he_normal_fan_out", "patch_convolutions",
           "patches_convolution"]


def normalize_input(x, normalization, dtype: Any):
  """``x`` as ``dtype``, minus ``mean`` and divided by ``std`` of ``normalization = (mean, std)`` (each a number or
  one per channel); as it is for ``None``."""
  x = jnp.asarray(x, dtype)
  if normalization is None:
    return x
  mean, std = normalization
  return (x - jnp.asarray(mean, dtype)) / jnp.asarray(std, dtype)
