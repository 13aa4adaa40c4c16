"""What every loss shares: argument checks, the label grid, a label's class, the predicted distribution and its moments.

The public helpers here (:func:`~amr_jax.losses.label_class`,
:func:`~amr_jax.losses.check_label_range`, :func:`~amr_jax.losses.expected_age`,
:func:`~amr_jax.losses.gaussian_label_distribution`) are imported from
:mod:`amr_jax.losses`.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from jax.experimental import checkify
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
LossTerms = dict[str, Array]


# --------------------------------------------------------------------------
# Argument checks: they run at trace time, on shapes and dtypes, and on values known then (Python numbers,
# concrete arrays); a traced value cannot be checked.


def _check_logits(logits: ArrayLike, name: str = "logits") -> Array:
  logits = jnp.asarray(logits)
  if logits.ndim < 1:
    raise ValueError(
        f"{name} must have shape [..., num_classes] (usually [batch, "
        f"num_classes]); got a scalar of shape {logits.shape}."
    )
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(
        f"{name} must be a floating-point array (float32, bfloat16, ...); "
        f"got dtype {logits.dtype}."
    )
  if logits.shape[-1] < 2:
    # With one class the softmax is 1 whatever the logits: every loss is a constant with a zero gradient.
    raise ValueError(
        f"{name} must have at least 2 classes (last axis num_classes >= 2); got {logits.shape[-1]} "
        f"(shape {logits.shape})."
    )
  return logits


def _check_num_classes(num_classes: int) -> int:
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
    raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}.")
  return num_classes


def _static_value(value) -> np.ndarray | None:
  """``value`` as a NumPy array when it is known at trace time, ``None`` when it is traced."""
  if isinstance(value, jax.core.Tracer):
    return None
  return np.asarray(value)


def _first_failure(value: np.ndarray, ok: np.ndarray) -> str:
  """``value`` for a scalar; for an array, its first value that is not ``ok``, where, and how many are not."""
  if value.ndim == 0:
    return f"{value.item()!r}"
  index = tuple(int(i) for i in np.argwhere(~ok)[0])
  where = index[0] if len(index) == 1 else index
  return f"{value[index].item()!r} at index {where} ({np.sum(~ok)} of {value.size} values)"


def _check_eps(eps: float) -> float:
  # eps keeps (q + eps) ln(q + eps) finite where q = 0; at eps <= 0 that is ln 0, or the log of a negative number.
  value = _static_value(eps)
  if value is not None and not (value.ndim == 0 and value > 0):
    raise ValueError(f"eps must be a number > 0 (the offset inside the residue's logarithm); got {eps!r}.")
  return eps


def _check_sigma(sigma: ArrayLike, batch_shape: tuple[int, ...]) -> Array:
  """A scalar or per-example sigma; values known at trace time must be >= 0 (NaN refused too).

  Zero is kept: the target tends to the one-hot as sigma -> 0, and the DLDL-v2 code also makes a one-hot of a
  CLAP2016 annotator std of 0 (all guesses equal). A negative sigma has no meaning (the Gaussian sees only
  sigma**2, so it cannot stand for a wider target either), and a NaN one would make the whole target NaN.
  """
  value = _static_value(sigma)
  sigma = _check_per_example(sigma, "sigma", batch_shape)
  if value is not None:
    ok = value >= 0
    if not np.all(ok):
      raise ValueError(f"sigma must be >= 0 (a standard deviation in years; 0 gives a one-hot target); "
                       f"got {_first_failure(value, ok)}.")
  return sigma


def _check_labels(labels: ArrayLike, logits: Array) -> Array:
  labels = jnp.asarray(labels)
  if labels.shape != logits.shape[:-1]:
    raise ValueError(
        f"labels must have shape {logits.shape[:-1]} (the shape of logits "
        f"{logits.shape} without its last, class axis); got shape {labels.shape}."
    )
  _check_real(labels, "labels")
  return labels


def _check_real(value: Array, name: str) -> None:
  if not (jnp.issubdtype(value.dtype, jnp.integer) or jnp.issubdtype(value.dtype, jnp.floating)):
    raise ValueError(f"{name} must hold integer or real values (ages, years); got dtype {value.dtype}.")


def _check_per_example(value: ArrayLike, name: str, batch_shape: tuple[int, ...]) -> Array:
  """A scalar or an array of the batch shape, e.g. a per-image sigma."""
  value = jnp.asarray(value)
  if value.ndim != 0 and value.shape != batch_shape:
    raise ValueError(
        f"{name} must be a scalar or have shape {batch_shape} (one value per "
        f"example); got shape {value.shape}."
    )
  _check_real(value, name)
  return value


def _compute_dtype(logits: Array) -> jnp.dtype:
  """At least float32: bfloat16/float16 logits are upcast, float64 (x64 mode) is kept."""
  return jnp.promote_types(logits.dtype, jnp.float32)


# --------------------------------------------------------------------------
# The label grid: class j is the label start + step * j. Ages use step 1 (start_age); any other ordinal target,
# e.g. attractiveness scores 1.0, 1.1, ..., 5.0, gives its own start and step.


def label_grid(*, start_age: float | None = None, label_start: float | None = None,
               label_step: float = 1) -> tuple[float, float]:
  """The ``(start, step)`` of the classes from the losses' keyword arguments: class ``j`` is ``start + step * j``.

  ``start_age`` and ``label_start`` are two names for the label of class 0 (the first for ages, the second for any
  target); give at most one (neither: 0). ``label_step`` is the spacing of the classes, a number ``> 0`` known at
  trace time (it shapes the grid; a traced step is refused).

  Raises:
    ValueError: both starts given, a start that is not a finite number, or a step that is not a finite number > 0.
  """
  if start_age is not None and label_start is not None:
    raise ValueError(f"give start_age or label_start (two names for the label of class 0), not both; got "
                     f"start_age={start_age!r} and label_start={label_start!r}.")
  start = label_start if label_start is not None else (start_age if start_age is not None else 0)
  if not isinstance(start, jax.core.Tracer):  # a traced start works in the losses (it is only added)
    value = np.asarray(start)
    if (isinstance(start, bool) or value.ndim != 0 or not np.issubdtype(value.dtype, np.number)
        or not np.isfinite(value)):
      raise ValueError(f"start_age / label_start must be a finite number (the label of class 0); got {start!r}.")
  if isinstance(label_step, jax.core.Tracer):
    raise ValueError("label_step must be a number known at trace time (a Python or NumPy number), not a traced "
                     "value: bind it with functools.partial before jit or vmap.")
  value = np.asarray(label_step)
  if (isinstance(label_step, bool) or value.ndim != 0 or not np.issubdtype(value.dtype, np.number)
      or not np.isfinite(value) or not value > 0):
    raise ValueError(f"label_step must be a finite number > 0 (the spacing of the classes' labels); got "
                     f"{label_step!r}.")
  return start, label_step


def _describe_grid(num_classes: int, start: float, step: float) -> str:
  high = start + step * (num_classes - 1)
  if step == 1:
    return f"{num_classes} classes of ages {start:g}..{high:g} (start_age, num_classes)"
  return (f"{num_classes} classes of labels {start:g}..{high:g} in steps of {step:g} (label_start, label_step, "
          "num_classes)")


def _label_values(num_classes: int, start: float, step: float, dtype=jnp.float32) -> Array:
  # step * j is exact for step 1, so integer ages keep the values (and results) they had before grids.
  return start + step * jnp.arange(num_classes, dtype=dtype)


# --------------------------------------------------------------------------
# Building blocks.


def label_class(labels: ArrayLike, num_classes: int, *, start_age: float | None = None,
                label_start: float | None = None, label_step: float = 1) -> Array:
  """Class index of each label: ``clip(round((label - start) / step), 0, C - 1)``.

  Args:
    labels: ages or other labels, ``[...]``, integer or real.
    num_classes: number of classes ``C``, at least 2.
    start_age, label_start: the label of class 0 (two names; give at most one; default 0).
    label_step: the spacing of the classes' labels (default 1: whole years).

  Returns:
    int32 class indices, ``[...]``. Out-of-range labels are clamped to the
    nearest end class.
  """
  _check_num_classes(num_classes)
  start, step = label_grid(start_age=start_age, label_start=label_start, label_step=label_step)
  labels = jnp.asarray(labels)
  offset = _grid_offset(labels.astype(jnp.promote_types(labels.dtype, jnp.float32)), start, step)
  # Clip before the cast: a huge float would overflow int32.
  return jnp.clip(offset, 0, num_classes - 1).astype(jnp.int32)


def _grid_offset(labels, start: float, step: float):
  """``round((labels - start) / step)``; the division by a step of 1 is exact, so whole years are unchanged."""
  return jnp.round((labels - start) / step)


class LabelRangeError(ValueError):
  """Labels outside the classes; ``count`` of them, the first ``label`` at flat ``index`` of the labels."""

  def __init__(self, message: str, *, count: int, index: int, label: float):
    super().__init__(message)
    self.count, self.index, self.label = count, index, label


def check_label_range(labels: ArrayLike, num_classes: int, *, start_age: float | None = None,
                      label_start: float | None = None, label_step: float = 1) -> None:
  """Refuses labels whose class :func:`label_class` would clamp: ``round((label - start) / step)`` outside ``0..C-1``.

  On concrete arrays (data being loaded) it raises at once. Inside ``jit``, ``vmap`` or ``grad`` it records a
  ``jax.experimental.checkify`` check, so the function must be transformed by ``checkify.checkify``::

    checked = jax.jit(checkify.checkify(step))   # step calls check_label_range(batch["age"], 70)
    error, out = checked(state, batch)
    error.throw()                                # raises naming the first bad label

  Args:
    labels: ages or other labels, ``[...]``.
    num_classes: number of classes ``C``, at least 2.
    start_age, label_start: the label of class 0 (two names; give at most one; default 0).
    label_step: the spacing of the classes' labels (default 1).

  Raises:
    LabelRangeError: (a ``ValueError``; concrete labels) naming how many labels are outside, the first of them
      and the range.
  """
  _check_num_classes(num_classes)
  start, step = label_grid(start_age=start_age, label_start=label_start, label_step=label_step)
  if isinstance(start, jax.core.Tracer):
    raise ValueError("check_label_range needs start_age / label_start known at trace time (its message names the "
                     "range): bind it with functools.partial before jit or vmap.")
  grid = _describe_grid(num_classes, start, step)
  if isinstance(labels, jax.core.Tracer):
    labels = jnp.asarray(labels)
    classes = _grid_offset(labels.astype(jnp.promote_types(labels.dtype, jnp.float32)), start, step)
    outside = (classes < 0) | (classes > num_classes - 1)
    first = jnp.ravel(labels)[jnp.argmax(jnp.ravel(outside))]
    checkify.check(~jnp.any(outside), f"label {{first}} is outside the {grid}: its class would be clamped",
                   first=first)
    return
  values = np.asarray(labels, dtype=np.float64)
  classes = np.round((values - start) / step)  # half to even, as jnp.round in label_class
  outside = np.flatnonzero((classes < 0) | (classes > num_classes - 1))
  if outside.size:
    first = float(values.flat[outside[0]])
    raise LabelRangeError(f"{outside.size} of {values.size} labels are outside the {grid}, e.g. label {first:g} at "
                          f"flat index {outside[0]}: their class would be clamped.", count=int(outside.size),
                          index=int(outside[0]), label=first)


def expected_age(logits: ArrayLike, *, start_age: float | None = None, label_start: float | None = None,
                 label_step: float = 1) -> Array:
  r"""Expectation of the predicted distribution over the labels (the read-out of every loss).

  :math:`m_i = \sum_j \mathrm{softmax}(z_i)_j \, (\mathrm{start} + \mathrm{step} \cdot j)`.

  Args:
    logits: ``[..., num_classes]``.
    start_age, label_start: the label of class 0 (two names; give at most one; default 0).
    label_step: the spacing of the classes' labels (default 1).

  Returns:
    expected labels (at least float32), ``[...]``.
  """
  start, step = label_grid(start_age=start_age, label_start=label_start, label_step=label_step)
  logits = _check_logits(logits)
  probs = jax.nn.softmax(logits.astype(_compute_dtype(logits)), axis=-1)
  return start + step * _index_moments(probs)[0]


def gaussian_label_distribution(
    labels: ArrayLike, num_classes: int, sigma: ArrayLike, *, start_age: float | None = None,
    label_start: float | None = None, label_step: float = 1
) -> Array:
  r"""DLDL target: a discretised Gaussian around each label, normalised over the classes.

  :math:`g_{ij} \propto \exp(-(a_j - y_i)^2 / (2\sigma_i^2))`, :math:`a_j = \mathrm{start} + \mathrm{step} \cdot j`,
  :math:`\sum_j g_{ij} = 1`; ``sigma == 0`` gives the one-hot of :func:`label_class`. Computed in log space,
  so a label far outside the grid still gives a valid distribution
  (concentrated on the nearest end classes).

  Args:
    labels: ages or other labels, ``[...]``.
    num_classes: number of classes ``C``, at least 2.
    sigma: standard deviation in label units (years for ages), ``>= 0``, a scalar or ``[...]`` (one
      per example); a traced sigma is not checked (see :func:`dldl_loss`).
    start_age, label_start: the label of class 0 (two names; give at most one; default 0).
    label_step: the spacing of the classes' labels (default 1).

  Returns:
    distributions (at least float32), ``[..., num_classes]``.
  """
  _check_num_classes(num_classes)
  start, step = label_grid(start_age=start_age, label_start=label_start, label_step=label_step)
  labels = jnp.asarray(labels)
  _check_real(labels, "labels")
  sigma = _check_sigma(sigma, labels.shape)
  return jnp.exp(_log_gaussian_target(labels, num_classes, sigma, start, step))


def _log_gaussian_target(labels: Array, num_classes: int, sigma: Array, start: float, step: float) -> Array:
  dtype = jnp.promote_types(labels.dtype, jnp.float32)
  labels = labels.astype(dtype)
  sigma = jnp.broadcast_to(sigma.astype(dtype), labels.shape)
  is_one_hot = sigma <= 0
  safe_sigma = jnp.where(is_one_hot, 1.0, sigma)  # keeps the unused branch finite
  values = _label_values(num_classes, start, step, dtype)
  logits = -jnp.square(values - labels[..., None]) / (2 * jnp.square(safe_sigma[..., None]))
  log_gaussian = jax.nn.log_softmax(logits, axis=-1)
  one_hot = jnp.arange(num_classes) == label_class(labels, num_classes, label_start=start,
                                                   label_step=step)[..., None]
  log_one_hot = jnp.where(one_hot, 0.0, -jnp.inf)
  return jnp.where(is_one_hot[..., None], log_one_hot, log_gaussian)


def _index_moments_primal(probs: Array) -> tuple[Array, Array, Array]:
  """Mean, variance and deviations ``j - m`` of the class index under ``probs``.

  (Labels are ``start + step * j``: the mean scaled and shifted, the variance scaled by ``step**2``.)

  The deviations are formed as ``(j - r) - sum_k p_k (k - r)`` around the
  class ``r`` nearest the mean, not as ``a_j - m``: near the mean that
  subtraction would cancel and leave only the float32 rounding of ``m``
  (about 4e-6 at age 40), which is what limits the gradient's accuracy.
  """
  index = jnp.arange(probs.shape[-1], dtype=probs.dtype)
  pivot = jnp.round(probs @ index)[..., None]
  offset = jnp.sum(probs * (index - pivot), axis=-1, keepdims=True)
  deviation = (index - pivot) - offset
  mean = (pivot + offset)[..., 0]
  variance = jnp.sum(probs * jnp.square(deviation), axis=-1)
  return mean, variance, deviation


@jax.custom_jvp
def _index_moments(probs: Array) -> tuple[Array, Array]:
  """Mean and variance of the class index under ``probs``, with accurate derivatives.

  ``probs`` must be a softmax output, so that its tangent sums to zero; then
  ``dm = sum_j (a_j - m) dp_j`` and ``dv = sum_j ((a_j - m)^2 - v) dp_j``, and
  the cotangents passed back to the softmax are small near the mean. Autodiff
  through ``m = p @ a`` would instead pass back ``a_j`` and subtract
  ``<p, a>`` in the softmax backward pass, losing about five digits at ages
  near 60.
  """
  mean, variance, _ = _index_moments_primal(probs)
  return mean, variance


@_index_moments.defjvp
def _index_moments_jvp(primals, tangents):
  (probs,), (probs_dot,) = primals, tangents
  mean, variance, deviation = _index_moments_primal(probs)
  mean_dot = jnp.sum(deviation * probs_dot, axis=-1)
  variance_dot = jnp.sum((jnp.square(deviation) - variance[..., None]) * probs_dot, axis=-1)
  return (mean, variance), (mean_dot, variance_dot)


class _Common:
  """Quantities every loss needs, each computed once per call (one exp per entry)."""

  def __init__(self, logits: ArrayLike, labels: ArrayLike, start_age: float | None, label_start: float | None,
               label_step: float):
    start, step = self.start, self.step = label_grid(start_age=start_age, label_start=label_start,
                                                     label_step=label_step)
    logits = _check_logits(logits)
    labels = _check_labels(labels, logits)
    dtype = _compute_dtype(logits)
    self.num_classes = logits.shape[-1]
    self.logits = logits.astype(dtype)
    max_logit = jax.lax.stop_gradient(jnp.max(self.logits, axis=-1, keepdims=True))
    unnormalised = jnp.exp(self.logits - max_logit)
    total = jnp.sum(unnormalised, axis=-1, keepdims=True)
    self.probs = unnormalised / total
    self.log_normaliser = (max_logit + jnp.log(total))[..., 0]  # logsumexp
    self.label_age = labels.astype(dtype)
    self.one_hot = jnp.arange(self.num_classes) == label_class(labels, self.num_classes, label_start=start,
                                                               label_step=step)[..., None]
    self.true_logit = jnp.sum(jnp.where(self.one_hot, self.logits, 0.0), axis=-1)
    mean_index, variance_index = _index_moments(self.probs)
    # Exact for a step of 1 (whole years): the values are those of the index moments, shifted.
    self.mean_age = start + step * mean_index
    self.variance = (step * step) * variance_index

  @property
  def log_probs(self) -> Array:
    return self.logits - self.log_normaliser[..., None]

  def cross_entropy(self) -> Array:
    return self.log_normaliser - self.true_logit

  def mean_term(self) -> Array:
    return 0.5 * jnp.square(self.mean_age - self.label_age)
