"""The losses and metric sums under a sharded ``jit`` (a batch split over a device mesh) equal the unsharded ones."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from amr_jax import losses, metrics

# Per-example values: the same float32 sum over 70 classes per example, maybe in another order: 70 x 6e-8 = 4e-6
# apart at most. Metric sums: 64 examples summed as two halves then added, 64 x 6e-8 = 4e-6.
RTOL = 1e-5


@pytest.mark.parametrize("loss", [losses.adaptive_mean_residue_loss, losses.mean_variance_loss,
                                  functools.partial(losses.dldl_v2_loss, start_age=5)])
def test_per_example_losses_and_metric_sums_are_the_same_sharded_over_two_devices(loss):
  mesh = jax.make_mesh((2,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices("cpu")[:2])
  split = NamedSharding(mesh, PartitionSpec("batch"))
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=3.0, size=(64, 70)).astype(np.float32)
  ages = rng.uniform(5, 74, size=64).astype(np.float32)
  mask = rng.uniform(size=64) < 0.9

  def step(logits, ages, mask):
    predicted = losses.expected_age(logits, start_age=5)
    return loss(logits, ages), metrics.age_metric_sums(predicted, ages, mask=mask)

  whole_losses, whole_sums = jax.jit(step)(logits, ages, mask)
  sharded = [jax.device_put(x, split) for x in (logits, ages, mask)]
  assert len(sharded[0].sharding.device_set) == 2
  split_losses, split_sums = jax.jit(step)(*sharded)
  assert split_losses.sharding.is_equivalent_to(split, 1)  # per-example values stay where their examples are
  np.testing.assert_allclose(split_losses, whole_losses, rtol=RTOL)
  for got, want in zip(jax.tree.leaves(split_sums), jax.tree.leaves(whole_sums)):
    np.testing.assert_allclose(got, want, rtol=RTOL)
  assert int(split_sums.count) == int(mask.sum())
