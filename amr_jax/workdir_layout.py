"""A run's workdir: every folder and file name in it, and its ``config.json``, checked by every later run.

The layout (the names are this module's constants)::

  <workdir>/config.json              the run's config, written once it passed every check
  <workdir>/folds/subject_001/ ...   a run over all folds: one folder per fold (LOPO; fold_1 ... for k-fold)
  <workdir>/summary/                 the folds' test predictions pooled: a report folder
  <fold>/checkpoints/<step>/         Orbax checkpoints (a single-fold or splits run: <fold> is the workdir)
  <fold>/selected_checkpoint/        the model chosen on validation data, and <fold>/selection.json its scores
  <fold>/metrics.jsonl, tensorboard/ the training log
  <fold>/validation/, <fold>/test/   report folders: predictions.csv, three PNGs, metrics.json (written last)

The first run on a workdir writes ``config.json`` after the config has passed
every check. A later run on that workdir (a resume, or ``run_eval.py``) is
compared with it field by field: only the fields listed here may differ, and
any other difference is refused by name, with both values. A resume that
changes an allowed field (``num_epochs``, to extend a run) rewrites
``config.json`` and says so.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import ml_collections

from amr_jax import atomic_files, errors

CONFIG_FILE = "config.json"
FOLDS_FOLDER = "folds"
SUMMARY_FOLDER = "summary"
CHECKPOINTS_FOLDER = "checkpoints"
SELECTED_CHECKPOINT_FOLDER = "selected_checkpoint"
SELECTION_FILE = "selection.json"
METRICS_LOG = "metrics.jsonl"
TENSORBOARD_FOLDER = "tensorboard"
TEST_REPORT = "test"  # a fold's test report folder, which a finished fold has
REPORT_SPLITS = ("validation", TEST_REPORT)  # a fold's report folders
PER_FOLD_FILE = "per_fold.csv"  # in summary/: each fold's metrics
PREDICTIONS_FILE = "predictions.csv"
LAST_STEP_PREDICTIONS_FILE = "last_step_predictions.csv"  # test/ of a fold that selects: the last step's model's
PACKED_FILE = "packed.json"  # a fold folder packed on another machine (amr_jax.workdir_pack): the step it reached
METRICS_FILE = "metrics.json"
CUMULATIVE_SCORE_PLOT = "cumulative_score.png"
PREDICTED_VS_TRUE_PLOT = "predicted_vs_true.png"
ERROR_BY_AGE_GROUP_PLOT = "error_by_age_group.png"


def fold_folder_name(protocol: str, fold: int) -> str:
  """``subject_017`` (leave-one-subject-out) or ``fold_3`` (k-fold): a fold's folder under ``folds/``."""
  return f"subject_{fold:03d}" if protocol == "lopo" else f"fold_{fold}"


def fold_workdir(config, workdir: pathlib.Path, fold: int, *, all_folds: bool) -> pathlib.Path:
  """A run over all folds trains each in ``workdir/folds/<fold>``; a single-fold (or splits) run in ``workdir``."""
  if not all_folds or config.protocol == "splits":
    return workdir
  return workdir / FOLDS_FOLDER / fold_folder_name(config.protocol, fold)


def checkpoints_dir(fold_dir: pathlib.Path) -> pathlib.Path:
  return fold_dir / CHECKPOINTS_FOLDER


# Where the data lies, and how a run reports and saves: none changes what a step computes.
_LOCATION_AND_BOOKKEEPING = ("data.manual_dir", "data.data_dir", "log_every_steps", "checkpoint_every_steps",
                             "max_checkpoints_to_keep", "eval_batch_size", "eval_every_epochs", "label_name",
                             "label_unit", "cs_step")
# A resumed run may also stop later or sooner. The multistep and constant schedules do not depend on the run's
# length; the cosine one depends on num_epochs, so a change of it is refused there (the steps already taken followed
# another curve). ``fold`` may pick one fold of a workdir made by a run over all folds, and ``folds`` a slice of them
# (array jobs sharing the workdir).
# How many folds train at once, and where: each fold's checkpoints are its own and its result is the same (to float
# rounding) in every arrangement, so a run may go on in another.
_ARRANGEMENT = ("parallel_folds", "folds_over_devices")
RESUME_FIELDS = _LOCATION_AND_BOOKKEEPING + _ARRANGEMENT + ("num_epochs", "num_train_steps", "fold", "folds",
                                                            "test_time_flip")
# Evaluation may average the image and its mirror (``test_time_flip``), and evaluate one fold of an all-folds run.
EVAL_FIELDS = _LOCATION_AND_BOOKKEEPING + _ARRANGEMENT + ("test_time_flip", "fold", "folds")
_COSINE_LENGTH_FIELDS = ("num_epochs",)
# Fields added to the config after runs were made with it: a config.json without one ran with this value, and
# is compared and loaded as if it held it.
ADDED_FIELDS = {"parallel_folds": 1, "folds_over_devices": False, "head_bias": "zeros",
                "augmentation.downscale_range": [1.0, 1.0], "input_normalization": "", "sigma_field": "",
                "stages": [], "model_selection": "last", "label_step": 1.0,
                "label_name": "age", "label_unit": "years", "cs_step": 1.0}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    flat = {}
    for key, value in tree.items():
      flat.update(_flat(value, f"{prefix}{key}."))
    return flat
  return {prefix[:-1]: tree}


def as_json_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as ``config.json`` holds it (tuples as lists)."""
  return json.loads(config.to_json_best_effort())


def read(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """The stored config of ``workdir``, or None when it holds none."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return None
  try:
    stored = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
    raise errors.WorkdirError(f"{path}: cannot be read as the run's config ({error}); restore it, or use a new "
                              "--workdir.") from None
  if not isinstance(stored, dict):
    raise errors.WorkdirError(f"{path}: holds a {type(stored).__name__}, not a run's config; use a new --workdir.")
  return stored


def load(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config a run was trained with, from its workdir (for ``run_eval.py --workdir=W``)."""
  stored = read(workdir)
  if stored is None:
    raise errors.WorkdirError(f"{os.path.abspath(workdir)} holds no {CONFIG_FILE}: it is not the workdir of a run "
                              "(train first, or give the run's --workdir).")
  for field, value in ADDED_FIELDS.items():
    *parents, leaf = field.split(".")
    target = stored
    for parent in parents:
      target = target.get(parent)
      if not isinstance(target, dict):
        break
    else:
      target.setdefault(leaf, value)
  return ml_collections.ConfigDict(stored)


def differences(stored: dict[str, Any], config: ml_collections.ConfigDict,
                allowed: tuple[str, ...]) -> tuple[list[str], dict[str, tuple[Any, Any]]]:
  """``(refused, allowed_changes)``: the differing fields, as messages, and the allowed ones as ``(stored, new)``."""
  old, new = _flat(stored), _flat(as_json_dict(config))
  refused, changes = [], {}
  for field in sorted(set(old) | set(new)):
    before, after = (side.get(field, ADDED_FIELDS.get(field, "<absent>")) for side in (old, new))
    if before == after:
      continue
    if field in allowed:
      changes[field] = (before, after)
    else:
      refused.append(f"config.{field}: {before!r} in the workdir, {after!r} now")
  return refused, changes


def check(workdir: pathlib.Path, config: ml_collections.ConfigDict, *, evaluate_only: bool) -> dict[str, Any] | None:
  """Refuses ``config`` on a workdir that holds a run of another config; returns the stored config (or None).

  Raises:
    errors.WorkdirError: naming every field that differs, with both values.
  """
  stored = read(workdir)
  if stored is None:
    if evaluate_only:
      load(workdir)  # raises: nothing to evaluate
    return None
  allowed = EVAL_FIELDS if evaluate_only else RESUME_FIELDS
  refused, changes = differences(stored, config, allowed)
  if stored.get("schedule") == "cosine" and not evaluate_only:
    refused += [f"config.{field}: {before!r} in the workdir, {after!r} now (the cosine schedule depends on the run's "
                "length, so the steps already taken followed another curve)"
                for field, (before, after) in changes.items() if field in _COSINE_LENGTH_FIELDS]
  if stored.get("model_selection", "last") != "last" and not evaluate_only:
    refused += [f"config.{field}: {before!r} in the workdir, {after!r} now (the run selects among its validations, "
                "which this would change)" for field, (before, after) in changes.items() if field == "eval_every_epochs"]
  if stored.get("stages") and not evaluate_only:
    refused += [f"config.{field}: {before!r} in the workdir, {after!r} now (a run in stages would move the "
                "boundary between its stages)" for field, (before, after) in changes.items()
                if field in ("num_epochs", "num_train_steps")]
  if stored.get("fold", -1) != -1 and "fold" in changes:
    before, after = changes["fold"]
    refused.append(f"config.fold: {before!r} in the workdir, {after!r} now (a workdir of one fold holds that fold only)")
  if refused:
    if evaluate_only:
      hint = f"Evaluate the run as it was trained: python run_eval.py --workdir={workdir}, with only these fields set"
    else:
      hint = (f"Use a new --workdir for this config (python run_eval.py --workdir={workdir} evaluates the stored run); "
              "on a resume only these fields may change")
    raise errors.WorkdirError(
        f"{workdir} holds a run of another config ({workdir / CONFIG_FILE}): {'; '.join(refused)}. {hint}: "
        f"{', '.join(EVAL_FIELDS if evaluate_only else RESUME_FIELDS)}.")
  return stored


def write(workdir: pathlib.Path, config: ml_collections.ConfigDict, stored: dict[str, Any] | None) -> list[str]:
  """Writes ``config.json`` for a new run, or the allowed changes of a resumed one; returns the changes made.

  A run over all folds keeps ``fold = -1`` and ``folds = ""`` in its workdir when one fold or a slice of them is run.
  Written atomically, so an interrupted write leaves the previous file.
  """
  current = as_json_dict(config)
  if stored is None and "folds" in current:
    current["folds"] = ""  # array tasks share the workdir: it holds the whole protocol, whichever slice came first
  changes: dict[str, tuple[Any, Any]] = {}
  if stored is not None:
    _, changes = differences(stored, config, RESUME_FIELDS)
    for field in ("fold", "folds"):  # one fold or a slice of an all-folds workdir: it stays the all-folds run's
      if field in changes:
        current[field] = changes.pop(field)[0]
    if not changes:
      return []
  # Array tasks starting together on one workdir each write a whole file.
  atomic_files.write_text(workdir / CONFIG_FILE, json.dumps(current, indent=2) + "\n")
  return [f"config.{field}: {before!r} -> {after!r}" for field, (before, after) in changes.items()]
