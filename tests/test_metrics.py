"""Metrics on hand-computed cases, and exact combination across batches, devices and folds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amr_jax.metrics import AgeMetricSums, age_metric_sums, compute_age_metrics


def test_hand_computed_mae_and_cs():
  predicted = np.array([20.0, 31.5, 40.0, 7.0])
  true = np.array([22.0, 30.0, 40.0, 18.0])  # errors 2, 1.5, 0, 11
  result = compute_age_metrics(predicted, true)
  assert result["count"] == 4
  np.testing.assert_allclose(result["mae"], (2 + 1.5 + 0 + 11) / 4)
  want_cs = [1 / 4, 1 / 4, 3 / 4, 3 / 4, 3 / 4, 3 / 4, 3 / 4, 3 / 4, 3 / 4, 3 / 4, 3 / 4]
  np.testing.assert_allclose(result["cs"], want_cs)
  assert "eps_error" not in result


def test_hand_computed_epsilon_error():
  predicted = np.array([25.0, 30.0, 40.0])
  mu = np.array([25.0, 28.0, 43.0])
  sigma = np.array([3.0, 2.0, 0.0])  # unanimous votes on the last one: error 1 unless exact
  result = compute_age_metrics(predicted, mu, age_std=sigma)
  want = np.mean([0.0, 1 - np.exp(-4 / 8), 1.0])
  np.testing.assert_allclose(result["eps_error"], want, rtol=1e-6)
  exact = compute_age_metrics(np.array([40.0]), np.array([40.0]), age_std=np.array([0.0]))
  assert exact["eps_error"] == 0.0


def test_reference_rounding():
  predicted = np.array([25.4, 30.6])
  mu = np.array([25.0, 28.7])
  sigma = np.array([2.0, 1.0])
  result = compute_age_metrics(predicted, mu, age_std=sigma, reference_rounding=True)
  # yhat -> 25, 31; mu -> 25, 29; sigma + 1e-4; MAE uses the rounded yhat and the given mu.
  want_eps = np.mean([0.0, 1 - np.exp(-4 / (2 * 1.0001**2))])
  np.testing.assert_allclose(result["eps_error"], want_eps, rtol=1e-6)
  np.testing.assert_allclose(result["mae"], (0.0 + 2.3) / 2, rtol=1e-6)
  plain = compute_age_metrics(predicted, mu, age_std=sigma)
  np.testing.assert_allclose(plain["mae"], (0.4 + 1.9) / 2, rtol=1e-6)


def test_mask_excludes_padding():
  predicted = np.array([10.0, 20.0, 0.0, 0.0])
  true = np.array([12.0, 20.0, 50.0, 60.0])
  mask = np.array([True, True, False, False])
  result = compute_age_metrics(predicted, true, mask=mask, age_std=np.ones(4))
  assert result["count"] == 2
  np.testing.assert_allclose(result["mae"], 1.0)
  np.testing.assert_allclose(result["cs"][0], 0.5)
  np.testing.assert_allclose(result["eps_error"], (1 - np.exp(-2)) / 2, rtol=1e-6)


def test_batches_and_folds_combine_to_the_pooled_result():
  rng = np.random.default_rng(0)
  predicted = rng.uniform(0, 70, 1002)
  true = rng.integers(0, 70, 1002).astype(np.float64)
  pooled = compute_age_metrics(predicted, true)
  total = AgeMetricSums.zeros()
  step = jax.jit(age_metric_sums)
  for start in range(0, 1002, 64):  # uneven last batch, padded and masked as evaluation does
    chunk = slice(start, start + 64)
    n = len(predicted[chunk])
    pad = 64 - n
    sums = step(np.pad(predicted[chunk], (0, pad)), np.pad(true[chunk], (0, pad)),
                mask=np.arange(64) < n)
    total = total.merge(jax.device_get(sums))
  result = total.compute()
  assert result["count"] == 1002
  np.testing.assert_allclose(result["mae"], pooled["mae"], rtol=1e-6)
  np.testing.assert_array_equal(result["cs"], pooled["cs"])
  np.testing.assert_allclose(pooled["mae"], np.mean(np.abs(predicted - true)), rtol=1e-6)


def test_psum_across_devices_equals_single_call(cpu_devices):
  n = len(cpu_devices)
  rng = np.random.default_rng(1)
  predicted = rng.uniform(0, 100, (n, 16)).astype(np.float32)
  true = rng.integers(0, 100, (n, 16)).astype(np.float32)
  sigma = rng.uniform(1, 8, (n, 16)).astype(np.float32)
  fn = jax.pmap(lambda p, t, s: jax.lax.psum(age_metric_sums(p, t, age_std=s), "batch"), axis_name="batch",
               devices=cpu_devices)
  per_device = fn(predicted, true, sigma)
  replicated = jax.tree.map(lambda x: x[0], per_device)
  combined = AgeMetricSums.zeros().merge(jax.device_get(replicated)).compute()
  single = compute_age_metrics(predicted.reshape(-1), true.reshape(-1), age_std=sigma.reshape(-1))
  assert combined["count"] == single["count"] == n * 16
  np.testing.assert_allclose(combined["mae"], single["mae"], rtol=1e-6)
  np.testing.assert_allclose(combined["eps_error"], single["eps_error"], rtol=1e-6)
  np.testing.assert_array_equal(combined["cs"], single["cs"])


def test_empty_result_is_nan_not_zero():
  result = AgeMetricSums.zeros().compute()
  assert result["count"] == 0 and np.isnan(result["mae"]) and np.all(np.isnan(result["cs"]))


def test_bad_shapes_and_mismatched_theta():
  with pytest.raises(ValueError, match=r"true_ages must have shape \(3,\)"):
    age_metric_sums(jnp.zeros(3), jnp.zeros(4))
  with pytest.raises(ValueError, match=r"mask must have shape \(3,\)"):
    age_metric_sums(jnp.zeros(3), jnp.zeros(3), mask=jnp.ones(2, bool))
  with pytest.raises(ValueError, match=r"predicted_ages must have shape \[batch\]"):
    age_metric_sums(jnp.zeros((3, 1)), jnp.zeros((3, 1)))
  with pytest.raises(ValueError, match="different max_theta"):
    AgeMetricSums.zeros(10).merge(AgeMetricSums.zeros(5))


@pytest.mark.parametrize("count", [1, 15, 16, 17, 100])
def test_compute_age_metrics_pads_to_a_compiled_size_without_changing_a_metric(count):
  """The padded, compiled path against the plain sums of the same examples: counts exactly, sums to float32
  rounding (the padding adds zeros, which may change only the order of the additions)."""
  rng = np.random.default_rng(count)
  predicted, true = rng.uniform(0, 70, count), rng.integers(0, 70, count).astype(np.float64)
  sigma, mask = rng.uniform(0, 5, count), rng.uniform(size=count) < 0.8
  mask[0] = True
  got = compute_age_metrics(predicted, true, age_std=sigma, mask=mask)
  want = AgeMetricSums.zeros(10).merge(jax.device_get(age_metric_sums(predicted, true, age_std=sigma,
                                                                      mask=mask))).compute()
  assert got["count"] == want["count"] == mask.sum()
  np.testing.assert_array_equal(got["cs"], want["cs"])
  for name in ("mae", "eps_error"):
    np.testing.assert_allclose(got[name], want[name], rtol=1e-6)


def test_hand_computed_rmse_and_pearson():
  predicted = np.array([1.0, 2.0, 3.0, 6.0])
  true = np.array([2.0, 2.0, 4.0, 4.0])  # errors -1, 0, -1, 2: squared 1, 0, 1, 4
  result = compute_age_metrics(predicted, true)
  np.testing.assert_allclose(result["rmse"], np.sqrt(6 / 4), rtol=1e-7)
  # Means 3 and 3; deviations (-2, -1, 0, 3) and (-1, -1, 1, 1): sum of products 2 + 1 + 0 + 3 = 6, sums of
  # squares 14 and 4: r = 6 / sqrt(56).
  np.testing.assert_allclose(result["pearson"], 6 / np.sqrt(56), rtol=1e-7)


def test_pearson_is_scipys_and_combines_across_batches_and_masks():
  import scipy.stats

  rng = np.random.default_rng(0)
  true = rng.integers(0, 70, 200).astype(np.float64)
  predicted = true + rng.normal(0, 6, 200)
  whole = compute_age_metrics(predicted, true)
  # The sums are float32: each of n = 200 terms is off by at most n * 2^-24 = 1.2e-5 relative; the spreads
  # (n Spp - Sp^2) cancel about mean^2 / variance + 1 < 5 of that away, and r combines three of them: 2e-4 bounds it.
  tolerance = 3 * 5 * 200 * 2**-24 * 2
  assert whole["pearson"] == pytest.approx(scipy.stats.pearsonr(predicted, true).statistic, abs=tolerance)
  assert whole["rmse"] == pytest.approx(np.sqrt(np.mean((predicted - true) ** 2)), rel=1e-6)
  halves = AgeMetricSums.zeros()
  for part in (slice(0, 90), slice(90, 200)):
    halves = halves.merge(jax.device_get(age_metric_sums(predicted[part], true[part])))
  assert halves.compute()["pearson"] == pytest.approx(whole["pearson"], abs=tolerance)
  mask = np.arange(200) < 150
  masked = compute_age_metrics(predicted, true, mask=mask)
  assert masked["pearson"] == pytest.approx(scipy.stats.pearsonr(predicted[:150], true[:150]).statistic,
                                            abs=tolerance)


def test_pearson_without_spread_is_nan_not_a_number_that_misleads():
  assert np.isnan(compute_age_metrics(np.array([5.0, 5.0, 5.0]), np.array([1.0, 2.0, 3.0]))["pearson"])
  assert np.isnan(compute_age_metrics(np.array([5.0]), np.array([1.0]))["pearson"])
  assert compute_age_metrics(np.array([5.0]), np.array([1.0]))["rmse"] == 4.0


def test_cs_thresholds_on_a_finer_scale_are_hand_computed():
  # Errors 0, 0.25, 0.5, 0.75 and 3 (exact in float32); thresholds k * 0.25.
  true = np.array([2.0, 2.0, 3.0, 1.0, 1.0])
  predicted = np.array([2.0, 2.25, 2.5, 1.75, 4.0])
  result = compute_age_metrics(predicted, true, theta_step=0.25, max_theta=4)
  assert result["cs"] == [0.2, 0.4, 0.6, 0.8, 0.8]  # theta 0, 0.25, 0.5, 0.75, 1
  assert compute_age_metrics(predicted, true, max_theta=3)["cs"] == [0.2, 0.8, 0.8, 1.0]  # whole units
  # On a tenth-point scale an error of half a point lies within CS(5), 5 * 0.1 being 0.5 exactly.
  assert compute_age_metrics([3.5, 3.0], [3.0, 3.6], theta_step=0.1)["cs"][4:7] == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("step", [0, -0.1, float("nan"), float("inf"), True, "0.1"])
def test_a_bad_theta_step_is_refused(step):
  with pytest.raises(ValueError, match="theta_step must be a finite number > 0"):
    age_metric_sums(np.array([1.0]), np.array([1.0]), theta_step=step)
