"""Training in stages: each with its own length, loss and learning rate, each starting a fresh optimizer.

DLDL-v2's code trains in two stages: KL alone for 60 epochs, then KL + L1 for
60 more, the second started as a new run from the first one's final weights
(``main_mtnet.lua`` loads ``model_60.t7``), so with a new Adam and a new
learning-rate schedule. ``config.stages`` lists such stages; each names only
the fields it changes, and takes every other one from the config::

  config.num_epochs = 60
  config.stages = ({"name": "kl", "loss": "dldl", "loss_kwargs": {"sigma": 2.0}},
                   {"name": "kl+l1", "loss": "dldl_v2", "loss_kwargs": {"sigma": 2.0, "lambda_l1": 1.0}})

An empty ``config.stages`` is one stage: the config itself. A run's step
counts on across stages (batch order and augmentation stay functions of
``(seed, step)``); stage ``k`` covers steps ``ends[k - 1] .. ends[k] - 1``, its
learning rate is its schedule at ``step - ends[k - 1]``, and its first step
starts from the previous stage's final parameters and BatchNorm statistics
with the optimizer state :meth:`~optax.GradientTransformation.init` gives.
A checkpoint is written at every stage's end.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import ml_collections

from amr_jax import errors

# What a stage may set; everything else (model, data, optimizer, batch size, augmentation) is the run's.
STAGE_FIELDS = ("name", "num_epochs", "num_train_steps", "loss", "loss_kwargs", "learning_rate", "milestone_epochs")


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage: its name (``"stage 1"``, ... unless the stage names itself) and the config it trains with."""

  name: str
  config: ml_collections.ConfigDict


def stages_of(config: ml_collections.ConfigDict) -> list[Stage]:
  """One :class:`Stage` per stage: ``config`` with the stage's fields set (``loss_kwargs`` replaced whole).

  Raises:
    errors.ConfigError: naming the stage and the field it cannot set.
  """
  stages = config.get("stages", ()) or ()
  if not isinstance(stages, (list, tuple)):
    raise errors.ConfigError(f"config.stages must be a list of stages (dicts of {', '.join(STAGE_FIELDS)}); "
                             f"got {stages!r}.")
  if not stages:
    return [Stage("", config)]
  resolved = []
  for index, stage in enumerate(stages):
    stage = dict(stage) if isinstance(stage, (dict, ml_collections.ConfigDict)) else stage
    if not isinstance(stage, dict):
      raise errors.ConfigError(f"config.stages[{index}] must be a dict of fields to set; got {stage!r}.")
    unknown = sorted(set(stage) - set(STAGE_FIELDS))
    if unknown:
      raise errors.ConfigError(f"config.stages[{index}] sets {unknown}, which a stage cannot set; a stage sets "
                               f"{', '.join(STAGE_FIELDS)} (the rest is the run's).")
    stage_config = config.copy_and_resolve_references()
    stage_config.stages = ()
    for field, value in stage.items():
      if field == "name":
        continue
      try:
        stage_config[field] = ml_collections.ConfigDict(dict(value)) if field == "loss_kwargs" else value
      except (TypeError, ValueError) as error:
        raise errors.ConfigError(f"config.stages[{index}].{field}={value!r} does not fit config.{field} "
                                 f"({error}).") from None
    resolved.append(Stage(str(stage.get("name", f"stage {index + 1}")), stage_config))
  return resolved


def stage_ends(stage_lengths: Sequence[int]) -> list[int]:
  """The step at which each stage ends (its last step's count), from the stages' lengths."""
  ends, total = [], 0
  for length in stage_lengths:
    total += length
    ends.append(total)
  return ends


def stage_of(step: int, ends: Sequence[int]) -> int:
  """The stage that step ``step`` (0-based, the step about to be taken) belongs to; the last for a finished run."""
  for index, end in enumerate(ends):
    if step < end:
      return index
  return len(ends) - 1


def label(stages: Sequence[Stage], index: int) -> str:
  """``"stage 2/2 (kl+l1)"`` for a run of stages; ``""`` for a single one."""
  if len(stages) == 1:
    return ""
  return f"stage {index + 1}/{len(stages)} ({stages[index].name})"


def num_steps(config, num_train_examples: int) -> tuple[int, int]:
  """``(steps_per_epoch, num_train_steps)`` for a training set of this size (every stage's steps)."""
  steps_per_epoch, lengths = stage_lengths(config, num_train_examples)
  return steps_per_epoch, sum(lengths)


def stage_lengths(config, num_train_examples: int) -> tuple[int, list[int]]:
  """``(steps_per_epoch, [steps of each stage])`` for a training set of this size."""
  steps_per_epoch = num_train_examples // config.batch_size
  if steps_per_epoch == 0:
    raise errors.ConfigError(f"config.batch_size={config.batch_size} is larger than the training set "
                             f"({num_train_examples} examples).")
  lengths = [stage.config.num_train_steps if stage.config.num_train_steps > 0
             else stage.config.num_epochs * steps_per_epoch for stage in stages_of(config)]
  return steps_per_epoch, lengths
