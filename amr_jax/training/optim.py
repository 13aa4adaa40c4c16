"""Optimizers and learning-rate schedules of the papers' recipes, as optax transformations.

Both follow PyTorch's definitions, because the reference recipes are PyTorch
code: AdamW with decoupled weight decay on every parameter (PyTorch's default
parameter group), SGD with momentum where weight decay is added to the
gradient before the momentum, and gradient clipping by global norm applied to
the raw gradients first (``clip_grad_norm_`` before ``optimizer.step()``,
whose factor ``max_norm / (norm + 1e-6)`` differs from optax's
``clip_by_global_norm`` by that 1e-6). ``tests/test_optim.py`` checks several
steps of each against ``torch.optim`` in float64.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("multistep", "cosine", "constant")
OPTIMIZERS = ("adamw", "sgd", "adam")


def learning_rate_schedule(name: str, *, base_learning_rate: float, steps_per_epoch: int, num_epochs: int,
                           milestone_epochs: Sequence[int] = (), decay_factor: float = 0.1,
                           warmup_epochs: float = 0.0) -> optax.Schedule:
  """The learning rate as a function of the step.

  Args:
    name: ``"multistep"``: ``base * decay_factor**k`` where ``k`` is the number
      of milestones ``<= epoch`` (0-based), so the rate drops at the first step
      of epoch ``m``. The AMR code meant this but stepped its scheduler one
      epoch late, so its drops came one epoch after each milestone; that bug
      is not reproduced. ``"cosine"``: linear warm-up from 0 over
      ``warmup_epochs``, then cosine decay to 0 at the end of training.
      ``"constant"``: ``base`` throughout.
    base_learning_rate: the peak rate.
    steps_per_epoch, num_epochs: the run's length.
    milestone_epochs: for ``multistep``, e.g. the AMR recipe's (15, 30, 45, 60, 75, 90).
    decay_factor: for ``multistep``.
    warmup_epochs: for ``cosine`` (may be fractional).
  """
  if steps_per_epoch < 1 or num_epochs < 1:
    raise ValueError(f"steps_per_epoch and num_epochs must be >= 1; got {steps_per_epoch}, {num_epochs}.")
  if base_learning_rate <= 0:
    raise ValueError(f"base_learning_rate must be > 0; got {base_learning_rate}.")
  if name == "multistep":
    if list(milestone_epochs) != sorted(set(milestone_epochs)) or any(m < 1 for m in milestone_epochs):
      raise ValueError(f"milestone_epochs must be increasing epochs >= 1; got {tuple(milestone_epochs)}.")
    return optax.piecewise_constant_schedule(
        base_learning_rate, {int(m * steps_per_epoch): decay_factor for m in milestone_epochs})
  if name == "cosine":
    total_steps = steps_per_epoch * num_epochs
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    if not 0 <= warmup_steps < total_steps:
      raise ValueError(f"warmup_epochs={warmup_epochs} must be >= 0 and shorter than the run ({num_epochs} epochs).")
    return optax.warmup_cosine_decay_schedule(0.0, base_learning_rate, warmup_steps, total_steps, end_value=0.0)
  if name == "constant":
    return optax.constant_schedule(base_learning_rate)
  raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}.")


def create_optimizer(name: str, learning_rate: optax.ScalarOrSchedule, *, weight_decay: float = 0.0,
                     momentum: float = 0.9, gradient_clip_norm: float | None = None) -> optax.GradientTransformation:
  """``adamw`` (PyTorch AdamW), ``adam`` (PyTorch Adam, L2 added to the gradient) or ``sgd`` (with momentum).

  Args:
    learning_rate: a number or a schedule (see :func:`learning_rate_schedule`).
    weight_decay: decoupled for ``adamw``; added to the gradient for ``sgd`` and ``adam``.
    momentum: for ``sgd`` (0 for plain SGD).
    gradient_clip_norm: clip the gradients' global norm to this first; ``None`` or 0: no clipping.
  """
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0; got {weight_decay}.")
  if name == "adamw":
    update = optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)
  elif name == "adam":
    update = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate, eps=1e-8))
  elif name == "sgd":
    update = optax.chain(optax.add_decayed_weights(weight_decay),
                         optax.sgd(learning_rate, momentum=momentum or None))
  else:
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}.")
  if gradient_clip_norm:
    return optax.chain(clip_by_global_norm(gradient_clip_norm), update)
  return update


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """PyTorch's ``clip_grad_norm_``: gradients times ``min(1, max_norm / (global_norm + 1e-6))``."""
  def update(updates, state, params=None):
    del params
    factor = jnp.minimum(1.0, max_norm / (optax.tree.norm(updates) + 1e-6))
    return jax.tree.map(lambda g: (g * factor).astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
