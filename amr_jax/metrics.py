"""Age-estimation metrics that accumulate as sums and counts.

:func:`age_metric_sums` turns one batch of predictions into an
:class:`AgeMetricSums` (sums of errors and counts, no averages), so batches,
devices (``jax.lax.psum``), processes and LOPO folds combine exactly by
addition; :meth:`AgeMetricSums.compute` divides once at the end::

  sums = age_metric_sums(predicted, true, mask=is_real_example)   # per batch, jittable
  sums = jax.lax.psum(sums, axis_name="batch")                    # inside pmap
  total = total.merge(jax.device_get(sums))                       # on the host, float64
  print(total.compute())   # {"mae": ..., "rmse": ..., "pearson": ..., "cs": [...], "count": ...}

Metrics:

* MAE = mean ``|yhat - y|``; RMSE = sqrt(mean ``(yhat - y)^2``).
* PC = Pearson's correlation of ``yhat`` and ``y``, from the sums of ``yhat``, ``y``, their squares and products
  (so it too combines by addition), computed in float64 at the end.
* CS(theta) = fraction of examples with ``|yhat - y| <= theta``, theta = 0, theta_step, ..., max_theta * theta_step
  (the cumulative score curve; ``theta_step`` 1 for ages in years, a finer one for a finer scale such as
  attractiveness scores).
* epsilon-error (ChaLearn LAP) = mean 1 - exp(-(yhat - mu)^2 / (2 sigma^2)), with
  mu and sigma the mean and standard deviation of the apparent-age votes.
"""

from __future__ import annotations

import numbers
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

# The reference code adds this to sigma before the epsilon-error.
REFERENCE_SIGMA_OFFSET = 1e-4


@flax.struct.dataclass
class AgeMetricSums:
  """Sums that define MAE, CS(theta) and epsilon-error; add them to combine.

  Attributes:
    count: number of (unmasked) examples.
    abs_error_sum: sum of ``|yhat - y|``.
    cs_count: ``[max_theta + 1]``, number of examples with ``|yhat - y| <= k * theta_step``, k = 0..max_theta.
    eps_error_sum: sum of the per-example epsilon-errors (examples with a sigma).
    eps_count: number of examples that contributed to ``eps_error_sum``.
    squared_error_sum: sum of ``(yhat - y)^2``.
    moment_sums: ``[5]``, the sums of ``yhat``, ``y``, ``yhat^2``, ``y^2`` and ``yhat * y`` (Pearson's correlation).
  """

  count: Any
  abs_error_sum: Any
  cs_count: Any
  eps_error_sum: Any
  eps_count: Any
  squared_error_sum: Any
  moment_sums: Any

  @classmethod
  def zeros(cls, max_theta: int = 10) -> "AgeMetricSums":
    """Empty host-side sums (float64 and int64), the start of an accumulation."""
    return cls(
        count=np.int64(0),
        abs_error_sum=np.float64(0),
        cs_count=np.zeros(max_theta + 1, np.int64),
        eps_error_sum=np.float64(0),
        eps_count=np.int64(0),
        squared_error_sum=np.float64(0),
        moment_sums=np.zeros(5, np.float64),
    )

  def merge(self, other: "AgeMetricSums") -> "AgeMetricSums":
    """Elementwise sum. Starting from :meth:`zeros`, the host total is kept in float64."""
    if np.shape(self.cs_count) != np.shape(other.cs_count):
      raise ValueError(
          "cannot merge AgeMetricSums with different max_theta: cs_count shapes "
          f"{np.shape(self.cs_count)} and {np.shape(other.cs_count)}."
      )
    return jax.tree.map(lambda a, b: a + b, self, other)

  def compute(self) -> dict[str, Any]:
    """Final metrics: ``count``, ``mae``, ``rmse``, ``pearson``, ``cs`` (list over theta), and ``eps_error`` if any
    sigma was given.

    With no examples, ``mae``, ``rmse`` and ``cs`` are NaN rather than a misleading 0; so is ``pearson`` with fewer
    than two examples or when the predictions or the labels are all equal (no spread to correlate).
    """
    sums = jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(self))
    count = sums.count
    result = {
        "count": int(count),
        "mae": float(sums.abs_error_sum / count) if count else float("nan"),
        "rmse": float(np.sqrt(sums.squared_error_sum / count)) if count else float("nan"),
        "pearson": _pearson(count, *sums.moment_sums),
        "cs": (sums.cs_count / count).tolist() if count else [float("nan")] * len(sums.cs_count),
    }
    if sums.eps_count:
      result["eps_error"] = float(sums.eps_error_sum / sums.eps_count)
    return result


def _pearson(count, sum_p, sum_t, sum_pp, sum_tt, sum_pt) -> float:
  """Pearson's r from the sums: ``(n Spt - Sp St) / sqrt((n Spp - Sp^2) (n Stt - St^2))``."""
  spread_p, spread_t = count * sum_pp - sum_p**2, count * sum_tt - sum_t**2
  if count < 2 or spread_p <= 0 or spread_t <= 0:
    return float("nan")
  return float(np.clip((count * sum_pt - sum_p * sum_t) / np.sqrt(spread_p * spread_t), -1.0, 1.0))


def _as_batch(value: ArrayLike, name: str, shape: tuple[int, ...]) -> Array:
  value = jnp.asarray(value)
  if value.shape != shape:
    raise ValueError(f"{name} must have shape {shape} (like predicted_ages); got shape {value.shape}.")
  return value


def age_metric_sums(
    predicted_ages: ArrayLike,
    true_ages: ArrayLike,
    *,
    age_std: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    max_theta: int = 10,
    theta_step: float = 1.0,
    reference_rounding: bool = False,
) -> AgeMetricSums:
  """Metric sums for one batch. Pure and jittable; combine results with ``merge`` or ``psum``.

  Args:
    predicted_ages: ``[batch]`` predicted ages (e.g. :func:`amr_jax.losses.expected_age`).
    true_ages: ``[batch]`` ages to compare with (for CLAP2016: the apparent-age mean).
    age_std: optional ``[batch]`` standard deviation of the apparent-age votes;
      when given, the epsilon-error is accumulated.
    mask: optional ``[batch]`` bool or 0/1 array; examples where it is false
      (padding) count in no sum.
    max_theta: CS(theta) is accumulated for theta = k * theta_step, k = 0, 1, ..., max_theta.
    theta_step: the spacing of the thresholds, in the labels' unit (a Python number > 0).
    reference_rounding: reproduce the reference code: round the predictions
      (and, for the epsilon-error, the apparent-age mean) to integers and add
      1e-4 to sigma. The default uses the real values, as the ChaLearn
      definition does.

  Returns:
    :class:`AgeMetricSums` with float32 sums and int32 counts.
  """
  predicted = jnp.asarray(predicted_ages)
  if predicted.ndim != 1:
    raise ValueError(f"predicted_ages must have shape [batch]; got shape {predicted.shape}.")
  if isinstance(theta_step, bool) or not isinstance(theta_step, numbers.Real) or not 0 < theta_step < float("inf"):
    raise ValueError(f"theta_step must be a finite number > 0; got {theta_step!r}.")
  shape = predicted.shape
  predicted = predicted.astype(jnp.float32)
  true = _as_batch(true_ages, "true_ages", shape).astype(jnp.float32)
  weight = jnp.ones(shape, bool) if mask is None else _as_batch(mask, "mask", shape).astype(bool)
  if reference_rounding:
    predicted = jnp.round(predicted)
  abs_error = jnp.abs(predicted - true)
  # Rounded once from float64 (5 * 0.1 is 0.5 there), so a threshold is the float32 nearest k * theta_step.
  thetas = jnp.asarray(np.arange(max_theta + 1) * float(theta_step), jnp.float32)
  within = (abs_error[:, None] <= thetas) & weight[:, None]
  if age_std is None:
    eps_error_sum, eps_count = jnp.float32(0), jnp.int32(0)
  else:
    sigma = _as_batch(age_std, "age_std", shape).astype(jnp.float32)
    mu = true
    if reference_rounding:
      mu, sigma = jnp.round(mu), sigma + REFERENCE_SIGMA_OFFSET
    squared_error = jnp.square(predicted - mu)
    # sigma == 0 (unanimous votes) is a point mass: error 0 if exact, else 1, never 0/0.
    exponent = jnp.where(squared_error == 0, 0.0, -squared_error / (2.0 * jnp.square(sigma)))
    eps_error = 1.0 - jnp.exp(exponent)
    eps_error_sum = jnp.sum(jnp.where(weight, eps_error, 0.0))
    eps_count = jnp.sum(weight, dtype=jnp.int32)
  kept_p, kept_t = jnp.where(weight, predicted, 0.0), jnp.where(weight, true, 0.0)
  moments = jnp.stack([kept_p, kept_t, kept_p * kept_p, kept_t * kept_t, kept_p * kept_t])
  return AgeMetricSums(
      count=jnp.sum(weight, dtype=jnp.int32),
      abs_error_sum=jnp.sum(jnp.where(weight, abs_error, 0.0)),
      cs_count=jnp.sum(within, axis=0, dtype=jnp.int32),
      eps_error_sum=eps_error_sum,
      eps_count=eps_count,
      squared_error_sum=jnp.sum(jnp.where(weight, jnp.square(predicted - true), 0.0)),
      moment_sums=jnp.sum(moments, axis=1),
  )


_compiled_sums = jax.jit(age_metric_sums, static_argnames=("max_theta", "theta_step", "reference_rounding"))


def compute_age_metrics(predicted_ages: ArrayLike, true_ages: ArrayLike, **kwargs) -> dict[str, Any]:
  """One-shot metrics for arrays that fit in memory: ``age_metric_sums(...).compute()``.

  Compiled once per power-of-two length: the ``[N]`` arrays are padded and the padding masked out (it counts in
  no sum). Run op by op, every new ``N`` (each fold's test set) compiled every operation again.
  """
  predicted = np.asarray(predicted_ages)
  batch = {"true_ages": true_ages, "mask": kwargs.pop("mask", None), "age_std": kwargs.pop("age_std", None)}
  batch = {name: None if value is None else np.asarray(value) for name, value in batch.items()}
  if predicted.ndim != 1 or not len(predicted) or any(v is not None and v.shape != predicted.shape
                                                       for v in batch.values()):
    sums = age_metric_sums(predicted, batch["true_ages"], mask=batch["mask"], age_std=batch["age_std"], **kwargs)
  else:  # padded: zeros, masked out (a sigma of 1, so that no padded value is 0/0 even where it is unused)
    count = len(predicted)
    size = 1 << max(4, (count - 1).bit_length())
    padding = {"true_ages": 0, "mask": False, "age_std": 1}
    mask = np.ones(count, bool) if batch["mask"] is None else batch["mask"]
    batch = {**batch, "mask": mask}
    padded = {name: None if value is None else np.concatenate([value, np.full(size - count, padding[name],
                                                                                value.dtype)])
              for name, value in batch.items()}
    sums = _compiled_sums(np.concatenate([predicted, np.zeros(size - count, predicted.dtype)]), padded["true_ages"],
                          mask=padded["mask"], age_std=padded["age_std"], **kwargs)
  return AgeMetricSums.zeros(kwargs.get("max_theta", 10)).merge(jax.device_get(sums)).compute()


__all__ = ["AgeMetricSums", "age_metric_sums", "compute_age_metrics", "REFERENCE_SIGMA_OFFSET"]
