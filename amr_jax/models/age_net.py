"""ThinAgeNet and TinyAgeNet (DLDL-v2, Gao et al., IJCAI 2018): VGG-16 with every width halved / quartered.

Thirteen 3x3 convolutions (stride 1, padding 1, no bias) each followed by
BatchNorm and ReLU, a 2x2 max-pool after each of the five groups, then the
"hybrid pooling" (a global average pool; 7x7 at 224 px) and a linear layer.
With 101 classes: ThinAgeNet 3,708,229 and TinyAgeNet 934,869 trainable
parameters (BatchNorm scale and bias included, running statistics not).
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from amr_jax.models.layers import batch_norm, conv, global_average_pool, normalize_input

VGG16_GROUPS = (2, 2, 3, 3, 3)  # convolutions per group, each group ends in a max-pool


class VGGAgeNet(nn.Module):
  """Attributes: ``widths`` (features per group), ``num_classes``, ``dtype``, ``axis_name``, ``input_normalization``
  (as ResNet)."""

  widths: Sequence[int]
  num_classes: int
  dtype: Any = jnp.float32
  axis_name: str | None = None
  input_normalization: tuple | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = normalize_input(x, self.input_normalization, self.dtype)
    for group, (num_convs, width) in enumerate(zip(VGG16_GROUPS, self.widths)):
      for i in range(num_convs):
        name = f"conv{group + 1}_{i + 1}"
        x = conv(width, 3, dtype=self.dtype, name=name)(x)
        x = nn.relu(batch_norm(train, dtype=self.dtype, axis_name=self.axis_name, name=f"bn{group + 1}_{i + 1}")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = global_average_pool(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="fc")(x)


ThinAgeNet = functools.partial(VGGAgeNet, widths=(32, 64, 128, 256, 256))
TinyAgeNet = functools.partial(VGGAgeNet, widths=(16, 32, 64, 128, 128))
