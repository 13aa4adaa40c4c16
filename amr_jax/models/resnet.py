"""ResNet-18/34/50 whose parameter tree maps one-to-one onto torchvision's ``state_dict``.

Module names follow torchvision (``conv1``, ``bn1``, ``layer1/0/conv1``,
``layer2/0/downsample/0``, ``fc``), so ``layer3.1.bn2.running_var`` in a
torchvision checkpoint is ``batch_stats['layer3']['1']['bn2']['var']`` here.
ResNet-50 is torchvision's v1.5 (stride on the 3x3 convolution).
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from amr_jax.models.layers import batch_norm, conv, global_average_pool, normalize_input


class BasicBlock(nn.Module):
  """ResNet-18/34's block: two 3x3 convolutions and a shortcut."""

  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  axis_name: str | None = None
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(batch_norm, train, dtype=self.dtype, axis_name=self.axis_name)
    y = nn.relu(norm(name="bn1")(conv(self.features, 3, self.stride, dtype=self.dtype, name="conv1")(x)))
    y = norm(name="bn2")(conv(self.features, 3, dtype=self.dtype, name="conv2")(y))
    return nn.relu(y + _shortcut(self, x, train))


class Bottleneck(nn.Module):
  """ResNet-50's block: 1x1, 3x3 (strided, v1.5) and 1x1 convolutions at 4x width, and a shortcut."""

  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  axis_name: str | None = None
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(batch_norm, train, dtype=self.dtype, axis_name=self.axis_name)
    y = nn.relu(norm(name="bn1")(conv(self.features, 1, dtype=self.dtype, name="conv1")(x)))
    y = nn.relu(norm(name="bn2")(conv(self.features, 3, self.stride, dtype=self.dtype, name="conv2")(y)))
    y = norm(name="bn3")(conv(self.features * 4, 1, dtype=self.dtype, name="conv3")(y))
    return nn.relu(y + _shortcut(self, x, train))


class Downsample(nn.Module):
  """torchvision's ``downsample``: ``0`` a strided 1x1 convolution, ``1`` its BatchNorm."""

  features: int
  stride: int
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = conv(self.features, 1, self.stride, dtype=self.dtype, name="0")(x)
    return batch_norm(train, dtype=self.dtype, axis_name=self.axis_name, name="1")(x)


def _shortcut(block, x, train):
  out_features = block.features * block.expansion
  if block.stride == 1 and x.shape[-1] == out_features:
    return x
  return Downsample(out_features, block.stride, block.dtype, block.axis_name, name="downsample")(x, train)


class ResNetStage(nn.Module):
  block: Any
  features: int
  num_blocks: int
  stride: int
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(self.num_blocks):
      x = self.block(self.features, self.stride if i == 0 else 1, self.dtype, self.axis_name, name=str(i))(x, train)
    return x


class ResNet(nn.Module):
  """ResNet on NHWC images of any size from 64 px up; returns logits ``[batch, num_classes]``.

  Attributes:
    stage_sizes: blocks per stage (``layer1`` .. ``layer4``).
    block: :class:`~amr_jax.models.resnet.BasicBlock` or :class:`~amr_jax.models.resnet.Bottleneck`.
    num_classes: outputs of the final ``fc`` layer.
    dtype: computation dtype (parameters stay float32); bfloat16 on GPU/TPU.
    axis_name: a ``pmap`` axis name to average BatchNorm statistics over devices.
    input_normalization: ``(mean, std)`` (numbers, or one per channel) subtracted from and divided into the input
      images; ``None`` feeds them as given (RGB in [0, 1]).
  """

  stage_sizes: Sequence[int]
  block: Any
  num_classes: int
  dtype: Any = jnp.float32
  axis_name: str | None = None
  input_normalization: tuple | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = normalize_input(x, self.input_normalization, self.dtype)
    x = conv(64, 7, 2, dtype=self.dtype, name="conv1")(x)
    x = nn.relu(batch_norm(train, dtype=self.dtype, axis_name=self.axis_name, name="bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, num_blocks in enumerate(self.stage_sizes):
      x = ResNetStage(self.block, 64 * 2**i, num_blocks, 1 if i == 0 else 2, self.dtype, self.axis_name,
                      name=f"layer{i + 1}")(x, train)
    x = global_average_pool(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="fc")(x)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck)
