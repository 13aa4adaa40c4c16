"""Training: ``train_and_evaluate(config, workdir)`` trains every fold a config asks for and evaluates it.

``train_step`` and :func:`amr_jax.evaluate.eval_step` are pure functions of
``(state, batch)``; :func:`train_and_evaluate` applies ``jax.pmap(...,
axis_name="batch")`` to them once, so every fold of a LOPO run reuses the
same compiled steps. Gradients, metrics and BatchNorm statistics are averaged
over all devices of all processes, so a step on N devices computes the same
update as one device with the whole global batch (tested for 1, 2 and 4
devices, and for two processes).

Everything random is a function of ``(seed, step)``: the batch order
(:func:`amr_jax.input_pipeline.train_batches`), each example's augmentation
(keyed by its place in the global batch) and dropout. A checkpoint therefore
needs only the state; a run restarted on its workdir continues from the last
checkpoint and ends with the parameters an uninterrupted run ends with.

The learning rate is computed on the host from the step and fed to the step
(``optax.inject_hyperparams``), so the optimizer, and with it the compiled
step, does not depend on a fold's number of steps per epoch.

A run of several stages (:mod:`amr_jax.stages`, DLDL-v2's KL then KL + L1)
compiles one step per stage; at a stage's first step each fold's optimizer
state is started afresh, and its learning rate follows the stage's schedule.

Folds are trained ``config.parallel_folds`` at a time (:func:`train_folds`):
the compiled step is :func:`folds_train_step` over the group's stacked
states, each fold gathering its batch by index from the images held once on
each device. A single fold is a group of one. Where the folds live on the
devices is :mod:`amr_jax.fold_layout`'s business.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from amr_jax import (augment, checkpoints, config_checks, errors, evaluate, fold_layout, from_config, head_init,
                     interruption, metric_writers, selection, stages, training_data, workdir_config)
from amr_jax.evaluate import replicate

class NonFiniteLossError(errors.RunError, FloatingPointError):
  """The training loss became NaN or infinite."""


class NonFinitePredictionError(errors.RunError, FloatingPointError):
  """A model predicted a NaN or infinite age; no report of those predictions is written."""


# --------------------------------------------------------------------------
# The step.

def train_step(state: from_config.TrainState, batch: dict[str, jax.Array], learning_rate: jax.Array, *,
               loss_fn: Callable, augmentation: augment.Augmentation, seed: int, global_batch: int,
               axis_name: str | None = "batch"):
  """One optimizer step on one device's part of the global batch; call under ``pmap(axis_name="batch")``.

  Args:
    state: the replicated training state.
    batch: ``image`` (uint8), ``age`` and ``position`` (each example's place in the global batch); ``sigma``, each
      example's target spread, where the run takes it from the data (``config.sigma_field``).
    learning_rate: this step's learning rate.
    axis_name: the ``pmap`` axis the batch is split over, whose gradients and metrics are averaged; None when the
      device holds the whole batch (folds over devices).

  Returns:
    ``(new_state, metrics)``: the mean loss terms over the global batch and the learning rate.
  """
  step = state.step
  images = augment.augment_batch(augment.example_keys(seed, step, batch["position"]), batch["image"], augmentation)
  # Dropout keys use fold-in values above any position, one per device.
  dropout_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), global_batch + batch["position"][0])

  def compute_loss(params):
    logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images, train=True,
                                     mutable=["batch_stats"], rngs={"dropout": dropout_key})
    per_example = {"sigma": batch["sigma"]} if "sigma" in batch else {}
    terms = loss_fn(logits, batch["age"], **per_example)
    return jnp.mean(terms["loss"]), (terms, updates["batch_stats"])

  (_, (terms, batch_stats)), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
  if axis_name:
    grads = jax.lax.pmean(grads, axis_name=axis_name)
  hyperparams = state.opt_state.hyperparams
  # In the dtype the optimizer state was created with, so the state's types (and the compiled step) never change.
  learning_rate = learning_rate.astype(hyperparams["learning_rate"].dtype)
  opt_state = state.opt_state._replace(hyperparams={**hyperparams, "learning_rate": learning_rate})
  state = state.replace(opt_state=opt_state).apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics = {name: jnp.mean(value.astype(jnp.promote_types(value.dtype, jnp.float32))) for name, value in terms.items()}
  if axis_name:
    metrics = jax.lax.pmean(metrics, axis_name=axis_name)
  metrics["learning_rate"] = learning_rate
  return state, metrics


def folds_train_step(states: from_config.TrainState, batches: dict[str, jax.Array], learning_rates: jax.Array,
                     active: jax.Array, **step_kwargs):
  """:func:`train_step` for several folds at once; call under ``pmap(axis_name="batch")``.

  Every argument has a leading fold axis: ``states`` are the folds' states stacked, ``batches`` each fold's part
  of its own global batch, ``learning_rates`` each fold's rate. Each fold's update, BatchNorm statistics, keys and
  averages over devices are those it gets trained alone. A fold whose ``active`` is False keeps its state as it
  is (a fold that has finished while longer ones go on).

  Returns:
    ``(new_states, metrics)``, both with the fold axis first.
  """
  new_states, metrics = jax.vmap(functools.partial(train_step, **step_kwargs))(states, batches, learning_rates)

  def keep_finished(new, old):
    return jnp.where(active.reshape(active.shape + (1,) * (new.ndim - 1)), new, old)

  return jax.tree.map(keep_finished, new_states, states), metrics


def gathered_train_step(states: from_config.TrainState, data: dict[str, jax.Array], batches: dict[str, jax.Array],
                        learning_rates: jax.Array, active: jax.Array, **step_kwargs):
  """:func:`folds_train_step` on batches each fold gathers, on the device, from the images held there once.

  Args:
    data: ``image`` and ``age`` (and ``sigma``, if the run has it) of every training example of the run,
      ``[examples, ...]``.
    batches: per fold, ``index`` (into ``data``) and ``position``, ``[folds, per_device_batch]``.

  Returns:
    As :func:`folds_train_step`.
  """
  index = batches["index"]
  gathered = {name: value[index] for name, value in data.items()}
  gathered["position"] = batches["position"]
  return folds_train_step(states, gathered, learning_rates, active, **step_kwargs)


@dataclasses.dataclass
class Steps:
  """The compiled steps shared by every fold of a run."""

  train: Callable  # gathered_train_step, pmapped as the layout lays a group out
  eval: Callable


_STEPS: dict[str, Steps] = {}


def compile_steps(config, loss_fn, augmentation, layout: fold_layout.FoldLayout) -> Steps:
  """The pmapped steps; one pair per distinct setting in a process, so XLA compiles each once."""
  key = json.dumps([config.loss, config.loss_kwargs.to_dict(), config.start_age, config.seed, config.batch_size,
                    config.test_time_flip, config.augmentation.to_dict(), config.sigma_field, layout.axis_name,
                    [str(d) for d in layout.pmap_devices or []]], sort_keys=True, default=str)
  if key not in _STEPS:
    _STEPS[key] = _compile_steps(config, loss_fn, augmentation, layout)
  return _STEPS[key]


def _compile_steps(config, loss_fn, augmentation, layout) -> Steps:
  # Folds over devices: each device holds its folds' whole batches, so the step averages over no axis.
  step_axis = None if layout.over_devices else "batch"
  train = jax.pmap(functools.partial(gathered_train_step, loss_fn=loss_fn, augmentation=augmentation,
                                     seed=config.seed, global_batch=config.batch_size, axis_name=step_axis),
                   axis_name=layout.axis_name, devices=layout.pmap_devices, donate_argnums=(0,))
  eval_ = jax.pmap(functools.partial(evaluate.eval_step, start_age=config.start_age,
                                     test_time_flip=config.test_time_flip), axis_name="batch")
  return Steps(train, eval_)


# --------------------------------------------------------------------------
# Folds in training.

def _is_writer() -> bool:
  return jax.process_index() == 0


def _log(message: str) -> None:
  if _is_writer():
    print(message, flush=True)


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
             else stage.config.num_epochs * steps_per_epoch for stage in stages.stages_of(config)]
  return steps_per_epoch, lengths


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
  selection: selection.Selection | None  # None: the last step is reported
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


def open_fold(config, workdir: pathlib.Path, fold: training_data.Fold, initial_state: from_config.TrainState,
              layout: fold_layout.FoldLayout) -> FoldRun:
  """A fold ready to train from ``workdir``'s last checkpoint (or from ``initial_state``)."""
  workdir.mkdir(parents=True, exist_ok=True)
  steps_per_epoch, lengths = stage_lengths(config, fold.num_train)
  stage_ends = stages.stage_ends(lengths)
  total_steps = stage_ends[-1]
  run_stages = stages.stages_of(config)
  store = checkpoints.Checkpoints(workdir / "checkpoints", max_to_keep=config.max_checkpoints_to_keep)
  state = jax.device_get(initial_state)
  if store.latest_step() is not None:
    state = store.restore(state)
    _log(f"{fold.name}: resumed from {store.directory / str(store.latest_step())} at step {int(state.step)}")
  elif config.head_bias == "age_prior":
    bias = head_init.prior_bias(fold.train_source["age"][fold.train_indices], config.num_classes,
                                start_age=config.start_age)
    state = state.replace(params=head_init.with_head_bias(state.params, bias))
    prior = np.exp(bias) / np.exp(bias).sum()
    _log(f"{fold.name}: head bias set to the training ages' prior (its mean age "
         f"{config.start_age + prior @ np.arange(config.num_classes):.1f})")
  start_step = int(state.step)
  if start_step > total_steps:
    raise errors.WorkdirError(f"{workdir}: its checkpoint is at step {start_step}, past this config's {total_steps} "
                              "steps; use a new --workdir or raise config.num_train_steps / num_epochs.")
  count = jax.device_count()
  where = "on one device" if layout.over_devices or count == 1 else f"on {count} devices"
  in_stages = "" if len(lengths) == 1 else f" in {len(lengths)} stages of {', '.join(map(str, lengths))}"
  _log(f"{fold.name}: {fold.num_train} training, {len(fold.validation['age'])} validation, "
       f"{fold.num_test} test images; {total_steps} steps of {config.batch_size} "
       f"({steps_per_epoch} per epoch){in_stages} {where}")
  chosen = None
  if config.model_selection != "last":
    chosen = selection.Selection(workdir, config.model_selection, start_step, store, jax.device_get(initial_state),
                                 write_files=_is_writer())
  return FoldRun(
      fold=fold, workdir=workdir, selection=chosen, steps_per_epoch=steps_per_epoch, stage_ends=stage_ends, step=start_step,
      state=state, schedules=[from_config.schedule(stage.config, steps_per_epoch) for stage in run_stages],
      stage_labels=[stages.label(run_stages, i) for i in range(len(run_stages))], store=store,
      batches=layout.batch_indices(fold.num_train, global_batch=config.batch_size, seed=config.seed,
                                   start_step=start_step),
      progress=metric_writers.ProgressLine(total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                                           global_batch=config.batch_size, start_step=start_step),
      writer=metric_writers.MetricWriter(workdir, resume_step=start_step) if _is_writer() else None,
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
    _log(f"{run.fold.name}: {label + ': ' if label else ''}{run.progress.format(step, means)}")
    if run.writer:
      run.writer.write_scalars(step, means, prefix="train")


def _validation_due(config, run: FoldRun, step: int) -> bool:
  """Every ``eval_every_epochs``; the last step too where it is a candidate for selection (else the final report
  validates it)."""
  every = config.eval_every_epochs * run.steps_per_epoch
  if not every or not len(run.fold.validation["age"]):
    return False
  if step == run.total_steps:
    return run.selection is not None
  return step % every == 0


def _validate(config, run: FoldRun, steps: Steps, state, step: int) -> None:
  """Scores ``state`` (one fold's, on one device) on the validation images; keeps it if the run selects it."""
  predictions = evaluate.predict(steps.eval, replicate(state), run.fold.validation, config.eval_batch_size)
  _refuse_non_finite(run.fold.name, "validation", step, predictions, run.workdir)
  metrics = evaluate.metrics_of(predictions)
  note = ""
  if run.selection is not None:
    value = selection.score(run.selection.name, metrics)
    if run.selection.record(step, value, state):
      note = " (the best so far: kept)"
  eps = f", epsilon-error {metrics['eps_error']:.4f}" if "eps_error" in metrics else ""
  _log(f"{run.fold.name}: validation at step {step}: MAE {metrics['mae']:.3f}{eps} over {metrics['count']} "
       f"images{note}")
  if run.writer:
    scalars = {"mae": metrics["mae"], "cs5": metrics["cs"][5]}
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
                initial_state: from_config.TrainState) -> list[tuple[Any, Any]]:
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
      return [_evaluate_splits(config, run.workdir, run.fold, evaluation, run.state, run.selection, initial_state)
              for run in runs]
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
            _log(f"{run.fold.name}: {run.stage_labels[stage]} starts at step {run.step} from the previous stage's "
                 "weights, with a fresh optimizer and learning-rate schedule")
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
            if run.selection is not None and run.last_saved != run.step:
              save(slot, run.step)  # a kept step always has a regular checkpoint too (amr_jax.selection)
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
  return [_evaluate_splits(config, run.workdir, run.fold, evaluation, layout.fold(states, slot), run.selection,
                           initial_state) for slot, run in enumerate(runs)]


def _with_fresh_optimizers(states, fresh: list[bool], layout: fold_layout.FoldLayout):
  """``states`` with the optimizer state of every ``fresh`` slot as the optimizer starts it (a stage's start)."""
  host = [jax.device_get(layout.fold(states, slot)) for slot in range(len(fresh))]
  host = [state.replace(opt_state=state.tx.init(state.params)) if new else state for state, new in zip(host, fresh)]
  return layout.states(host)


def _evaluate_fold(config, workdir, fold, steps, initial_state):
  store = checkpoints.Checkpoints(workdir / "checkpoints", max_to_keep=config.max_checkpoints_to_keep)
  if store.latest_step() is None:
    raise errors.WorkdirError(f"{fold.name}: no checkpoint in {store.directory}; train first "
                            f"(python run_train.py --config=... --workdir={workdir}).")
  template = jax.device_get(initial_state)
  state = store.restore(template)
  _, total_steps = num_steps(config, fold.num_train)
  note = "" if int(state.step) == total_steps else f" (the run is unfinished: {total_steps} steps planned)"
  chosen = None
  if config.model_selection != "last":
    chosen = selection.Selection(workdir, config.model_selection, int(state.step), store, template,
                                 write_files=_is_writer())
  _log(f"{fold.name}: evaluating the checkpoint of step {int(state.step)}{note}")
  return _evaluate_splits(config, workdir, fold, steps, state, chosen, initial_state)


def _evaluate_splits(config, workdir, fold, steps, last_state, chosen: selection.Selection | None, initial_state):
  """Reports the selected model (the last one without selection) on the validation and test images.

  With selection, the last step's test metrics are computed too and written beside the selected ones.

  Returns:
    ``(test predictions of the reported model, test predictions of the last step's model or None)``.
  """
  state, extra, last_predictions = last_state, {}, None
  if chosen is not None:
    if chosen.best is None:
      raise errors.WorkdirError(f"{fold.name}: {chosen.path} holds no validation score; train the run to its end.")
    last_step = int(jax.device_get(last_state.step))
    last_predictions = evaluate.predict(steps.eval, replicate(last_state), fold.test, config.eval_batch_size)
    _refuse_non_finite(fold.name, "test", last_step, last_predictions, workdir)
    last = evaluate.metrics_of(last_predictions)
    state = chosen.restore(jax.device_get(initial_state))
    extra = {**chosen.summary(), "last_step": last_step, "last_step_test": last}
    _log(f"{fold.name}: selected step {extra['selected_step']} of {extra['last_step']} on {chosen.name} "
         f"{chosen.best['score']:.4f}; the last step's test MAE {last['mae']:.3f}")
  replicated, step = replicate(state), int(jax.device_get(state.step))
  outputs = {}
  for split, arrays in (("validation", fold.validation), ("test", fold.test)):
    if len(arrays["age"]):
      outputs[split] = evaluate.predict(steps.eval, replicated, arrays, config.eval_batch_size)
      _refuse_non_finite(fold.name, split, step, outputs[split], workdir)
      if _is_writer():
        # The last step's test metrics belong beside the test metrics only.
        beside = extra if split == "test" else {k: v for k, v in extra.items() if k != "last_step_test"}
        summary = evaluate.write_report(workdir / split, outputs[split], extra=beside,
                                        title=f"{config.name}, {fold.name}, {split}")
        _log(f"{fold.name}: {split} MAE {summary['mae']:.3f}, CS(5) {summary['cs'][5]:.3f} over {summary['count']} "
             f"images -> {workdir / split}")
  return outputs.get("test"), last_predictions


def _refuse_non_finite(fold_name: str, split: str, step: int, predictions: evaluate.Predictions,
                       workdir: pathlib.Path) -> None:
  """Stops before any report of ``split`` is written when a predicted age is NaN or infinite."""
  bad = int(np.sum(~np.isfinite(predictions["predicted_age"])))
  if bad:
    raise NonFinitePredictionError(
        f"{fold_name}: the model of step {step} predicts a non-finite age for {bad} of "
        f"{len(predictions['predicted_age'])} {split} images, so no {split} report was written; the checkpoints in "
        f"{workdir / 'checkpoints'} are kept (a diverged model, or bfloat16 on a CPU where XLA's YNNPACK fusions "
        "were not turned off: see amr_jax.xla_flags).")


# --------------------------------------------------------------------------
# The run.

def fold_workdir(config, workdir: pathlib.Path, fold: int, *, all_folds: bool) -> pathlib.Path:
  """A run over all folds trains each in ``workdir/folds/<fold>``; a single-fold (or splits) run in ``workdir``."""
  if not all_folds or config.protocol == "splits":
    return workdir
  label = f"subject_{fold:03d}" if config.protocol == "lopo" else f"fold_{fold}"
  return workdir / "folds" / label


def check_config(config, *, training: bool = True) -> None:
  """Fails early, naming the field, on values that would fail later."""
  training_data.check_data_config(config.data, config.protocol)
  training_data.check_sigma_field(config)
  selection.check(config)
  config_checks.check(config, jax.device_count(), jax.process_count(), training=training)
  run_stages = stages.stages_of(config)
  for index, stage in enumerate(run_stages if len(run_stages) > 1 else []):
    try:
      config_checks.check(stage.config, jax.device_count(), jax.process_count(), training=training)
    except errors.ConfigError as error:
      raise errors.ConfigError(f"config.stages[{index}] ({stage.name}): {error}") from None
  training_data.check_manual_dir(config.data)  # after the fields: a data mistake is not the first one named


def check_workdir(workdir: pathlib.Path, *, evaluate_only: bool) -> None:
  """A workdir must be a folder that exists (evaluation) or can be created (training)."""
  if workdir.exists() and not workdir.is_dir():
    raise errors.WorkdirError(f"--workdir={workdir} is a file, not a folder; give a folder for the run.")
  if evaluate_only:
    if not workdir.is_dir():
      raise errors.WorkdirError(f"--workdir={workdir} does not exist; give the workdir of a trained run.")
    return
  if _is_writer():
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
  check_config(config, training=not evaluate_only)
  run_stages = stages.stages_of(config)
  loss_fns = [from_config.loss_fn(stage.config) for stage in run_stages]  # every stage's loss checked up front
  augmentation = from_config.augmentation(config)
  layout = fold_layout.FoldLayout(config.folds_over_devices and not evaluate_only)
  # Folds over devices: a fold's BatchNorm statistics are its own device's batch's, averaged over no axis.
  model = from_config.model(config, axis_name=None if layout.over_devices else "batch")
  tx = from_config.optimizer(config)
  check_workdir(workdir, evaluate_only=evaluate_only)
  stored = workdir_config.check(workdir, config, evaluate_only=evaluate_only)
  all_folds = (stored["fold"] if stored else config.fold) == -1

  barrier = None
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    barrier = functools.partial(multihost_utils.sync_global_devices, "amr_jax dataset prepared")
  builder = training_data.prepare(config.data, is_builder_process=_is_writer(), barrier=barrier)
  start = time.perf_counter()
  dataset = training_data.load_arrays(config.data, config.image_size, builder)
  _log(f"{config.data.name}: decoded at {config.image_size} px in {time.perf_counter() - start:.1f} s")
  training_data.check_labels(config, dataset)
  fold_ids = training_data.fold_ids(config, dataset)
  # Checked for every fold before anything is written; the pool below reads the totals.
  total_steps = {fold: num_steps(config, training_data.num_train_examples(config, dataset, fold))[1]
                 for fold in fold_ids}
  initial_state = from_config.initial_train_state(config, model, tx)
  stage_steps = [compile_steps(stage.config, loss_fn, augmentation, layout)
                 for stage, loss_fn in zip(run_stages, loss_fns)]

  # run_eval.py on a workdir of all folds pools the finished ones (array tasks may still be running, or failed).
  pooling = evaluate_only and all_folds and config.fold == -1 and config.protocol != "splits"
  results, missing = [], []
  if pooling and config.get("folds", ""):  # a pool of some folds is not the protocol's: say which are left out
    missing = [f"{training_data.fold_name(config, fold)} (not in config.folds)"
               for fold in training_data.all_fold_ids(config, dataset) if fold not in fold_ids]
  if evaluate_only:
    for fold in fold_ids:
      fold_dir = fold_workdir(config, workdir, fold, all_folds=all_folds)
      if pooling:
        total = total_steps[fold]
        latest = checkpoints.latest_step_on_disk(fold_dir / "checkpoints")
        if latest != total:
          state = "not started" if latest is None else f"unfinished: step {latest} of {total}"
          missing.append(f"{training_data.fold_name(config, fold)} ({state})")
          continue
      splits = training_data.fold_splits(config, dataset, fold)
      results.append((splits, *_evaluate_fold(config, fold_dir, splits, stage_steps[-1], initial_state)))
  else:
    data = None  # the training images on the devices, put there once for every group
    parallel = config.parallel_folds
    for first in range(0, len(fold_ids), parallel):
      group = fold_ids[first:first + parallel]
      runs = []
      for fold in group:
        fold_dir = fold_workdir(config, workdir, fold, all_folds=all_folds)
        runs.append(open_fold(config, fold_dir, training_data.fold_splits(config, dataset, fold), initial_state,
                              layout))
        if fold_dir != workdir and _is_writer():
          # A fold's folder knows its fold too: run_eval.py --workdir=<it> evaluates that fold alone.
          fold_config = config.copy_and_resolve_references()
          fold_config.fold = fold
          workdir_config.write(fold_dir, fold_config, workdir_config.read(fold_dir))
      if first == 0 and _is_writer():
        # Only now that the config passed every check and the first folds' checkpoints loaded: a resume that
        # fails before its first step leaves config.json as it was.
        for change in workdir_config.write(workdir, config, stored):
          _log(f"{workdir / workdir_config.FILE_NAME}: {change}")
      if parallel > 1:
        _log(f"training {', '.join(run.fold.name for run in runs)} at once ({layout.describe()})")
      if data is None and any(run.step < run.total_steps for run in runs):
        source = runs[0].fold.train_source  # every fold's training examples index the same arrays
        data = layout.everywhere(training_data.training_arrays(config, source))
      predictions = train_folds(config, runs, stage_steps, layout, data, initial_state)
      results += [(run.fold, *p) for run, p in zip(runs, predictions)]
  if not results:
    raise errors.WorkdirError(f"{workdir}: no fold is finished ({'; '.join(missing)}); train first.")
  selected = config.model_selection != "last"
  if len(results) == 1 and not missing:
    (_, predictions, last_predictions), = results
    if not selected:
      return evaluate.metrics_of(predictions)
    return {**evaluate.metrics_of(predictions), "model_selection": config.model_selection,
            "last_step_test": evaluate.metrics_of(last_predictions)}
  by_fold = [(splits.name, predictions) for splits, predictions, _ in results]
  extra = {"model_selection": config.model_selection}
  if selected:
    extra["last_step_test"] = evaluate.pooled_metrics([(splits.name, last) for splits, _, last in results])
  if config.get("folds", "") and not evaluate_only:
    # One slice of an array job: the pool is written once every slice is done, by run_eval.py.
    _log(f"trained folds {config.folds}; once every slice has finished, pool them all with: "
         f"python run_eval.py --workdir={workdir}")
    return {**evaluate.pooled_metrics(by_fold), **extra}
  if _is_writer():
    summary = evaluate.write_pooled_report(workdir / "summary", by_fold, missing=missing, extra=extra,
                                           title=f"{config.name}, {len(results)} folds pooled")
  else:
    summary = {**evaluate.pooled_metrics(by_fold), **extra}
  listed = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
  extent = f"{len(results)} folds" if not missing else (
      f"{len(results)} of {len(results) + len(missing)} folds, INCOMPLETE (missing: {listed})")
  chosen = "the last step's models" if not selected else f"the models selected on {config.model_selection}"
  _log(f"pooled over {extent}, {chosen}: MAE {summary['mae']:.3f} over {summary['count']} images, mean of "
       f"per-fold MAEs {summary['mean_fold_mae']:.3f}, CS(5) {summary['cs'][5]:.3f} -> {workdir / 'summary'}")
  if selected:
    _log(f"the last step's models, pooled: MAE {extra['last_step_test']['mae']:.3f}")
  return summary
