"""Models: parameter counts, shapes, BatchNorm modes, bfloat16, and the model registry."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amr_jax import models


def _init(name, num_classes, size=64, **kwargs):
  module = models.create_model(name, num_classes, **kwargs)
  variables = jax.jit(functools.partial(module.init, train=False))(jax.random.key(0), jnp.zeros((1, size, size, 3)))
  return module, variables


def _jit_apply(module):
  return jax.jit(module.apply, static_argnames=("train", "mutable"))


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,num_classes,want", [
    ("thin_age_net", 101, 3_708_229),   # DLDL-v2 paper
    ("tiny_age_net", 101, 934_869),     # DLDL-v2 paper
    ("resnet18", 1000, 11_689_512),     # torchvision
    ("resnet34", 1000, 21_797_672),     # torchvision
    ("resnet50", 1000, 25_557_032),     # torchvision
    ("efficientnet_lite0", 1000, 4_652_008),  # TensorFlow's EfficientNet-Lite0
    ("efficientnet_lite1", 1000, 5_416_680),  # TensorFlow's 5.4 M
    ("efficientnet_lite2", 1000, 6_092_072),  # TensorFlow's 6.1 M
])
def test_trainable_parameter_counts(name, num_classes, want):
  module = models.create_model(name, num_classes)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  assert _count(shapes["params"]) == want


# Models whose forward pass really runs in another test, with weights that give known outputs.
RUN_IN_TEST_PRETRAINED = {
    "resnet18": "PyTorch's logits", "resnet50": "PyTorch's logits", "efficientnet_lite0": "ImageNet photographs",
    "efficientnet_lite1": "ImageNet photographs", "efficientnet_lite2": "ImageNet photographs"}


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_output_shapes_at_64_112_224(name):
  module = models.create_model(name, 70)
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  for size in (64, 112, 224):
    out = jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, jnp.zeros((2, size, size, 3)))
    assert out.shape == (2, 70), (size, out.shape)
  if name in RUN_IN_TEST_PRETRAINED:
    return  # tests/test_pretrained.py runs it at 64 px or more against real outputs
  # And really run the smallest size.
  module, variables = _init(name, 70, 64)
  logits = jax.jit(functools.partial(module.apply, train=False))(variables, jnp.ones((2, 64, 64, 3)))
  assert logits.shape == (2, 70) and np.all(np.isfinite(logits))


def _float64(tree):
  return jax.tree.map(lambda x: x.astype(jnp.float64), tree)


# Identities below are checked in float64 (under jax.enable_x64): summing a logit or a statistic's ~10^5
# terms in another order moves it by at most 1e5 * 1.1e-16 of the terms' size, far below these tolerances,
# while a batch-dependent result or a missing average is off by whole percents.
FLOAT64_RTOL, FLOAT64_ATOL = 1e-9, 1e-9


@pytest.mark.parametrize("name", ["tiny_age_net", "resnet18"])
def test_train_mode_uses_batch_statistics_and_updates_running_averages(name):
  with jax.enable_x64(True):
    module, variables = _init(name, 10, 64, dtype=jnp.float64)
    variables = _float64(variables)
    apply = _jit_apply(module)
    images = jax.random.normal(jax.random.key(1), (4, 64, 64, 3), jnp.float64)
    train_logits, updates = apply(variables, images, train=True, mutable=("batch_stats",))
    eval_logits = apply(variables, images, train=False)
    alone = apply(variables, images[:1], train=False)
    alone_train, _ = apply(variables, images[:2], train=True, mutable=("batch_stats",))
  assert eval_logits.dtype == jnp.float64
  assert not np.allclose(train_logits, eval_logits, atol=1e-3)
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree.leaves(changed))
  # Eval mode: each image's logits do not depend on the rest of the batch.
  np.testing.assert_allclose(alone, eval_logits[:1], rtol=FLOAT64_RTOL, atol=FLOAT64_ATOL)
  # Train mode: they do (batch statistics).
  assert not np.allclose(alone_train[:1], train_logits[:1], atol=1e-4)


@pytest.mark.parametrize("name", ["thin_age_net", "resnet18"])
def test_bfloat16_forward_close_to_float32(name):
  module32, variables = _init(name, 10, 64)
  module16 = models.create_model(name, 10, dtype=jnp.bfloat16)
  images = jax.random.uniform(jax.random.key(2), (2, 64, 64, 3))
  full = _jit_apply(module32)(variables, images, train=False)
  half = _jit_apply(module16)(variables, images, train=False)
  assert half.dtype == jnp.bfloat16
  assert jax.tree.leaves(variables)[0].dtype == jnp.float32
  scale = np.abs(full).max()
  np.testing.assert_allclose(np.asarray(half, np.float32), full, atol=0.05 * scale)


def test_batch_norm_statistics_are_averaged_across_devices(cpu_devices):
  n = len(cpu_devices)
  with jax.enable_x64(True):
    module = models.create_model("tiny_age_net", 5, axis_name="batch", dtype=jnp.float64)
    plain, variables = _init("tiny_age_net", 5, dtype=jnp.float64)
    variables = _float64(variables)
    images = jax.random.normal(jax.random.key(3), (n * 2, 64, 64, 3), jnp.float64)
    replicated = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), variables)
    step = jax.pmap(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]), axis_name="batch",
                    devices=cpu_devices)
    sharded_logits, sharded_stats = step(replicated, images.reshape(n, 2, 64, 64, 3))
    whole_logits, whole_stats = _jit_apply(plain)(variables, images, train=True, mutable=("batch_stats",))
  assert whole_logits.dtype == jnp.float64
  np.testing.assert_allclose(sharded_logits.reshape(n * 2, 5), whole_logits, rtol=FLOAT64_RTOL, atol=FLOAT64_ATOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=FLOAT64_RTOL, atol=FLOAT64_ATOL),
               sharded_stats["batch_stats"], whole_stats["batch_stats"])


def test_unknown_model_name_lists_the_valid_ones():
  with pytest.raises(ValueError, match="unknown model 'resnet101'; valid names: dlib_age_resnet, efficientnet_lite0, "
                     "efficientnet_lite1, efficientnet_lite2, resnet18, resnet34, resnet50, thin_age_net, tiny_age_net\\."):
    models.create_model("resnet101", 10)
  with pytest.raises(ValueError, match="num_classes must be a positive integer"):
    models.create_model("resnet18", 0)


@pytest.mark.parametrize("kernel, stride, padding", [(1, 1, "SAME"), (3, 1, ((1, 1), (1, 1))), (3, 2, "SAME"),
                                                     (7, 2, "VALID"), (3, 2, ((0, 0), (0, 0)))])
def test_a_convolution_as_a_product_of_patches_is_xlas_convolution(kernel, stride, padding):
  """The same sum in another order: equal to float64 rounding (each output sums at most 7 * 7 * 5 terms)."""
  from amr_jax.models import layers

  with jax.enable_x64(True):
    module = layers.Conv(6, kernel, stride, padding, use_bias=True, dtype=jnp.float64, param_dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(0), (2, 13, 11, 5), jnp.float64)
    variables = module.init(jax.random.key(1), x)
    variables = jax.tree.map(lambda v: v + 0.1, variables)  # a bias that is not zero
    xla = module.apply(variables, x)
    with layers.patch_convolutions():
      patches = module.apply(variables, x)
    assert patches.shape == xla.shape
    np.testing.assert_allclose(patches, xla, rtol=0, atol=1e-12)
    with layers.patch_convolutions(False):
      np.testing.assert_array_equal(module.apply(variables, x), xla)


def test_grouped_convolutions_stay_xlas_inside_patch_convolutions():
  from amr_jax.models import layers

  module = layers.Conv(8, 3, 1, "SAME", groups=8)
  x = jax.random.normal(jax.random.key(0), (1, 9, 9, 8))
  variables = module.init(jax.random.key(1), x)
  with layers.patch_convolutions():
    jaxpr = str(jax.make_jaxpr(lambda v: module.apply(v, x))(variables))
  assert "conv_general_dilated" in jaxpr and "dot_general" not in jaxpr
