"""Analytic FLOP counts: hand-worked convolutions and products, and ResNet-50's published size."""

import functools

import jax
import jax.numpy as jnp
import pytest

from amr_jax import models
from amr_jax.models import flops


def _conv(x, kernel, stride=1, groups=1):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def test_one_padded_convolution_counts_every_output_times_its_window():
  x = jnp.ones((2, 8, 8, 3))
  kernel = jnp.ones((3, 3, 3, 4))
  # 2 images x 8 x 8 positions x 4 features, each 3 x 3 x 3 multiply-accumulates (zero padding included).
  assert flops.forward_flops(_conv, x, kernel) == 2 * (2 * 8 * 8 * 4) * 27
  # Stride 2: a quarter of the positions.
  assert flops.forward_flops(functools.partial(_conv, stride=2), x, kernel) == 2 * (2 * 4 * 4 * 4) * 27


def test_a_depthwise_convolution_counts_one_input_feature_per_output():
  x = jnp.ones((1, 8, 8, 6))
  kernel = jnp.ones((3, 3, 1, 6))
  assert flops.forward_flops(functools.partial(_conv, groups=6), x, kernel) == 2 * (8 * 8 * 6) * 9


def test_a_matrix_product_counts_rows_times_columns_times_the_shared_axis():
  a, b = jnp.ones((5, 7)), jnp.ones((7, 3))
  assert flops.forward_flops(jnp.matmul, a, b) == 2 * 5 * 3 * 7
  # Element-wise work is not counted.
  assert flops.forward_flops(lambda a: jnp.tanh(a) * 2 + 1, a) == 0


def test_training_adds_one_product_per_operand_that_depends_on_the_parameters():
  x = jnp.ones((2, 8, 8, 3))
  params = {"k1": jnp.ones((3, 3, 3, 4)), "k2": jnp.ones((3, 3, 4, 4)), "w": jnp.ones((4, 5))}

  def loss(params, x):
    y = jax.nn.relu(_conv(x, params["k1"]))
    y = jax.nn.relu(_conv(y, params["k2"]))
    return jnp.sum(y.mean(axis=(1, 2)) @ params["w"])

  conv1, conv2, dense = 2 * 8 * 8 * 4 * 27, 2 * 8 * 8 * 4 * 36, 2 * 4 * 5
  assert flops.forward_flops(loss, params, x) == 2 * (conv1 + conv2 + dense)
  # The first convolution's input is data: only its weights' gradient. The others: weights and inputs.
  assert flops.training_flops(loss, params, x) == 2 * (2 * conv1 + 3 * conv2 + 3 * dense)


def test_products_inside_jit_and_scan_are_counted_with_their_repetitions():
  a = jnp.ones((4, 4))
  looped = lambda a: jax.lax.scan(lambda c, _: (jax.jit(jnp.matmul)(c, a), None), a, length=3)[0]
  assert flops.forward_flops(looped, a) == 3 * 2 * 4 * 4 * 4


def test_a_loop_of_unknown_length_is_refused_not_undercounted():
  a = jnp.ones((4, 4))
  with pytest.raises(NotImplementedError, match="while"):
    flops.forward_flops(lambda a: jax.lax.while_loop(lambda c: c.sum() < 100, lambda c: c @ a, a), a)


def test_resnet50_forward_at_224_px_is_its_published_4_1_gmacs():
  """torchvision lists ResNet-50 at 4.09 GFLOPS, counting multiply-accumulates (fvcore's convention)."""
  module = models.create_model("resnet50", 1000)
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), images)
  macs = flops.forward_flops(functools.partial(module.apply, train=False), variables, images) / 2
  assert abs(macs / 4.1e9 - 1) < 0.05, macs
