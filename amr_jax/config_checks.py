"""Every field of a run's config checked before anything slow happens, each error naming the field.

:func:`check` runs before the dataset is built or decoded, so a typo costs
no time. The names and kinds of values are those of ``configs/base.py``.
"""

from __future__ import annotations

import math
import numbers
import os
import pathlib
from typing import Any

import jax

from amr_jax import errors
from amr_jax.data import folds, training_data
from amr_jax.training import optim, selection, stages

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


def check(config, *, training: bool = True) -> None:
  """Fails early, naming the field, on every value a run would fail on later: the whole check of a run.

  The fields (:func:`check_fields`, of each stage too), the dataset, crop and protocol, the model selection, and
  last the manual directory, so that a data mistake is not the first one named.
  """
  check_data_config(config.data, config.protocol)
  check_release_splits(config)
  check_sigma_field(config)
  check_model_selection(config)
  check_fields(config, jax.device_count(), jax.process_count(), training=training)
  run_stages = stages.stages_of(config)
  for index, stage in enumerate(run_stages if len(run_stages) > 1 else []):
    try:
      check_fields(stage.config, jax.device_count(), jax.process_count(), training=training)
    except errors.ConfigError as error:
      raise errors.ConfigError(f"config.stages[{index}] ({stage.name}): {error}") from None
  check_manual_dir(config.data)  # after the fields: a data mistake is not the first one named


def _is_integer(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _interval(low: float, high: float, low_in: bool, high_in: bool) -> str:
  return f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def check_fields(config, num_devices: int, num_processes: int = 1, *, training: bool = True) -> None:
  """Raises :class:`~amr_jax.errors.ConfigError` naming the first field of ``configs/base.py`` whose value a run
  cannot use.

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
    raise errors.ConfigError(f"config.num_classes must be an integer >= 2 (one class per age, or per label of the "
                             f"grid); got {config.num_classes!r}.")
  if not _is_real(config.start_age):
    raise errors.ConfigError(f"config.start_age must be a finite number (the label of class 0); got "
                             f"{config.start_age!r}.")
  if not _is_real(config.label_step) or not config.label_step > 0:
    raise errors.ConfigError(f"config.label_step must be a finite number > 0 (the spacing of the classes' labels; 1 "
                             f"for whole years); got {config.label_step!r}.")
  _check_label_scale(config)
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


def _check_label_scale(config) -> None:
  """The reports' ``label_name``, ``label_unit`` and ``cs_step`` (absent in a config made before them: ages)."""
  for name in ("label_name", "label_unit"):
    value = config.get(name, "age")
    if not isinstance(value, str) or not value.strip():
      raise errors.ConfigError(f"config.{name} must be a non-empty string (the reports' axes, e.g. 'age' in "
                               f"'years'); got {value!r}.")
  step = config.get("cs_step", 1.0)
  if not _is_real(step) or not step > 0:
    raise errors.ConfigError(f"config.cs_step must be a finite number > 0 (CS(k) counts errors within k * cs_step; 1 "
                             f"for years); got {step!r}.")


def check_pretrained(config) -> None:
  """``config.pretrained``: '' (random weights), 'imagenet' for a model with packaged ImageNet weights, the path
  of a torchvision state_dict for a ResNet, or :data:`DLIB_PRETRAINED` for dlib's age network; refused naming the
  field otherwise."""
  from amr_jax.models import pretrained  # pylint: disable=import-outside-toplevel

  if not config.pretrained:
    return
  if config.pretrained in DLIB_PRETRAINED or config.model == "dlib_age_resnet":
    _check_dlib_pretrained(config)
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


#: The ``config.pretrained`` values of model "dlib_age_resnet": dlib's weights with a new head, or with its own head.
DLIB_PRETRAINED = ("dlib", "dlib_with_head")


def _check_dlib_pretrained(config) -> None:
  if config.model != "dlib_age_resnet" or config.pretrained not in DLIB_PRETRAINED:
    raise errors.ConfigError(f"config.pretrained={config.pretrained!r} with model {config.model!r}: dlib's weights "
                             f"({' or '.join(map(repr, DLIB_PRETRAINED))}) are for model 'dlib_age_resnet', and that "
                             "model takes no other pretrained weights ('' for random ones).")
  found = (config.num_classes, config.start_age, config.label_step, config.head_bias)
  if config.pretrained == "dlib_with_head" and found != (81, 0, 1, "zeros"):
    raise errors.ConfigError(f"config.pretrained='dlib_with_head' keeps dlib's classifier, whose 81 outputs are the "
                             f"ages 0.25, 1, ..., 80: it needs num_classes=81, start_age=0, label_step=1 and "
                             f"head_bias='zeros' (which leaves its bias as it is); got {', '.join(map(repr, found))}. "
                             f"pretrained='dlib' gives a new head instead.")


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
    folds.parse_folds(config.folds)
    if config.fold != -1:
      raise errors.ConfigError(f"config.folds={config.folds!r} selects folds of a run over all folds, and "
                               f"config.fold={config.fold} one fold: give one of them.")
  if not _is_integer(config.num_folds) or config.num_folds < 2:
    raise errors.ConfigError(f"config.num_folds must be an integer >= 2; got {config.num_folds!r}.")


def check_data_config(data, protocol: str) -> None:
  """Raises ``ValueError`` naming the config field when ``data.name``, ``data.crop`` or ``protocol`` is invalid."""
  if data.name not in training_data.PROTOCOLS:
    raise errors.ConfigError(f"config.data.name must be one of {', '.join(training_data.PROTOCOLS)}; "
                             f"got {data.name!r}.")
  if data.crop not in training_data.CROPS[data.name]:
    crops = training_data.CROPS[data.name]
    raise errors.ConfigError(f"config.data.crop for {data.name} must be one of {', '.join(crops)}; "
                             f"got {data.crop!r}.")
  if data.crop == "detected":
    from amr_jax.faces import mtcnn_networks  # pylint: disable=import-outside-toplevel

    mtcnn_networks.weights_dir()  # the detector's weights are installed, or the message says how
  if protocol not in training_data.PROTOCOLS[data.name]:
    protocols = training_data.PROTOCOLS[data.name]
    raise errors.ConfigError(f"config.protocol for {data.name} must be one of {', '.join(protocols)}; "
                             f"got {protocol!r}.")


def check_release_splits(config) -> None:
  """SCUT-FBP5500 trains on its release's own splits: its five folds, or its 60/40 split, with no validation images;
  refuses a config that asks for others, naming the field."""
  if config.data.name != "scut_fbp5500":
    return
  if config.protocol == "kfold" and config.num_folds != training_data.SCUT_FBP5500_FOLDS:
    raise errors.ConfigError(f"config.num_folds={config.num_folds!r}: scut_fbp5500's kfold protocol is its release's "
                             f"{training_data.SCUT_FBP5500_FOLDS} cross-validation folds; set it to "
                             f"{training_data.SCUT_FBP5500_FOLDS}.")
  if config.num_validation_subjects:
    raise errors.ConfigError(f"config.num_validation_subjects={config.num_validation_subjects!r}: scut_fbp5500's "
                             "splits have no validation images and its faces no subject ids; set it to 0.")


def check_sigma_field(config) -> None:
  """Refuses a ``config.sigma_field`` the dataset lacks, or a loss that takes no sigma."""
  field = config.sigma_field
  if not field:
    return
  if field not in training_data.SIGMA_FIELDS[config.data.name]:
    has = training_data.SIGMA_FIELDS[config.data.name]
    raise errors.ConfigError(
        f"config.sigma_field={field!r}: {config.data.name} has " + (f"only {', '.join(has)}" if has else
        "no per-image age spread (a constant config.loss_kwargs.sigma applies to every image); set it to ''") + ".")
  for stage in stages.stages_of(config):
    if stage.config.loss not in ("dldl", "dldl_v2"):
      where = f"the {stage.name} loss" if stage.name else "config.loss"
      raise errors.ConfigError(f"config.sigma_field={field!r} gives each image's sigma to a label-distribution loss "
                               f"(dldl, dldl_v2); {where} is {stage.config.loss!r}.")


def check_model_selection(config) -> None:
  """Refuses a ``config.model_selection`` the run cannot honour, naming the field to change."""
  name = config.model_selection
  if name not in selection.SELECTIONS:
    raise errors.ConfigError(f"config.model_selection must be one of {', '.join(selection.SELECTIONS)}; got {name!r}.")
  if name == "last":
    return
  if config.data.name == "scut_fbp5500":
    raise errors.ConfigError(f"config.model_selection={name!r}: scut_fbp5500's splits have no validation images; "
                             "use 'last' (the last step's model, as DLDL-v2's code evaluates).")
  if name == "validation_eps" and config.data.name != "clap2016":
    raise errors.ConfigError("config.model_selection='validation_eps' needs the annotators' spread of CLAP2016; "
                             f"{config.data.name} has none: use 'validation_mae'.")
  if config.data.name == "fgnet" and config.num_validation_subjects < 1:
    raise errors.ConfigError(f"config.model_selection={name!r} selects on validation subjects drawn from the "
                             "training subjects: set config.num_validation_subjects (e.g. 5).")
  if config.eval_every_epochs < 1:
    raise errors.ConfigError(f"config.model_selection={name!r} chooses among validations: set "
                             "config.eval_every_epochs (e.g. 1) so the run validates during training.")


def check_manual_dir(data) -> None:
  """A ``manual_dir`` the user names must hold the raw files: a typo is refused here, not met by a download."""
  if not data.manual_dir:
    return
  folder = pathlib.Path(os.path.expanduser(data.manual_dir))
  if folder.is_file():
    raise errors.ConfigError(f"config.data.manual_dir={data.manual_dir} is a file; give the folder it lies in "
                             f"(config.data.manual_dir={folder.absolute().parent}).")
  if not folder.is_dir() or not any(folder.iterdir()):
    state = "is empty" if folder.is_dir() else "does not exist"
    raise errors.ConfigError(
        f"config.data.manual_dir={data.manual_dir} {state}; give the folder that holds the raw {data.name} files "
        "(its archive or extracted folder), or leave it empty to use the build in config.data.data_dir as it is "
        "(or to download it where a public copy is known).")
