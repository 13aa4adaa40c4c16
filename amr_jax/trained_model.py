"""A finished run's trained model, ready to predict: ``load_model(workdir, fold, checkpoint)``.

The checkpoint is the one the run reports (the selected one if the run selects on validation data, else the
last) unless ``checkpoint`` names one; the prediction step is the one ``run_eval.py`` compiles
(:func:`amr_jax.evaluation.evaluate.eval_step`, with the run's ``test_time_flip``).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Callable

from amr_jax import errors, workdir_layout
from amr_jax.training import checkpoints, selection

#: ``--checkpoint`` values; "" is the one the run reports (the selected one if it selects, else the last).
CHECKPOINTS = ("", "last", "selected")


@dataclasses.dataclass
class Model:
  """A run's trained model, ready to predict: its config, which fold and step, and the compiled step."""
  config: Any
  description: str  # e.g. "fold_2 of workdir W, the selected checkpoint (step 120)"
  state: Any  # replicated over the local devices
  eval_step: Callable


def _fold_dir(config, stored_fold: int, workdir: pathlib.Path, fold: int | None) -> tuple[pathlib.Path, str]:
  all_folds = stored_fold == -1 and config.protocol != "splits"
  if not all_folds:
    if fold is not None and fold != stored_fold:
      raise errors.ConfigError(f"--fold={fold}: {workdir} is a run of fold {stored_fold} only; leave --fold out.")
    return workdir, "the run's model"
  folds_dir = workdir / workdir_layout.FOLDS_FOLDER
  trained = (sorted(p.name for p in folds_dir.glob("*") if workdir_layout.checkpoints_dir(p).is_dir())
             if folds_dir.is_dir() else [])
  if fold is None:
    raise errors.ConfigError(f"{workdir} is a run over all folds, one model per fold: choose one with --fold=N "
                             f"(trained: {', '.join(trained) or 'none yet'}).")
  fold_dir = workdir_layout.fold_workdir(config, workdir, fold, all_folds=True)
  if fold_dir.name not in trained:
    raise errors.WorkdirError(f"--fold={fold}: {fold_dir} holds no checkpoint (trained: {', '.join(trained) or 'none'}).")
  return fold_dir, fold_dir.name


def load_model(workdir: str | os.PathLike, fold: int | None = None, checkpoint: str = "") -> Model:
  """The model of ``workdir``'s run (of ``fold``, for a run over all folds) at its last or selected checkpoint.

  A run (or fold) without test metrics did not finish: it was stopped, or its loss diverged, or it is still
  training. Its checkpoint is refused unless ``checkpoint`` names it explicitly, and the description then says so.

  Raises:
    errors.ConfigError: a run over all folds without ``fold``, a bad ``checkpoint``.
    errors.WorkdirError: no such run, fold or checkpoint; an unfinished run without an explicit ``checkpoint``.
  """
  import jax  # pylint: disable=import-outside-toplevel

  from amr_jax.evaluation import evaluate  # pylint: disable=import-outside-toplevel
  from amr_jax.training import train_state  # pylint: disable=import-outside-toplevel

  if checkpoint not in CHECKPOINTS:
    raise errors.ConfigError(f"--checkpoint must be 'last' or 'selected' (or empty: the one the run reports); "
                             f"got {checkpoint!r}.")
  workdir = pathlib.Path(workdir).absolute()
  config = workdir_layout.load(workdir)
  fold_dir, fold_name = _fold_dir(config, workdir_layout.read(workdir)["fold"], workdir, fold)
  kind = checkpoint or selection.reported_checkpoint(config.model_selection)
  directory = (workdir_layout.checkpoints_dir(fold_dir) if kind == "last" else fold_dir / selection.CHECKPOINT_FOLDER)
  store = checkpoints.Checkpoints(directory, max_to_keep=1 if kind == "selected" else config.max_checkpoints_to_keep)
  if store.latest_step() is None:
    hint = (" (the run selects no checkpoint: config.model_selection is 'last')" if kind == "selected"
            and not selection.selects(config.model_selection) else "; train first")
    raise errors.WorkdirError(f"{directory}: no checkpoint{hint}.")
  finished = (fold_dir / workdir_layout.TEST_REPORT / workdir_layout.METRICS_FILE).is_file()
  if not finished and not checkpoint:
    where = workdir if fold_dir == workdir else f"{fold_name} of {workdir}"
    raise errors.WorkdirError(
        f"{where} has no test metrics: the run did not finish (stopped, diverged, or still "
        f"training) and its {kind} checkpoint is step {store.latest_step()}; `python run_eval.py --workdir="
        f"{workdir}` says how far it got. Finish it with its run_train.py command, or predict with that checkpoint "
        f"anyway: --checkpoint={kind}.")
  model = train_state.model(config, axis_name=None)
  # Only the template's structure counts (the checkpoint replaces every value): pretrained weights are not loaded.
  shape_config = config.copy_and_resolve_references()
  shape_config.pretrained = ""
  template = jax.device_get(train_state.initial_train_state(shape_config, model, train_state.optimizer(config)))
  state = store.restore(template)
  store.close()
  eval_step = jax.pmap(lambda s, b: evaluate.eval_step(s, b, start_age=config.start_age, label_step=config.label_step,
                                                       test_time_flip=config.test_time_flip), axis_name="batch")
  description = f"{fold_name} of {workdir}, the {kind} checkpoint (step {int(state.step)})"
  if not finished:
    description += ", from a run that did not finish (no test metrics)"
  return Model(config, description, evaluate.replicate(state), eval_step)
