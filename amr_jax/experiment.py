"""The run: ``train_and_evaluate(config, workdir)`` trains every fold a config asks for and evaluates it.

This is the one module above training (:mod:`amr_jax.training`) and
evaluation (:mod:`amr_jax.evaluation`): it checks the config and the workdir,
prepares the data, compiles the steps, trains the folds a group at a time and
pools their test predictions. ``run_train.py`` calls
:func:`train_and_evaluate`; ``run_eval.py`` calls :func:`evaluate_workdir`.
"""

from __future__ import annotations

import functools
import os
import pathlib
import time
from typing import Any

import jax
import ml_collections

from amr_jax import config_checks, errors, workdir_layout, workdir_pack
from amr_jax.data import training_data
from amr_jax.evaluation import evaluate, reports
from amr_jax.training import (checkpoints, fold_evaluation, fold_layout, fold_loop, metric_writers, selection, stages,
                              step_functions, train_state)


def check_workdir(workdir: pathlib.Path, *, evaluate_only: bool) -> None:
  """A workdir must be a folder that exists (evaluation) or can be created (training)."""
  if workdir.exists() and not workdir.is_dir():
    raise errors.WorkdirError(f"--workdir={workdir} is a file, not a folder; give a folder for the run.")
  if evaluate_only:
    if not workdir.is_dir():
      raise errors.WorkdirError(f"--workdir={workdir} does not exist; give the workdir of a trained run.")
    return
  if metric_writers.is_writer():
    try:
      workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
      raise errors.WorkdirError(f"--workdir={workdir} cannot be created ({error.strerror or error}); give a folder "
                                "you can write to.") from None
    if not os.access(workdir, os.W_OK):
      raise errors.WorkdirError(f"--workdir={workdir} is not writable; give a folder you can write to.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       evaluate_only: bool = False) -> dict[str, Any]:
  """Trains and tests every fold ``config`` asks for; returns the pooled test metrics.

  ``workdir`` receives ``config.json``, and per fold: ``checkpoints/``,
  ``metrics.jsonl``, ``tensorboard/`` and ``test/`` (``predictions.csv``,
  ``metrics.json``, PNG plots). A run over several folds trains them under
  ``workdir/folds/``, ``config.parallel_folds`` at once (a fold whose final
  checkpoint exists is only evaluated), and writes the pooled results to
  ``workdir/summary/``. Each fold's checkpoints are its own, so a run may be
  resumed with another ``parallel_folds`` or layout.

  With ``evaluate_only`` (``run_eval.py``), nothing is trained: the last
  checkpoint of every fold is evaluated and the reports are rewritten.
  """
  workdir = pathlib.Path(workdir).absolute()
  config_checks.check(config, training=not evaluate_only)
  run_stages = stages.stages_of(config)
  loss_fns = [train_state.loss_fn(stage.config) for stage in run_stages]  # every stage's loss checked up front
  augmentation = train_state.augmentation(config)
  layout = fold_layout.FoldLayout(config.folds_over_devices and not evaluate_only)
  # Folds over devices: a fold's BatchNorm statistics are its own device's batch's, averaged over no axis.
  model = train_state.model(config, axis_name=None if layout.over_devices else "batch")
  tx = train_state.optimizer(config)
  check_workdir(workdir, evaluate_only=evaluate_only)
  stored = workdir_layout.check(workdir, config, evaluate_only=evaluate_only)
  all_folds = (stored["fold"] if stored else config.fold) == -1

  barrier = None
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    barrier = functools.partial(multihost_utils.sync_global_devices, "amr_jax dataset prepared")
  builder = training_data.prepare(config.data, is_builder_process=metric_writers.is_writer(), barrier=barrier)
  start = time.perf_counter()
  dataset = training_data.load_arrays(config.data, config.image_size, builder)
  metric_writers.log(f"{config.data.name}: decoded at {config.image_size} px in {time.perf_counter() - start:.1f} s")
  training_data.check_labels(config, dataset)
  fold_ids = training_data.fold_ids(config, dataset)
  # Checked for every fold before anything is written; the pool below reads the totals.
  total_steps = {fold: stages.num_steps(config, training_data.num_train_examples(config, dataset, fold))[1]
                 for fold in fold_ids}
  template_config = config
  if evaluate_only and config.pretrained:  # a template only: every value comes from a checkpoint
    template_config = config.copy_and_resolve_references()
    template_config.pretrained = ""
  initial_state = train_state.initial_train_state(template_config, model, tx)
  stage_steps = [step_functions.compile_steps(stage.config, loss_fn, augmentation, layout)
                 for stage, loss_fn in zip(run_stages, loss_fns)]

  # run_eval.py on a workdir of all folds pools the finished ones (array tasks may still be running, or failed).
  pooling = evaluate_only and all_folds and config.fold == -1 and config.protocol != "splits"
  results, missing = [], []
  if pooling and config.get("folds", ""):  # a pool of some folds is not the protocol's: say which are left out
    missing = [f"{training_data.fold_name(config, fold)} (not in config.folds)"
               for fold in training_data.all_fold_ids(config, dataset) if fold not in fold_ids]
  if evaluate_only:
    # First every fold's state, so that a packed fold of another run is refused before any fold is evaluated.
    plan = []  # (fold, its folder, packed elsewhere)
    for fold in fold_ids:
      fold_dir = workdir_layout.fold_workdir(config, workdir, fold, all_folds=all_folds)
      is_packed = False
      if pooling:
        total = total_steps[fold]
        latest = checkpoints.latest_step_on_disk(workdir_layout.checkpoints_dir(fold_dir))
        packed_at = workdir_pack.packed_step(fold_dir)
        if packed_at is not None and latest not in (None, total):
          raise errors.WorkdirError(
              f"{fold_dir}: trained here to step {latest} of {total}, and unpacked from another machine at step "
              f"{packed_at} ({workdir_layout.PACKED_FILE}); its report is this machine's. To pool the packed fold, "
              f"remove this folder and unpack it again; to finish it here, remove {workdir_layout.PACKED_FILE}.")
        is_packed = latest != total and packed_at == total
        if is_packed:
          workdir_pack.check_config(fold_dir, config)
        elif latest != total:
          reached = latest if latest is not None else packed_at
          state = ("not started" if reached is None else f"unfinished: step {reached} of {total}"
                   + (", packed" if latest is None else ""))
          missing.append(f"{training_data.fold_name(config, fold)} ({state})")
          continue
      plan.append((fold, fold_dir, is_packed))
    packed = [training_data.fold_name(config, fold) for fold, _, is_packed in plan if is_packed]
    if packed:  # pooled alike: every fold's predictions as its report holds them
      metric_writers.log(f"{len(packed)} folds packed on another machine ({', '.join(packed[:5])}"
                         f"{', ...' if len(packed) > 5 else ''}): every fold is pooled from its report's predictions")
    for fold, fold_dir, is_packed in plan:
      splits = training_data.fold_splits(config, dataset, fold)
      if not packed:
        results.append((splits, *fold_evaluation.evaluate_fold(config, fold_dir, splits, stage_steps[-1],
                                                                initial_state)))
        continue
      if not is_packed:  # writes the fold's report, which is then read as the packed ones are
        fold_evaluation.evaluate_fold(config, fold_dir, splits, stage_steps[-1], initial_state)
      results.append((splits, *workdir_pack.read_reports(fold_dir, selection.selects(config.model_selection))))
  else:
    data = None  # the training images on the devices, put there once for every group
    parallel = config.parallel_folds
    for first in range(0, len(fold_ids), parallel):
      group = fold_ids[first:first + parallel]
      runs = []
      for fold in group:
        fold_dir = workdir_layout.fold_workdir(config, workdir, fold, all_folds=all_folds)
        splits = training_data.fold_splits(config, dataset, fold)
        runs.append(fold_loop.open_fold(config, fold_dir, splits, initial_state, layout))
        if fold_dir != workdir and metric_writers.is_writer():
          # A fold's folder knows its fold too: run_eval.py --workdir=<it> evaluates that fold alone.
          fold_config = config.copy_and_resolve_references()
          fold_config.fold = fold
          workdir_layout.write(fold_dir, fold_config, workdir_layout.read(fold_dir))
      if first == 0 and metric_writers.is_writer():
        # Only now that the config passed every check and the first folds' checkpoints loaded: a resume that
        # fails before its first step leaves config.json as it was.
        for change in workdir_layout.write(workdir, config, stored):
          metric_writers.log(f"{workdir / workdir_layout.CONFIG_FILE}: {change}")
      if parallel > 1:
        metric_writers.log(f"training {', '.join(run.fold.name for run in runs)} at once ({layout.describe()})")
      if data is None and any(run.step < run.total_steps for run in runs):
        source = runs[0].fold.train_source  # every fold's training examples index the same arrays
        data = layout.everywhere(training_data.training_arrays(config, source))
      predictions = fold_loop.train_folds(config, runs, stage_steps, layout, data, initial_state)
      results += [(run.fold, *p) for run, p in zip(runs, predictions)]
  if not results:
    raise errors.WorkdirError(f"{workdir}: no fold is finished ({'; '.join(missing)}); train first.")
  selected = selection.selects(config.model_selection)
  scale = reports.LabelScale.of(config)
  if len(results) == 1 and not missing:
    (_, predictions, last_predictions), = results
    if not selected:
      return evaluate.metrics_of(predictions, scale)
    return {**evaluate.metrics_of(predictions, scale), "model_selection": config.model_selection,
            "last_step_test": evaluate.metrics_of(last_predictions, scale)}
  by_fold = [(splits.name, predictions) for splits, predictions, _ in results]
  extra = {"model_selection": config.model_selection}
  if selected:
    extra["last_step_test"] = evaluate.pooled_metrics([(splits.name, last) for splits, _, last in results], scale)
  if config.get("folds", "") and not evaluate_only:
    # One slice of an array job: the pool is written once every slice is done, by run_eval.py.
    metric_writers.log(f"trained folds {config.folds}; once every slice has finished, pool them all with: "
                       f"python run_eval.py --workdir={workdir}")
    return {**evaluate.pooled_metrics(by_fold, scale), **extra}
  if metric_writers.is_writer():
    summary = evaluate.write_pooled_report(workdir / workdir_layout.SUMMARY_FOLDER, by_fold, missing=missing,
                                           extra=extra, title=f"{config.name}, {len(results)} folds pooled",
                                           scale=scale)
  else:
    summary = {**evaluate.pooled_metrics(by_fold, scale), **extra}
  listed = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
  extent = f"{len(results)} folds" if not missing else (
      f"{len(results)} of {len(results) + len(missing)} folds, INCOMPLETE (missing: {listed})")
  chosen = "the last step's models" if not selected else f"the models selected on {config.model_selection}"
  metric_writers.log(f"pooled over {extent}, {chosen}: MAE {summary['mae']:.3f} over {summary['count']} images, "
                     f"mean of per-fold MAEs {summary['mean_fold_mae']:.3f}, "
                     f"{scale.cs_name(5)} {summary['cs'][5]:.3f}, RMSE "
                     f"{summary['rmse']:.3f}, PC {summary['pearson']:.3f} -> "
                     f"{workdir / workdir_layout.SUMMARY_FOLDER}")
  if selected:
    metric_writers.log(f"the last step's models, pooled: MAE {extra['last_step_test']['mae']:.3f}")
  return summary


def evaluate_workdir(config, workdir: str | os.PathLike) -> dict[str, Any]:
  """Evaluates the last checkpoint of every fold of a run in ``workdir`` and rewrites its reports."""
  return train_and_evaluate(config, workdir, evaluate_only=True)
