"""DLDL and DLDL-v2 (KL to a Gaussian label distribution, plus the expectation's L1), imported from
:mod:`amr_jax.losses`."""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp

from amr_jax.losses.common import _check_sigma, _Common, _log_gaussian_target, Array, ArrayLike, LossTerms


# --------------------------------------------------------------------------
# DLDL and DLDL-v2.

KLReduction = Literal["sum", "mean"]


def _kl_to_gaussian(common: _Common, sigma: ArrayLike) -> Array:
  sigma = _check_sigma(sigma, common.logits.shape[:-1])
  log_target = _log_gaussian_target(common.label_age, common.num_classes, sigma, common.start, common.step)
  target = jnp.exp(log_target)
  # 0 * log 0 := 0, written so that no inf or nan is formed even in unused branches.
  log_target = jnp.where(target > 0, log_target, 0.0)
  return jnp.sum(target * (log_target - common.log_probs), axis=-1)


def dldl_terms(logits: ArrayLike, labels: ArrayLike, *, sigma: ArrayLike = 2.0,
               start_age: float | None = None, label_start: float | None = None, label_step: float = 1) -> LossTerms:
  """Terms of :func:`dldl_loss`: ``kl`` and ``loss`` (equal)."""
  common = _Common(logits, labels, start_age, label_start, label_step)
  kl = _kl_to_gaussian(common, sigma)
  return {"kl": kl, "loss": kl}


def dldl_loss(logits: ArrayLike, labels: ArrayLike, *, sigma: ArrayLike = 2.0,
               start_age: float | None = None, label_start: float | None = None, label_step: float = 1) -> Array:
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
    start_age, label_start: the label of class 0 (two names; give at most one; default 0).
    label_step: the spacing of the classes' labels (default 1: whole years).

  Returns:
    per-example losses (at least float32), ``[...]``.
  """
  return dldl_terms(logits, labels, sigma=sigma, start_age=start_age, label_start=label_start,
                    label_step=label_step)["loss"]


def dldl_v2_terms(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    sigma: ArrayLike = 2.0,
    lambda_l1: float = 1.0,
    start_age: float | None = None,
    label_start: float | None = None,
    label_step: float = 1,
    kl_reduction: KLReduction = "sum",
) -> LossTerms:
  """Terms of :func:`dldl_v2_loss`: ``kl`` (as reduced), ``l1`` and ``loss``."""
  common = _Common(logits, labels, start_age, label_start, label_step)
  kl = _kl_to_gaussian(common, sigma)
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
    start_age: float | None = None,
    label_start: float | None = None,
    label_step: float = 1,
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
    start_age, label_start: the label of class 0 (two names; give at most one; default 0).
    label_step: the spacing of the classes' labels (default 1: whole years).
    kl_reduction: ``"sum"`` (paper) or ``"mean"`` (official code) over classes.

  Returns:
    per-example losses (at least float32), ``[...]``.
  """
  return dldl_v2_terms(
      logits, labels, sigma=sigma, lambda_l1=lambda_l1, start_age=start_age, label_start=label_start,
      label_step=label_step, kl_reduction=kl_reduction,
  )["loss"]
