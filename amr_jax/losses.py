"""Label-distribution losses for age estimation.

Every loss is a pure function of ``logits`` (``[..., num_classes]``) and
``labels`` (ages, ``[...]``) that returns one value per example (``[...]``);
the caller reduces, as in optax. Class ``j`` stands for the age
``start_age + j``. All functions are safe under ``jax.jit``, ``jax.grad``,
``jax.vmap`` and ``jax.pmap``.

Each loss has a ``*_terms`` twin that returns a ``dict`` holding the separate
(unweighted) terms next to the weighted total under ``"loss"``, so training
can log the terms without computing the loss twice::

  terms = adaptive_mean_residue_terms(logits, ages)
  loss = terms["loss"].mean()          # == adaptive_mean_residue_loss(...).mean()
  log = jax.tree.map(jnp.mean, terms)  # cross_entropy, mean, residue, top_k, loss

Conventions shared by all losses:

* ``logits`` need at least 2 classes; arguments whose values are known at
  trace time (``eps``, a Python-number or concrete ``sigma``) are checked
  then, and a bad one raises ``ValueError``. A traced ``sigma`` cannot be
  checked: see :func:`dldl_loss` for what a negative one does.
* ``labels`` are ages, integer or real. The class of a label is
  ``round(label - start_age)`` (``round`` halves to even, as NumPy and Python
  do). Terms that use the age itself (mean, variance, L1, Gaussian target)
  use the unrounded label.
* A label outside ``[start_age, start_age + num_classes - 1]`` is not an
  error for the losses: its class is clamped to the nearest end class, while
  the age terms still use the label as given. :func:`check_label_range`
  refuses such labels, on the host when data is loaded, or inside ``jit``
  under ``jax.experimental.checkify.checkify``.
* Logits of several models for one batch, ``[models, batch, C]``, with
  labels ``[batch]``: ``jax.vmap(loss, in_axes=(0, None))(logits, labels)``
  gives ``[models, batch]``. Bind keyword arguments before, since ``vmap``
  maps every keyword argument over its first axis:
  ``jax.vmap(functools.partial(loss, start_age=16), in_axes=(0, None))``.
* Computation is done in at least float32 whatever the logits' dtype
  (bfloat16 logits give float32 losses and bfloat16 gradients; float64 stays
  float64), which keeps values and gradients finite for logits up to +-1e4.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from jax.experimental import checkify
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
LossTerms = dict[str, Array]

__all__ = [
    "LabelRangeError",
    "adaptive_mean_residue_loss",
    "adaptive_mean_residue_terms",
    "check_label_range",
    "cross_entropy_loss",
    "dldl_loss",
    "dldl_terms",
    "dldl_v2_loss",
    "dldl_v2_terms",
    "expected_age",
    "gaussian_label_distribution",
    "label_class",
    "mean_residue_loss",
    "mean_residue_terms",
    "mean_variance_loss",
    "mean_variance_terms",
]


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


def _ages(num_classes: int, start_age: float, dtype=jnp.float32) -> Array:
  return start_age + jnp.arange(num_classes, dtype=dtype)


# --------------------------------------------------------------------------
# Building blocks.


def label_class(labels: ArrayLike, num_classes: int, *, start_age: float = 0) -> Array:
  """Class index of each age label: ``clip(round(label - start_age), 0, C - 1)``.

  Args:
    labels: ages, ``[...]``, integer or real.
    num_classes: number of age classes ``C``, at least 2.
    start_age: the age of class 0.

  Returns:
    int32 class indices, ``[...]``. Out-of-range ages are clamped to the
    nearest end class.
  """
  _check_num_classes(num_classes)
  labels = jnp.asarray(labels)
  offset = jnp.round(labels.astype(jnp.promote_types(labels.dtype, jnp.float32)) - start_age)
  # Clip before the cast: a huge float would overflow int32.
  return jnp.clip(offset, 0, num_classes - 1).astype(jnp.int32)


class LabelRangeError(ValueError):
  """Labels outside the classes; ``count`` of them, the first ``label`` at flat ``index`` of the labels."""

  def __init__(self, message: str, *, count: int, index: int, label: float):
    super().__init__(message)
    self.count, self.index, self.label = count, index, label


def check_label_range(labels: ArrayLike, num_classes: int, *, start_age: float = 0) -> None:
  """Refuses labels whose class :func:`label_class` would clamp: ``round(label - start_age)`` outside ``0..C-1``.

  On concrete arrays (data being loaded) it raises at once. Inside ``jit``, ``vmap`` or ``grad`` it records a
  ``jax.experimental.checkify`` check, so the function must be transformed by ``checkify.checkify``::

    checked = jax.jit(checkify.checkify(step))   # step calls check_label_range(batch["age"], 70)
    error, out = checked(state, batch)
    error.throw()                                # raises naming the first bad label

  Args:
    labels: ages, ``[...]``.
    num_classes: number of age classes ``C``, at least 2.
    start_age: the age of class 0.

  Raises:
    LabelRangeError: (a ``ValueError``; concrete labels) naming how many labels are outside, the first of them
      and the range.
  """
  _check_num_classes(num_classes)
  high = start_age + num_classes - 1
  if isinstance(labels, jax.core.Tracer):
    labels = jnp.asarray(labels)
    classes = jnp.round(labels.astype(jnp.promote_types(labels.dtype, jnp.float32)) - start_age)
    outside = (classes < 0) | (classes > num_classes - 1)
    first = jnp.ravel(labels)[jnp.argmax(jnp.ravel(outside))]
    checkify.check(~jnp.any(outside), f"label {{first}} is outside the {num_classes} classes of ages "
                   f"{start_age:g}..{high:g} (start_age, num_classes): its class would be clamped", first=first)
    return
  values = np.asarray(labels, dtype=np.float64)
  classes = np.round(values - start_age)  # half to even, as jnp.round in label_class
  outside = np.flatnonzero((classes < 0) | (classes > num_classes - 1))
  if outside.size:
    first = float(values.flat[outside[0]])
    raise LabelRangeError(f"{outside.size} of {values.size} labels are outside the {num_classes} classes of ages "
                          f"{start_age:g}..{high:g} (start_age, num_classes), e.g. label {first:g} at flat index "
                          f"{outside[0]}: their class would be clamped.", count=int(outside.size),
                          index=int(outside[0]), label=first)


def expected_age(logits: ArrayLike, *, start_age: float = 0) -> Array:
  r"""Expectation of the predicted age distribution (the read-out of every loss).

  :math:`m_i = \sum_j \mathrm{softmax}(z_i)_j \, (\mathrm{start\_age} + j)`.

  Args:
    logits: ``[..., num_classes]``.
    start_age: the age of class 0.

  Returns:
    expected ages (at least float32), ``[...]``.
  """
  logits = _check_logits(logits)
  probs = jax.nn.softmax(logits.astype(_compute_dtype(logits)), axis=-1)
  return start_age + _index_moments(probs)[0]


def gaussian_label_distribution(
    labels: ArrayLike, num_classes: int, sigma: ArrayLike, *, start_age: float = 0
) -> Array:
  r"""DLDL target: a discretised Gaussian around each label, normalised over the classes.

  :math:`g_{ij} \propto \exp(-(a_j - y_i)^2 / (2\sigma_i^2))`, :math:`\sum_j g_{ij} = 1`;
  ``sigma == 0`` gives the one-hot of :func:`label_class`. Computed in log space,
  so a label far outside the age range still gives a valid distribution
  (concentrated on the nearest end classes).

  Args:
    labels: ages, ``[...]``.
    num_classes: number of classes ``C``, at least 2.
    sigma: standard deviation in years, ``>= 0``, a scalar or ``[...]`` (one
      per example); a traced sigma is not checked (see :func:`dldl_loss`).
    start_age: the age of class 0.

  Returns:
    distributions (at least float32), ``[..., num_classes]``.
  """
  _check_num_classes(num_classes)
  labels = jnp.asarray(labels)
  _check_real(labels, "labels")
  sigma = _check_sigma(sigma, labels.shape)
  return jnp.exp(_log_gaussian_target(labels, num_classes, sigma, start_age))


def _log_gaussian_target(labels: Array, num_classes: int, sigma: Array, start_age: float) -> Array:
  dtype = jnp.promote_types(labels.dtype, jnp.float32)
  labels = labels.astype(dtype)
  sigma = jnp.broadcast_to(sigma.astype(dtype), labels.shape)
  is_one_hot = sigma <= 0
  safe_sigma = jnp.where(is_one_hot, 1.0, sigma)  # keeps the unused branch finite
  logits = -jnp.square(_ages(num_classes, start_age, dtype) - labels[..., None]) / (2 * jnp.square(safe_sigma[..., None]))
  log_gaussian = jax.nn.log_softmax(logits, axis=-1)
  one_hot = jnp.arange(num_classes) == label_class(labels, num_classes, start_age=start_age)[..., None]
  log_one_hot = jnp.where(one_hot, 0.0, -jnp.inf)
  return jnp.where(is_one_hot[..., None], log_one_hot, log_gaussian)


def _index_moments_primal(probs: Array) -> tuple[Array, Array, Array]:
  """Mean, variance and deviations ``j - m`` of the class index under ``probs``.

  (Ages are ``start_age + j``: the same variance and deviations, the mean shifted.)

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

  def __init__(self, logits: ArrayLike, labels: ArrayLike, start_age: float):
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
    self.one_hot = jnp.arange(self.num_classes) == label_class(labels, self.num_classes, start_age=start_age)[..., None]
    self.true_logit = jnp.sum(jnp.where(self.one_hot, self.logits, 0.0), axis=-1)
    mean_index, self.variance = _index_moments(self.probs)
    self.mean_age = start_age + mean_index

  @property
  def log_probs(self) -> Array:
    return self.logits - self.log_normaliser[..., None]

  def cross_entropy(self) -> Array:
    return self.log_normaliser - self.true_logit

  def mean_term(self) -> Array:
    return 0.5 * jnp.square(self.mean_age - self.label_age)


# --------------------------------------------------------------------------
# Cross-entropy.


def cross_entropy_loss(logits: ArrayLike, labels: ArrayLike, *, start_age: float = 0) -> Array:
  r"""Softmax cross-entropy against the label's age class.

  :math:`\mathrm{CE}_i = -\log \mathrm{softmax}(z_i)_{c_i}`, with
  :math:`c_i = \mathrm{round}(y_i - \mathrm{start\_age})` (:func:`label_class`).

  Args:
    logits: ``[..., num_classes]``.
    labels: ages, ``[...]``.
    start_age: the age of class 0.

  Returns:
    per-example losses (at least float32), ``[...]``.
  """
  return _Common(logits, labels, start_age).cross_entropy()


# --------------------------------------------------------------------------
# Mean-residue (AMR) losses.

ResidueForm = Literal["reference", "paper"]


def _residue(common: _Common, in_top: Array, eps: float, form: ResidueForm, top_value: float) -> Array:
  """Entropy-like residue over the classes outside ``in_top``.

  In the reference form each class in the top set contributes ``top_value``
  instead of its entropy term: the adaptive code zeroes those probabilities and
  still sums ``-(0 + eps) ln(0 + eps)`` over them, the fixed-K code drops them.
  """
  if form == "reference":
    shifted = common.probs + eps
    return -jnp.sum(jnp.where(in_top, top_value, shifted * jnp.log(shifted)), axis=-1)
  if form == "paper":
    # log_probs (not log(probs)) keeps 0*log(0) and its gradient finite.
    return -jnp.sum(jnp.where(in_top, 0.0, common.probs * common.log_probs), axis=-1)
  raise ValueError(f"residue_form must be 'reference' or 'paper'; got {form!r}.")


def adaptive_mean_residue_terms(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    start_age: float = 0,
    lambda_mean: float = 0.2,
    lambda_residue: float = 0.05,
    eps: float = 1e-3,
    residue_form: ResidueForm = "reference",
) -> LossTerms:
  """Terms of :func:`adaptive_mean_residue_loss`.

  Returns:
    ``dict`` of ``[...]`` arrays: ``cross_entropy``, ``mean`` (unweighted
    :math:`(m-y)^2/2`), ``residue`` (unweighted :math:`R`), ``top_k`` (the
    adaptive :math:`K_i`, int32) and ``loss`` (the weighted total).
  """
  _check_eps(eps)
  common = _Common(logits, labels, start_age)
  # p_j >= p_c  <=>  z_j >= z_c. Comparing logits gives the same set without
  # depending on rounding: where float32 probabilities underflow to 0, comparing
  # them would put every underflowed class in the set (same loss, inflated K).
  # Comparisons carry no gradient, so the selection is a constant, as in the reference.
  in_top = common.logits >= common.true_logit[..., None]
  terms = {
      "cross_entropy": common.cross_entropy(),
      "mean": common.mean_term(),
      "residue": _residue(common, in_top, eps, residue_form, top_value=eps * math.log(eps)),
      "top_k": jnp.sum(in_top, axis=-1, dtype=jnp.int32),
  }
  terms["loss"] = terms["cross_entropy"] + lambda_mean * terms["mean"] + lambda_residue * terms["residue"]
  return terms


def adaptive_mean_residue_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    start_age: float = 0,
    lambda_mean: float = 0.2,
    lambda_residue: float = 0.05,
    eps: float = 1e-3,
    residue_form: ResidueForm = "reference",
) -> Array:
  r"""Adaptive mean-residue (AMR) loss, exactly as the reference code computes it.

  With :math:`p_i = \mathrm{softmax}(z_i)`, ages :math:`a_j = \mathrm{start\_age} + j`,
  expected age :math:`m_i = \sum_j p_{ij} a_j` and label class :math:`c_i`:

  .. math::

    L_i = -\log p_{i c_i}
        + \lambda_m \tfrac{1}{2}(m_i - y_i)^2
        + \lambda_r R_i,
    \qquad R_i = -\sum_{j=1}^{C} (q_{ij} + \epsilon) \ln(q_{ij} + \epsilon),

  where :math:`T_i = \{j : p_{ij} \ge p_{i c_i}\}` is the adaptive top-K (every
  class at least as probable as the true one, ties included, so
  :math:`K_i = |T_i| \ge 1` is the true class's rank; the set is found by
  comparing logits, which is the same set but immune to probabilities that
  underflow to 0), :math:`q_{ij} = 0` for
  :math:`j \in T_i` and :math:`p_{ij}` otherwise. The selection :math:`T_i` is a
  constant (no gradient flows through it). Probabilities are not renormalised
  and each selected class adds the constant :math:`-\epsilon\ln\epsilon`, as
  in the reference; ``residue_form="paper"`` gives the authors' intended
  :math:`R_i = -\sum_{j \notin T_i} p_{ij} \ln p_{ij}` instead.

  Reference: Zhao et al., "Adaptive Mean-Residue Loss for Robust Facial Age
  Estimation", ICME 2022 (arXiv:2203.17156); code ``residue_loss_adaptive_K.py``
  of github.com/jacobzhaoziyuan/AMR-Loss. The mean over a batch equals that
  code's training loss (for ``start_age=0``; this version is also correct for
  other start ages).

  Args:
    logits: ``[..., num_classes]`` (usually ``[batch, num_classes]``).
    labels: ages, ``[...]``.
    start_age: the age of class 0.
    lambda_mean: weight :math:`\lambda_m` of the mean term (0.2 in the paper's scripts).
    lambda_residue: weight :math:`\lambda_r` of the residue term (0.05 in the paper's scripts).
    eps: :math:`\epsilon > 0` inside the residue's logarithm (used by the ``"reference"`` form only,
      but checked for both).
    residue_form: ``"reference"`` (default) or ``"paper"``.

  Returns:
    per-example losses (at least float32), ``[...]``.
  """
  return adaptive_mean_residue_terms(
      logits, labels, start_age=start_age, lambda_mean=lambda_mean,
      lambda_residue=lambda_residue, eps=eps, residue_form=residue_form,
  )["loss"]


def mean_residue_terms(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    k: int = 3,
    start_age: float = 0,
    lambda_mean: float = 0.2,
    lambda_residue: float = 0.05,
    eps: float = 1e-3,
    residue_form: ResidueForm = "reference",
) -> LossTerms:
  """Terms of :func:`mean_residue_loss`: ``cross_entropy``, ``mean``, ``residue``, ``loss``."""
  _check_eps(eps)
  common = _Common(logits, labels, start_age)
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= common.num_classes:
    raise ValueError(f"k must be an integer in [1, num_classes={common.num_classes}]; got {k!r}.")
  _, top_index = jax.lax.top_k(common.probs, k)  # ties go to the lower class index
  in_top = jnp.any(top_index[..., None] == jnp.arange(common.num_classes), axis=-2)
  terms = {
      "cross_entropy": common.cross_entropy(),
      "mean": common.mean_term(),
      "residue": _residue(common, in_top, eps, residue_form, top_value=0.0),
  }
  terms["loss"] = terms["cross_entropy"] + lambda_mean * terms["mean"] + lambda_residue * terms["residue"]
  return terms


def mean_residue_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    k: int = 3,
    start_age: float = 0,
    lambda_mean: float = 0.2,
    lambda_residue: float = 0.05,
    eps: float = 1e-3,
    residue_form: ResidueForm = "reference",
) -> Array:
  r"""Mean-residue loss with a fixed top-K (the AMR co-author's earlier variant).

  As :func:`adaptive_mean_residue_loss`, but :math:`T_i` is the set of the
  ``k`` largest probabilities (``jax.lax.top_k``; among equal probabilities
  the lower class wins), whether or not it contains the true class, and, as in
  the co-author's code, the residue sums over the other ``C - k`` classes only:
  :math:`R_i = -\sum_{j \notin T_i} (p_{ij} + \epsilon) \ln(p_{ij} + \epsilon)`
  (no constant for the top-K slots).

  Args:
    logits: ``[..., num_classes]``.
    labels: ages, ``[...]``.
    k: size of the excluded top set, ``1 <= k <= num_classes``.
    start_age, lambda_mean, lambda_residue, eps, residue_form: as in
      :func:`adaptive_mean_residue_loss`.

  Returns:
    per-example losses (at least float32), ``[...]``.
  """
  return mean_residue_terms(
      logits, labels, k=k, start_age=start_age, lambda_mean=lambda_mean,
      lambda_residue=lambda_residue, eps=eps, residue_form=residue_form,
  )["loss"]


# --------------------------------------------------------------------------
# Mean-variance loss.


def mean_variance_terms(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    start_age: float = 0,
    lambda_mean: float = 0.2,
    lambda_variance: float = 0.05,
) -> LossTerms:
  """Terms of :func:`mean_variance_loss`: ``cross_entropy``, ``mean``, ``variance``, ``loss``."""
  common = _Common(logits, labels, start_age)
  terms = {
      "cross_entropy": common.cross_entropy(),
      "mean": common.mean_term(),
      "variance": common.variance,
  }
  terms["loss"] = terms["cross_entropy"] + lambda_mean * terms["mean"] + lambda_variance * terms["variance"]
  return terms


def mean_variance_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    start_age: float = 0,
    lambda_mean: float = 0.2,
    lambda_variance: float = 0.05,
) -> Array:
  r"""Mean-variance loss.

  .. math::

    L_i = -\log p_{i c_i} + \lambda_m \tfrac{1}{2}(m_i - y_i)^2
        + \lambda_v \sum_j p_{ij} (a_j - m_i)^2,

  with :math:`m_i` not detached in the variance term.

  Reference: Pan et al., "Mean-Variance Loss for Deep Age Estimation from a
  Face", CVPR 2018; values as in github.com/Herosan163/AgeEstimation.

  Args:
    logits: ``[..., num_classes]``.
    labels: ages, ``[...]``.
    start_age: the age of class 0.
    lambda_mean: weight of the mean term.
    lambda_variance: weight of the variance term.

  Returns:
    per-example losses (at least float32), ``[...]``.
  """
  return mean_variance_terms(
      logits, labels, start_age=start_age, lambda_mean=lambda_mean, lambda_variance=lambda_variance
  )["loss"]


# --------------------------------------------------------------------------
# DLDL and DLDL-v2.

KLReduction = Literal["sum", "mean"]


def _kl_to_gaussian(common: _Common, sigma: ArrayLike, start_age: float) -> Array:
  sigma = _check_sigma(sigma, common.logits.shape[:-1])
  log_target = _log_gaussian_target(common.label_age, common.num_classes, sigma, start_age)
  target = jnp.exp(log_target)
  # 0 * log 0 := 0, written so that no inf or nan is formed even in unused branches.
  log_target = jnp.where(target > 0, log_target, 0.0)
  return jnp.sum(target * (log_target - common.log_probs), axis=-1)


def dldl_terms(logits: ArrayLike, labels: ArrayLike, *, sigma: ArrayLike = 2.0, start_age: float = 0) -> LossTerms:
  """Terms of :func:`dldl_loss`: ``kl`` and ``loss`` (equal)."""
  common = _Common(logits, labels, start_age)
  kl = _kl_to_gaussian(common, sigma, start_age)
  return {"kl": kl, "loss": kl}


def dldl_loss(logits: ArrayLike, labels: ArrayLike, *, sigma: ArrayLike = 2.0, start_age: float = 0) -> Array:
  r"""Deep label distribution learning (DLDL) loss.

  :math:`L_i = \mathrm{KL}(g_i \,\|\, p_i) = \sum_j g_{ij} \log(g_{ij} / p_{ij})`
  with :math:`g_i` the Gaussian target of :func:`gaussian_label_distribution`.

  Reference: Gao et al., "Deep Label Distribution Learning with Label
  Ambiguity", IEEE TIP 2017.

  Args:
    logits: ``[..., num_classes]``.
    labels: ages, ``[...]``.
    sigma: target standard deviation in years, ``>= 0``: a scalar, or ``[...]``
      for one per example (CLAP2016 gives the annotators' standard deviation).
      ``0`` means a one-hot target (the loss is then the cross-entropy). A
      Python number or concrete array is checked (``ValueError`` if negative
      or NaN). A traced sigma (an argument of a ``jit``-ed or ``vmap``-ed
      function) cannot be: there a negative value silently gives the one-hot
      target, as ``0`` does (loss equal to the cross-entropy, zero gradient
      with respect to sigma), and NaN gives a NaN loss and NaN gradients.
    start_age: the age of class 0.

  Returns:
    per-example losses (at least float32), ``[...]``.
  """
  return dldl_terms(logits, labels, sigma=sigma, start_age=start_age)["loss"]


def dldl_v2_terms(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    sigma: ArrayLike = 2.0,
    lambda_l1: float = 1.0,
    start_age: float = 0,
    kl_reduction: KLReduction = "sum",
) -> LossTerms:
  """Terms of :func:`dldl_v2_loss`: ``kl`` (as reduced), ``l1`` and ``loss``."""
  common = _Common(logits, labels, start_age)
  kl = _kl_to_gaussian(common, sigma, start_age)
  if kl_reduction == "mean":
    kl = kl / common.num_classes
  elif kl_reduction != "sum":
    raise ValueError(f"kl_reduction must be 'sum' or 'mean'; got {kl_reduction!r}.")
  l1 = jnp.abs(common.mean_age - common.label_age)
  return {"kl": kl, "l1": l1, "loss": kl + lambda_l1 * l1}


def dldl_v2_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    sigma: ArrayLike = 2.0,
    lambda_l1: float = 1.0,
    start_age: float = 0,
    kl_reduction: KLReduction = "sum",
) -> Array:
  r"""DLDL-v2 loss: label-distribution KL plus the L1 error of the expectation.

  :math:`L_i = \mathrm{KL}(g_i \,\|\, p_i) + \lambda \, |m_i - y_i|`.

  ``kl_reduction="sum"`` (default) is the paper's formula. The official Torch
  code averages the KL over the classes as well as the batch (and the L1 over
  the batch only), which weights the L1 term ``num_classes`` times more;
  ``kl_reduction="mean"`` reproduces it (KL divided by ``num_classes``).

  Reference: Gao et al., "Age Estimation Using Expectation of Label
  Distribution Learning", IJCAI 2018; code github.com/gaobb/DLDL-v2.

  Args:
    logits: ``[..., num_classes]``.
    labels: ages, ``[...]``.
    sigma: Gaussian target standard deviation, scalar or ``[...]`` (see :func:`dldl_loss`).
    lambda_l1: weight :math:`\lambda` of the L1 term.
    start_age: the age of class 0.
    kl_reduction: ``"sum"`` (paper) or ``"mean"`` (official code) over classes.

  Returns:
    per-example losses (at least float32), ``[...]``.
  """
  return dldl_v2_terms(
      logits, labels, sigma=sigma, lambda_l1=lambda_l1, start_age=start_age, kl_reduction=kl_reduction
  )["loss"]
