"""Every field of a run's config checked before anything slow happens, each error naming the field.

:func:`check` runs before the dataset is built or decoded, so a typo costs
no time. The names and kinds of values are those of ``configs/base.py``.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

from amr_jax import errors, optim

POSITIVE_INTEGERS = ("batch_size", "eval_batch_size", "num_epochs", "checkpoint_every_steps", "log_every_steps",
                     "image_size", "max_checkpoints_to_keep")
NON_NEGATIVE_INTEGERS = ("eval_every_epochs", "num_validation_subjects", "seed")
# field: (lowest, highest, lowest included, highest included)
REAL_RANGES = {
    "learning_rate": (0.0, math.inf, False, False),
    "weight_decay": (0.0, math.inf, True, False),
    "momentum": (0.0, 1.0, True, False),
    "gradient_clip_norm": (0.0, math.inf, True, False),
    "decay_factor": (0.0, 1.0, False, True),
    "warmup_epochs": (0.0, math.inf, True, False),
}
HEAD_BIASES = ("zeros", "age_prior")
MIN_IMAGE_SIZE = 64  # five 2x poolings leave a 2x2 feature map


def _is_integer(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _interval(low: float, high: float, low_in: bool, high_in: bool) -> str:
  return f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def check(config, num_devices: int, num_processes: int = 1, *, training: bool = True) -> None:
  """Raises :class:`~amr_jax.errors.ConfigError` naming the first field whose value a run cannot use.

  Args:
    config: the run's config (``configs/base.py``'s fields).
    num_devices: the devices of all processes, which must divide the batch sizes.
    num_processes: the processes of the run.
    training: False for evaluation, which trains no fold and so ignores how folds would be spread over devices.
  """
  for name in POSITIVE_INTEGERS:
    if not _is_integer(config[name]) or config[name] < 1:
      raise errors.ConfigError(f"config.{name} must be a positive integer; got {config[name]!r}.")
  for name in NON_NEGATIVE_INTEGERS:
    if not _is_integer(config[name]) or config[name] < 0:
      raise errors.ConfigError(f"config.{name} must be an integer >= 0; got {config[name]!r}.")
  if not _is_integer(config.num_train_steps) or not (config.num_train_steps == -1 or config.num_train_steps >= 1):
    raise errors.ConfigError(f"config.num_train_steps must be -1 (num_epochs x steps per epoch) or a positive "
                             f"number of steps; got {config.num_train_steps!r}.")
  if not _is_integer(config.num_classes) or config.num_classes < 2:
    raise errors.ConfigError(f"config.num_classes must be an integer >= 2 (one class per age); got "
                             f"{config.num_classes!r}.")
  if not _is_real(config.start_age):
    raise errors.ConfigError(f"config.start_age must be a finite number (the age of class 0); got {config.start_age!r}.")
  if config.image_size < MIN_IMAGE_SIZE:
    raise errors.ConfigError(f"config.image_size must be at least {MIN_IMAGE_SIZE} (five 2x poolings); "
                             f"got {config.image_size}.")
  for name, bounds in REAL_RANGES.items():
    value, (low, high, low_in, high_in) = config[name], bounds
    if not _is_real(value) or value < low or value > high or (value == low and not low_in) or (
        value == high and not high_in):
      raise errors.ConfigError(f"config.{name} must be a number in {_interval(*bounds)}; got {value!r}.")
  if config.head_bias not in HEAD_BIASES:
    raise errors.ConfigError(f"config.head_bias must be one of {', '.join(HEAD_BIASES)}; got {config.head_bias!r}.")
  _check_optimisation_names(config)
  check_pretrained(config)
  _check_folds(config)
  _check_parallel_folds(config, num_devices, num_processes, training)
  # Folds over devices: a device holds its folds' whole batches; evaluation still splits its batches.
  split = ("eval_batch_size",) if config.folds_over_devices else ("batch_size", "eval_batch_size")
  for name in split:
    if config[name] % num_devices:
      raise errors.ConfigError(f"config.{name}={config[name]} must be divisible by the number of devices "
                               f"({num_devices}).")


def check_pretrained(config) -> None:
  """``config.pretrained``: '' (random weights), 'imagenet' for a model with packaged ImageNet weights, or the path
  of a torchvision state_dict for a ResNet; refused naming the field otherwise."""
  from amr_jax import pretrained  # pylint: disable=import-outside-toplevel

  if not config.pretrained:
    return
  if config.pretrained == "imagenet":
    if config.model not in pretrained.PRETRAINED:
      raise errors.ConfigError(f"config.pretrained='imagenet' has weights for models "
                               f"{', '.join(pretrained.PRETRAINED)} only (got model {config.model!r}); for a ResNet "
                               "give a torchvision .pth file, or '' for random weights.")
    return
  if not isinstance(config.pretrained, str) or not str(config.model).startswith("resnet"):
    raise errors.ConfigError(f"config.pretrained={config.pretrained!r}: a weights file is read for resnet18/34/50 only; "
                             f"model is {config.model!r}.")
  if not os.path.isfile(os.path.expanduser(config.pretrained)):
    raise errors.ConfigError(f"config.pretrained={config.pretrained!r}: no such file (expected a torchvision "
                             f"{config.model} state_dict .pth).")


def _check_optimisation_names(config) -> None:
  if config.optimizer not in optim.OPTIMIZERS:
    raise errors.ConfigError(f"config.optimizer must be one of {', '.join(optim.OPTIMIZERS)}; "
                             f"got {config.optimizer!r}.")
  if config.schedule not in optim.SCHEDULES:
    raise errors.ConfigError(f"config.schedule must be one of {', '.join(optim.SCHEDULES)}; got {config.schedule!r}.")
  milestones = list(config.milestone_epochs)
  if not all(_is_integer(m) and m >= 1 for m in milestones) or milestones != sorted(set(milestones)):
    raise errors.ConfigError(f"config.milestone_epochs must be increasing whole epochs >= 1; "
                             f"got {tuple(milestones)}.")
  if config.schedule == "cosine" and config.warmup_epochs >= config.num_epochs:
    raise errors.ConfigError(f"config.warmup_epochs={config.warmup_epochs} must be shorter than the run "
                             f"(config.num_epochs={config.num_epochs}).")


def parse_folds(text: str) -> list[int]:
  """``"1-8,20"`` as ``[1, 2, ..., 8, 20]`` (sorted, each once); ``""`` as ``[]`` (every fold).

  Raises:
    errors.ConfigError: naming ``config.folds`` and the part that is not a number or a range ``a-b`` with a <= b.
  """
  folds: set[int] = set()
  for part in filter(None, (p.strip() for p in str(text).split(","))):
    bounds = part.split("-")
    try:
      low, high = (int(bounds[0]), int(bounds[-1])) if len(bounds) <= 2 else (None, None)
    except ValueError:
      low = high = None
    if low is None or low < 0 or low > high:
      raise errors.ConfigError(f"config.folds: {part!r} in {text!r} is not a fold number or a range such as 1-8 "
                               "(expected e.g. \"1-8,20\").")
    folds.update(range(low, high + 1))
  return sorted(folds)


def _check_parallel_folds(config, num_devices: int, num_processes: int, training: bool) -> None:
  parallel, over_devices = config.parallel_folds, config.folds_over_devices
  if not _is_integer(parallel) or parallel < 1:
    raise errors.ConfigError(f"config.parallel_folds must be a positive integer (folds trained at once); "
                             f"got {parallel!r}.")
  if not isinstance(over_devices, bool):
    raise errors.ConfigError(f"config.folds_over_devices must be True or False; got {over_devices!r}.")
  if over_devices and training:
    if num_processes > 1:
      raise errors.ConfigError("config.folds_over_devices=True runs in one process: across hosts, give each its "
                               "own slice of folds (config.folds, as an array job) instead.")
    if parallel % num_devices:
      raise errors.ConfigError(f"config.folds_over_devices=True gives each of the {num_devices} devices its own "
                               f"folds: config.parallel_folds={parallel} must be a multiple of {num_devices}.")


def _check_folds(config) -> None:
  if not _is_integer(config.fold) or config.fold < -1:
    raise errors.ConfigError(f"config.fold must be a fold number or -1 (every fold); got {config.fold!r}.")
  if config.get("folds", ""):
    parse_folds(config.folds)
    if config.fold != -1:
      raise errors.ConfigError(f"config.folds={config.folds!r} selects folds of a run over all folds, and "
                               f"config.fold={config.fold} one fold: give one of them.")
  if not _is_integer(config.num_folds) or config.num_folds < 2:
    raise errors.ConfigError(f"config.num_folds must be an integer >= 2; got {config.num_folds!r}.")
