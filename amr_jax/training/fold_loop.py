"""Folds in training: open each fold from its workdir, train a group of folds at once, validate, checkpoint.

Folds are trained ``config.parallel_folds`` at a time (:func:`train_folds`):
the compiled step is :func:`amr_jax.training.step_functions.folds_train_step`
over the group's stacked states, each fold gathering its batch by index from
the images held once on each device. A single fold is a group of one. Where
the folds live on the devices is :mod:`amr_jax.training.fold_layout`'s
business.

A fold restarted on its workdir continues from its last checkpoint and ends
with the parameters an uninterrupted run ends with. A run of several stages
(:mod:`amr_jax.training.stages`, DLDL-v2's KL then KL + L1) compiles one step
per stage; at a stage's first step each fold's optimizer state is started
afresh, and its learning rate follows the stage's schedule.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import pathlib
import sys
from typing import Any, Callable, Iterator

import jax
import numpy as np

from amr_jax import errors, workdir_layout
from amr_jax.data import training_data
from amr_jax.evaluation import evaluate, reports
from amr_jax.models import head_init
from amr_jax.training import (checkpoints, fold_evaluation, fold_layout, interruption, metric_writers, selection,
                              stages, train_state)
from amr_jax.training.step_functions import Steps


class NonFiniteLossError(errors.RunError, FloatingPointError):
  """The training loss became NaN or infinite."""


@dataclasses.dataclass
class FoldRun:
  """A fold being trained: its folder, plan, checkpoints, log, and the step it has reached."""

  fold: training_data.Fold
  workdir: pathlib.Path
  steps_per_epoch: int
  stage_ends: list[int]  # the step each stage ends at; the last is the run's end
  step: int  # steps taken so far (the checkpoint's step when the fold is opened)
  state: Any  # the host state of the step it was opened at (None once on the devices)
  schedules: list[Callable[[int], float]]  # each stage's learning rate, of the step counted from the stage's start
  stage_labels: list[str]
  store: checkpoints.Checkpoints
  selection: selection.Selection | selection.LastStep  # LastStep: the last step is reported
  batches: Iterator[dict]
  progress: metric_writers.ProgressLine
  writer: metric_writers.MetricWriter | None
  last_saved: int | None
  interval: dict[str, list[float]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))

  @property
  def total_steps(self) -> int:
    return self.stage_ends[-1]

  def stage_start(self, stage: int) -> int:
    return self.stage_ends[stage - 1] if stage else 0

  def learning_rate(self, stage: int) -> float:
    return self.schedules[stage](self.step - self.stage_start(stage))


def open_fold(config, workdir: pathlib.Path, fold: training_data.Fold, initial_state: train_state.TrainState,
              layout: fold_layout.FoldLayout) -> FoldRun:
  """A fold ready to train from ``workdir``'s last checkpoint (or from ``initial_state``)."""
  workdir.mkdir(parents=True, exist_ok=True)
  steps_per_epoch, lengths = stages.stage_lengths(config, fold.num_train)
  stage_ends = stages.stage_ends(lengths)
  total_steps = stage_ends[-1]
  run_stages = stages.stages_of(config)
  store = checkpoints.Checkpoints(workdir_layout.checkpoints_dir(workdir), max_to_keep=config.max_checkpoints_to_keep)
  state = jax.device_get(initial_state)
  if store.latest_step() is not None:
    state = store.restore(state)
    metric_writers.log(f"{fold.name}: resumed from {store.directory / str(store.latest_step())} at step "
                       f"{int(state.step)}")
  elif config.head_bias == "age_prior":
    bias = head_init.prior_bias(fold.train_source["age"][fold.train_indices], config.num_classes,
                                start_age=config.start_age, label_step=config.label_step)
    state = state.replace(params=head_init.with_head_bias(state.params, bias))
    prior = np.exp(bias) / np.exp(bias).sum()
    metric_writers.log(f"{fold.name}: head bias set to the training labels' prior (its mean "
                       f"{config.start_age + config.label_step * (prior @ np.arange(config.num_classes)):.1f})")
  start_step = int(state.step)
  if start_step > total_steps:
    raise errors.WorkdirError(f"{workdir}: its checkpoint is at step {start_step}, past this config's {total_steps} "
                              "steps; use a new --workdir or raise config.num_train_steps / num_epochs.")
  count = jax.device_count()
  where = "on one device" if layout.over_devices or count == 1 else f"on {count} devices"
  in_stages = "" if len(lengths) == 1 else f" in {len(lengths)} stages of {', '.join(map(str, lengths))}"
  metric_writers.log(f"{fold.name}: {fold.num_train} training, {len(fold.validation['age'])} validation, "
                     f"{fold.num_test} test images; {total_steps} steps of {config.batch_size} "
                     f"({steps_per_epoch} per epoch){in_stages} {where}")
  chosen = selection.for_fold(config.model_selection, workdir, start_step, store, jax.device_get(initial_state),
                              write_files=metric_writers.is_writer())
  return FoldRun(
      fold=fold, workdir=workdir, selection=chosen, steps_per_epoch=steps_per_epoch, stage_ends=stage_ends, step=start_step,
      state=state, schedules=[train_state.schedule(stage.config, steps_per_epoch) for stage in run_stages],
      stage_labels=[stages.label(run_stages, i) for i in range(len(run_stages))], store=store,
      batches=layout.batch_indices(fold.num_train, global_batch=config.batch_size, seed=config.seed,
                                   start_step=start_step),
      progress=metric_writers.ProgressLine(total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                                           global_batch=config.batch_size, start_step=start_step),
      writer=metric_writers.MetricWriter(workdir, resume_step=start_step) if metric_writers.is_writer() else None,
      last_saved=store.latest_step())


def _record(config, run: FoldRun, step: int, scalars: dict[str, float]) -> None:
  """Refuses a non-finite loss; logs and writes the means of each ``log_every_steps`` steps."""
  if not math.isfinite(scalars["loss"]):
    where = (f"the last good checkpoint is step {run.last_saved} in {run.store.directory}"
             if run.last_saved is not None else "no checkpoint was written before it")
    raise NonFiniteLossError(
        f"{run.fold.name}: the training loss is {scalars['loss']} at step {step} "
        f"(epoch {(step - 1) // run.steps_per_epoch + 1}); "
        f"{where}. Lower config.learning_rate, set config.gradient_clip_norm, or check the data.")
  for name, value in scalars.items():
    run.interval[name].append(value)
  if step % config.log_every_steps == 0 or step in run.stage_ends:  # a stage's terms are never averaged with the next's
    means = {name: float(np.mean(v)) for name, v in run.interval.items()}
    run.interval.clear()
    label = run.stage_labels[stages.stage_of(step - 1, run.stage_ends)]
    metric_writers.log(f"{run.fold.name}: {label + ': ' if label else ''}{run.progress.format(step, means)}")
    if run.writer:
      run.writer.write_scalars(step, means, prefix="train")


def _validation_due(config, run: FoldRun, step: int) -> bool:
  """Every ``eval_every_epochs``; the last step too where it is a candidate for selection (else the final report
  validates it)."""
  every = config.eval_every_epochs * run.steps_per_epoch
  if not every or not len(run.fold.validation["age"]):
    return False
  if step == run.total_steps:
    return run.selection.selects
  return step % every == 0


def _validate(config, run: FoldRun, steps: Steps, state, step: int) -> None:
  """Scores ``state`` (one fold's, on one device) on the validation images; keeps it if the run selects it."""
  predictions = evaluate.predict(steps.eval, evaluate.replicate(state), run.fold.validation, config.eval_batch_size)
  fold_evaluation.refuse_non_finite(run.fold.name, "validation", step, predictions, run.workdir)
  scale = reports.LabelScale.of(config)
  metrics = evaluate.metrics_of(predictions, scale)
  note = " (the best so far: kept)" if run.selection.consider(step, metrics, state) else ""
  eps = f", epsilon-error {metrics['eps_error']:.4f}" if "eps_error" in metrics else ""
  metric_writers.log(f"{run.fold.name}: validation at step {step}: MAE {metrics['mae']:.3f}{eps} over "
                     f"{metrics['count']} images{note}")
  if run.writer:
    scalars = {"mae": metrics["mae"], f"cs{scale.threshold(5):g}": metrics["cs"][5]}
    if "eps_error" in metrics:
      scalars["eps_error"] = metrics["eps_error"]
    run.writer.write_scalars(step, scalars, prefix="validation")


def _interrupted(stopped: list[tuple[FoldRun, int]]) -> errors.Interrupted:
  if len(stopped) == 1:
    ((run, done),) = stopped
    return errors.Interrupted(f"{run.fold.name} stopped after step {done}, its checkpoint saved in "
                              f"{run.store.directory}; the same command continues from there.")
  return errors.Interrupted(
      f"{', '.join(f'{run.fold.name} after step {done}' for run, done in stopped)} stopped, each with its "
      "checkpoint saved in its folder; the same command continues from there.")


def train_folds(config, runs: list[FoldRun], stage_steps: list[Steps], layout: fold_layout.FoldLayout, data: Any,
                initial_state: train_state.TrainState) -> list[tuple[Any, Any]]:
  """Trains ``runs`` at once, each to its own last step, and evaluates each; returns their test predictions (of the
  reported model, and of the last step's where a model is selected).

  ``stage_steps`` holds the compiled steps of each stage (one for a run of one stage). ``data`` is the training
  images and ages on the devices (``layout.everywhere``), which every fold's training examples index. A fold that
  reaches the end of a stage is saved and then kept as it is while the others finish the stage; a fold that
  reaches its last step is kept as it is while the others go on.
  """
  slots: list[FoldRun | None] = list(runs) + [None] * (layout.num_slots(len(runs)) - len(runs))
  evaluation = stage_steps[-1]
  try:
    if all(run.step == run.total_steps for run in runs):  # every fold finished: evaluate its checkpoint
      return [fold_evaluation.evaluate_splits(config, run.workdir, run.fold, evaluation, run.state, run.selection,
                                              initial_state) for run in runs]
    idle_state = jax.device_get(initial_state)
    states = layout.states([run.state if run else idle_state for run in slots])
    for run in runs:
      run.state = None
    # What an idle slot (a finished fold, a padding slot) is fed: any valid indices, its result is discarded.
    idle_batch = jax.tree.map(np.zeros_like, next(layout.batch_indices(
        config.batch_size, global_batch=config.batch_size, seed=0, start_step=0)))
    pending: collections.deque = collections.deque()

    def check(metrics, taken: list[tuple[int, int]]) -> None:
      values = layout.values(metrics)
      for slot, step in taken:
        _record(config, slots[slot], step, {name: float(value[slot]) for name, value in values.items()})

    def save(slot: int, step: int) -> None:
      while pending:
        check(*pending.popleft())
      run = slots[slot]
      run.store.save(step, layout.fold(states, slot))
      run.last_saved = step

    for stage, steps in enumerate(stage_steps):
      entering = [run is not None and stage > 0 and run.step == run.stage_start(stage) < run.stage_ends[stage]
                  for run in slots]
      if any(entering):
        states = _with_fresh_optimizers(states, entering, layout)
        for run, fresh in zip(slots, entering):
          if fresh:
            metric_writers.log(f"{run.fold.name}: {run.stage_labels[stage]} starts at step {run.step} from the "
                               "previous stage's weights, with a fresh optimizer and learning-rate schedule")
      while True:
        active = [run is not None and run.step < run.stage_ends[stage] for run in slots]
        if not any(active):
          break
        batches = [next(run.batches) if on else idle_batch for run, on in zip(slots, active)]
        learning_rates = [np.float32(run.learning_rate(stage) if on else 0.0) for run, on in zip(slots, active)]
        states, metrics = steps.train(states, data, layout.batches(batches), layout.per_slot(learning_rates),
                                      layout.per_slot(active))
        for run, on in zip(slots, active):
          if on:
            run.step += 1
        pending.append((metrics, [(slot, run.step) for slot, (run, on) in enumerate(zip(slots, active)) if on]))
        while len(pending) > 1:  # one step behind, so the host never waits for the device
          check(*pending.popleft())
        stopping = interruption.requested() and any(run.step < run.total_steps for run in runs)
        stopped = []
        for slot, run in enumerate(slots):
          if not active[slot]:
            continue
          if run.step % config.checkpoint_every_steps == 0 or run.step in run.stage_ends or stopping:
            save(slot, run.step)
          if stopping and run.step < run.total_steps:
            stopped.append((run, run.step))
        if stopped:
          raise _interrupted(stopped)
        for slot, run in enumerate(slots):
          if active[slot] and _validation_due(config, run, run.step):
            if run.selection.selects and run.last_saved != run.step:
              save(slot, run.step)  # a kept step always has a regular checkpoint too (amr_jax.training.selection)
            _validate(config, run, evaluation, layout.fold(states, slot), run.step)
    while pending:
      check(*pending.popleft())
    for slot, run in enumerate(runs):
      if run.store.latest_step() != run.total_steps:
        save(slot, run.total_steps)
  finally:
    failing = sys.exc_info()[1] is not None  # then a writer that cannot close (the same full disk) must not hide it
    for run in runs:
      if run.writer:
        try:
          run.writer.close()
        except OSError:
          if not failing:
            raise
  return [fold_evaluation.evaluate_splits(config, run.workdir, run.fold, evaluation, layout.fold(states, slot),
                                          run.selection, initial_state) for slot, run in enumerate(runs)]


def _with_fresh_optimizers(states, fresh: list[bool], layout: fold_layout.FoldLayout):
  """``states`` with the optimizer state of every ``fresh`` slot as the optimizer starts it (a stage's start)."""
  host = [jax.device_get(layout.fold(states, slot)) for slot in range(len(fresh))]
  host = [state.replace(opt_state=state.tx.init(state.params)) if new else state for state, new in zip(host, fresh)]
  return layout.states(host)

