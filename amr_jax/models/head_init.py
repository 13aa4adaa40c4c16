"""The head's bias set from the training ages, so that training starts from the age prior instead of uniform.

With a zero bias the head's first distributions are near uniform over the age range, so their expected age is the
middle of the range (34.5 years for 0..69) whatever the data; on FG-NET, whose training ages average about 16, the
mean term of the first steps is mostly spent moving that mean. Setting the bias to the log of the training ages'
distribution starts every prediction at the prior::

  prior = (1 - u) * mean_i g(y_i) + u / C,     bias = log(prior) - mean(log(prior)),

with ``g(y)`` the Gaussian label distribution of age ``y`` over the ``C`` classes
(:func:`amr_jax.losses.gaussian_label_distribution`, the DLDL target: standard deviation ``sigma``, two classes
unless given: 2 years for ages, 0.2 on a grid of step 0.1) and ``u``
a small uniform share so that no age the training set lacks starts out impossible. The softmax of the bias is the
prior exactly; the kernel's random start adds input-dependent logits around it. Subtracting the mean changes no
probability and keeps the bias centred, as weight decay would pull it.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from amr_jax import losses, models

DEFAULT_SIGMA = 2.0  # classes, i.e. years for ages: DLDL's label sigma on FG-NET
DEFAULT_UNIFORM_SHARE = 0.01
_label_distributions = jax.jit(losses.gaussian_label_distribution, static_argnums=(1,),
                               static_argnames=("start_age", "label_step"))


def age_prior(ages: Any, num_classes: int, *, start_age: float = 0, label_step: float = 1,
              sigma: float | None = None, uniform_share: float = DEFAULT_UNIFORM_SHARE) -> np.ndarray:
  """The smoothed distribution of ``ages`` over the classes, ``[num_classes]`` float64 summing to 1.

  Args:
    ages: the training ages (or other labels), ``[N]`` with ``N >= 1``.
    num_classes: the number of classes ``C``; class ``k`` is the label ``start_age + label_step * k``.
    start_age: the label of class 0.
    label_step: the spacing of the classes' labels (1: whole years).
    sigma: the Gaussian's standard deviation in label units, ``>= 0`` (0: each label on its rounded class); by
      default ``DEFAULT_SIGMA`` classes (2 years for ages).
    uniform_share: the weight ``u`` in ``[0, 1]`` of the uniform distribution mixed in.

  Raises:
    ValueError: no ages, a non-finite age, or ``sigma`` / ``uniform_share`` out of range.
  """
  ages = np.asarray(ages, np.float64).reshape(-1)
  if not len(ages):
    raise ValueError("age_prior needs at least one training age; got none.")
  if not np.isfinite(ages).all():
    index = int(np.argmin(np.isfinite(ages)))
    raise ValueError(f"age_prior: the ages must be finite; got {float(ages[index])!r} at index {index}.")
  _, label_step = losses.label_grid(start_age=start_age, label_step=label_step)
  if sigma is None:
    sigma = DEFAULT_SIGMA * label_step
  if not (np.isfinite(sigma) and sigma >= 0):
    raise ValueError(f"age_prior: sigma must be a number of years (label units) >= 0; got {sigma!r}.")
  if not 0 <= uniform_share <= 1:
    raise ValueError(f"age_prior: uniform_share must be in [0, 1]; got {uniform_share!r}.")
  # float32 unless 64-bit JAX is on: a class's share is at least u / C, far above float32's rounding. One compiled
  # call on the ages padded to a power of two: op by op, each fold's new count of ages compiled every operation
  # again (0.5 s a fold); the padding's rows are dropped, and each row is computed on its own.
  size = 1 << max(3, (len(ages) - 1).bit_length())
  padded = np.zeros(size)
  padded[:len(ages)] = ages
  targets = np.asarray(_label_distributions(padded, num_classes, float(sigma), start_age=float(start_age),
                                            label_step=label_step), np.float64)[:len(ages)]
  prior = (1 - uniform_share) * targets.mean(axis=0) + uniform_share / num_classes
  return prior / prior.sum()


def prior_bias(ages: Any, num_classes: int, *, start_age: float = 0, label_step: float = 1,
               sigma: float | None = None, uniform_share: float = DEFAULT_UNIFORM_SHARE) -> np.ndarray:
  """``[num_classes]`` float64: the bias whose softmax is :func:`age_prior` of ``ages``, centred on 0.

  Raises:
    ValueError: as :func:`age_prior`, and for ``uniform_share = 0`` with a class of zero probability.
  """
  prior = age_prior(ages, num_classes, start_age=start_age, label_step=label_step, sigma=sigma,
                    uniform_share=uniform_share)
  if not (prior > 0).all():
    raise ValueError("prior_bias: a class has probability 0 (no training age near it); use uniform_share > 0.")
  log_prior = np.log(prior)
  return log_prior - log_prior.mean()


def head_name(params: dict[str, Any]) -> str:
  """The name of the model's head layer among the top-level entries of ``params``."""
  names = [name for name in models.HEAD_NAMES if name in params]
  if len(names) != 1:
    raise ValueError(f"the model's head layer must be one of {models.HEAD_NAMES}; its top-level layers are "
                     f"{list(params)}.")
  return names[0]


def with_head_bias(params: dict[str, Any], bias: Any) -> dict[str, Any]:
  """``params`` with the head's bias replaced by ``bias`` (in the bias's own dtype); the rest is shared, not copied."""
  head = head_name(params)
  old = params[head]["bias"]
  bias = np.asarray(bias)
  if bias.shape != old.shape:
    raise ValueError(f"the head's bias has shape {tuple(old.shape)}; got a bias of shape {bias.shape}.")
  return {**params, head: {**params[head], "bias": np.asarray(bias, old.dtype)}}
