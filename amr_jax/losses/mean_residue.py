"""Cross-entropy, the (adaptive) mean-residue losses and the mean-variance loss, imported from
:mod:`amr_jax.losses`."""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from amr_jax.losses.common import _check_eps, _Common, Array, ArrayLike, LossTerms


# --------------------------------------------------------------------------
# Cross-entropy.


def cross_entropy_loss(logits: ArrayLike, labels: ArrayLike, *, start_age: float | None = None,
                       label_start: float | None = None, label_step: float = 1) -> Array:
  r"""Softmax cross-entropy against the label's class.

  :math:`\mathrm{CE}_i = -\log \mathrm{softmax}(z_i)_{c_i}`, with
  :math:`c_i = \mathrm{round}((y_i - \mathrm{start}) / \mathrm{step})` (:func:`label_class`).

  Args:
    logits: ``[..., num_classes]``.
    labels: ages, ``[...]``.
    start_age, label_start: the label of class 0 (two names; give at most one; default 0).
    label_step: the spacing of the classes' labels (default 1: whole years).

  Returns:
    per-example losses (at least float32), ``[...]``.
  """
  return _Common(logits, labels, start_age, label_start, label_step).cross_entropy()


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
    start_age: float | None = None,
    label_start: float | None = None,
    label_step: float = 1,
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
  common = _Common(logits, labels, start_age, label_start, label_step)
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
    start_age: float | None = None,
    label_start: float | None = None,
    label_step: float = 1,
    lambda_mean: float = 0.2,
    lambda_residue: float = 0.05,
    eps: float = 1e-3,
    residue_form: ResidueForm = "reference",
) -> Array:
  r"""Adaptive mean-residue (AMR) loss, exactly as the reference code computes it.

  With :math:`p_i = \mathrm{softmax}(z_i)`, ages (labels) :math:`a_j = \mathrm{start} + \mathrm{step} \cdot j`,
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

  On a grid of another step, :math:`K_i` is counted in classes, not label
  units: the set compares probabilities only, so it is the same set whatever
  the labels' spacing, and the residue too. The mean term is in squared label
  units: on a 0.1 grid it is 1/100 of the same error counted in tenths, so
  keep ``lambda_mean`` in mind when changing the step (docs/label_grids.md).

  Reference: Zhao et al., "Adaptive Mean-Residue Loss for Robust Facial Age
  Estimation", ICME 2022 (arXiv:2203.17156); code ``residue_loss_adaptive_K.py``
  of github.com/jacobzhaoziyuan/AMR-Loss. The mean over a batch equals that
  code's training loss (for ``start_age=0``; this version is also correct for
  other start ages).

  Args:
    logits: ``[..., num_classes]`` (usually ``[batch, num_classes]``).
    labels: ages, ``[...]``.
    start_age, label_start: the label of class 0 (two names; give at most one; default 0).
    label_step: the spacing of the classes' labels (default 1: whole years).
    lambda_mean: weight :math:`\lambda_m` of the mean term (0.2 in the paper's scripts).
    lambda_residue: weight :math:`\lambda_r` of the residue term (0.05 in the paper's scripts).
    eps: :math:`\epsilon > 0` inside the residue's logarithm (used by the ``"reference"`` form only,
      but checked for both).
    residue_form: ``"reference"`` (default) or ``"paper"``.

  Returns:
    per-example losses (at least float32), ``[...]``.
  """
  return adaptive_mean_residue_terms(
      logits, labels, start_age=start_age, label_start=label_start, label_step=label_step,
      lambda_mean=lambda_mean,
      lambda_residue=lambda_residue, eps=eps, residue_form=residue_form,
  )["loss"]


def mean_residue_terms(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    k: int = 3,
    start_age: float | None = None,
    label_start: float | None = None,
    label_step: float = 1,
    lambda_mean: float = 0.2,
    lambda_residue: float = 0.05,
    eps: float = 1e-3,
    residue_form: ResidueForm = "reference",
) -> LossTerms:
  """Terms of :func:`mean_residue_loss`: ``cross_entropy``, ``mean``, ``residue``, ``loss``."""
  _check_eps(eps)
  common = _Common(logits, labels, start_age, label_start, label_step)
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
    start_age: float | None = None,
    label_start: float | None = None,
    label_step: float = 1,
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
  (no constant for the top-K slots). ``k`` is a count of classes on any grid:
  ``k=3`` on a 0.1 grid spans 0.3 label units (``k=30`` spans 3).

  Args:
    logits: ``[..., num_classes]``.
    labels: ages, ``[...]``.
    k: size of the excluded top set, ``1 <= k <= num_classes``.
    start_age, label_start, label_step, lambda_mean, lambda_residue, eps, residue_form: as in
      :func:`adaptive_mean_residue_loss`.

  Returns:
    per-example losses (at least float32), ``[...]``.
  """
  return mean_residue_terms(
      logits, labels, k=k, start_age=start_age, label_start=label_start, label_step=label_step,
      lambda_mean=lambda_mean,
      lambda_residue=lambda_residue, eps=eps, residue_form=residue_form,
  )["loss"]


# --------------------------------------------------------------------------
# Mean-variance loss.


def mean_variance_terms(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    start_age: float | None = None,
    label_start: float | None = None,
    label_step: float = 1,
    lambda_mean: float = 0.2,
    lambda_variance: float = 0.05,
) -> LossTerms:
  """Terms of :func:`mean_variance_loss`: ``cross_entropy``, ``mean``, ``variance``, ``loss``."""
  common = _Common(logits, labels, start_age, label_start, label_step)
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
    start_age: float | None = None,
    label_start: float | None = None,
    label_step: float = 1,
    lambda_mean: float = 0.2,
    lambda_variance: float = 0.05,
) -> Array:
  r"""Mean-variance loss.

  .. math::

    L_i = -\log p_{i c_i} + \lambda_m \tfrac{1}{2}(m_i - y_i)^2
        + \lambda_v \sum_j p_{ij} (a_j - m_i)^2,

  with :math:`m_i` not detached in the variance term. On a grid of step
  :math:`s`, :math:`a_j = \mathrm{start} + s j` and the variance is in
  squared label units (:math:`s^2` times the variance of the class index).

  Reference: Pan et al., "Mean-Variance Loss for Deep Age Estimation from a
  Face", CVPR 2018; values as in github.com/Herosan163/AgeEstimation.

  Args:
    logits: ``[..., num_classes]``.
    labels: ages, ``[...]``.
    start_age, label_start: the label of class 0 (two names; give at most one; default 0).
    label_step: the spacing of the classes' labels (default 1: whole years).
    lambda_mean: weight of the mean term.
    lambda_variance: weight of the variance term.

  Returns:
    per-example losses (at least float32), ``[...]``.
  """
  return mean_variance_terms(
      logits, labels, start_age=start_age, label_start=label_start, label_step=label_step,
      lambda_mean=lambda_mean, lambda_variance=lambda_variance,
  )["loss"]

