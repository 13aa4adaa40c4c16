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
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from amr_jax import (augment, checkpoints, config_checks, errors, evaluate, fold_layout, from_config, head_init,
                     interruption, metric_writers, training_data, workdir_config)
from amr_jax.evaluate import replicate

class NonFiniteLossError(errors.RunError, FloatingPointError):
  """The training loss became NaN or infinite."""


# --------------------------------------------------------------------------
# The step.

def train_step(state: from_config.TrainState, batch: dict[str, jax.Array], learning_rate: jax.Array, *,
               loss_fn: Callable, augmentation: augment.Augmentation, seed: int, global_batch: int,
               axis_name: str | None = "batch"):
  """One optimizer step on one device's part of the global batch; call under ``pmap(axis_name="batch")``.

  Args:
    state: the replicated training state.
    batch: ``image`` (uint8), ``age`` and ``position`` (each example's place in the global batch).
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
    terms = loss_fn(logits, batch["age"])
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
    data: ``image`` and ``age`` of every training example of the run, ``[examples, ...]``.
    batches: per fold, ``index`` (into ``data``) and ``position``, ``[folds, per_device_batch]``.

  Returns:
    As :func:`folds_train_step`.
  """
  index = batches["index"]
  gathered = {"image": data["image"][index], "age": data["age"][index], "position": batches["position"]}
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
                    config.test_time_flip, config.augmentation.to_dict(), layout.axis_name,
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
  """``(steps_per_epoch, num_train_steps)`` for a training set of this size."""
  steps_per_epoch = num_train_examples // config.batch_size
  if steps_per_epoch == 0:
    raise errors.ConfigError(f"config.batch_size={config.batch_size} is larger than the training set "
                     f"({num_train_examples} examples).")
  total = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
  return steps_per_epoch, total


@dataclasses.dataclass
class FoldRun:
  """A fold being trained: its folder, plan, checkpoints, log, and the step it (re)starts from."""

  fold: training_data.Fold
  workdir: pathlib.Path
  steps_per_epoch: int
  total_steps: int
  start_step: int
  state: Any  # the host state of start_step (None once on the devices)
  schedule: Callable[[int], float]
  store: checkpoints.Checkpoints
  batches: Iterator[dict]
  progress: metric_writers.ProgressLine
  writer: metric_writers.MetricWriter | None
  last_saved: int | None
  interval: dict[str, list[float]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))

  def remaining(self, i: int) -> bool:
    """Whether the group's ``i``-th step is a step of this fold."""
    return self.start_step + i < self.total_steps


def open_fold(config, workdir: pathlib.Path, fold: training_data.Fold, initial_state: from_config.TrainState,
              layout: fold_layout.FoldLayout) -> FoldRun:
  """A fold ready to train from ``workdir``'s last checkpoint (or from ``initial_state``)."""
  workdir.mkdir(parents=True, exist_ok=True)
  steps_per_epoch, total_steps = num_steps(config, fold.num_train)
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
  _log(f"{fold.name}: {fold.num_train} training, {len(fold.validation['age'])} validation, "
       f"{len(fold.test['age'])} test images; {total_steps} steps of {config.batch_size} "
       f"({steps_per_epoch} per epoch) {where}")
  return FoldRun(
      fold=fold, workdir=workdir, steps_per_epoch=steps_per_epoch, total_steps=total_steps, start_step=start_step,
      state=state, schedule=from_config.schedule(config, steps_per_epoch), store=store,
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
  if step % config.log_every_steps == 0 or step == run.total_steps:
    means = {name: float(np.mean(v)) for name, v in run.interval.items()}
    run.interval.clear()
    _log(f"{run.fold.name}: {run.progress.format(step, means)}")
    if run.writer:
      run.writer.write_scalars(step, means, prefix="train")


def _validation_due(config, run: FoldRun, step: int) -> bool:
  every = config.eval_every_epochs * run.steps_per_epoch
  return bool(every) and step % every == 0 and step < run.total_steps and len(run.fold.validation["age"]) > 0


def _validate(config, run: FoldRun, steps: Steps, replicated, step: int) -> None:
  metrics = evaluate.metrics_of(evaluate.predict(steps.eval, replicated, run.fold.validation, config.eval_batch_size))
  _log(f"{run.fold.name}: validation at step {step}: MAE {metrics['mae']:.3f} over {metrics['count']} images")
  if run.writer:
    run.writer.write_scalars(step, {"mae": metrics["mae"], "cs5": metrics["cs"][5]}, prefix="validation")


def _interrupted(stopped: list[tuple[FoldRun, int]]) -> errors.Interrupted:
  if len(stopped) == 1:
    ((run, done),) = stopped
    return errors.Interrupted(f"{run.fold.name} stopped after step {done}, its checkpoint saved in "
                              f"{run.store.directory}; the same command continues from there.")
  return errors.Interrupted(
      f"{', '.join(f'{run.fold.name} after step {done}' for run, done in stopped)} stopped, each with its "
      "checkpoint saved in its folder; the same command continues from there.")


def train_folds(config, runs: list[FoldRun], steps: Steps, layout: fold_layout.FoldLayout, data: Any,
                initial_state: from_config.TrainState) -> list[dict[str, np.ndarray] | None]:
  """Trains ``runs`` at once, each to its own last step, and evaluates each; returns their test predictions.

  ``data`` is the training images and ages on the devices (``layout.everywhere``), which every fold's training
  examples index. A fold that reaches its last step is saved and then kept as it is while the others go on.
  """
  slots: list[FoldRun | None] = list(runs) + [None] * (layout.num_slots(len(runs)) - len(runs))
  longest = max(run.total_steps - run.start_step for run in runs)
  try:
    if longest == 0:  # every fold finished: evaluate its checkpoint
      return [_evaluate_splits(config, run.workdir, run.fold, steps, replicate(run.state)) for run in runs]
    idle_state = jax.device_get(initial_state)
    states = layout.states([run.state if run else idle_state for run in slots])
    for run in runs:
      run.state = None
    # What an idle slot (a finished fold, a padding slot) is fed: any valid indices, its result is discarded.
    idle_batch = jax.tree.map(np.zeros_like, next(layout.batch_indices(
        config.batch_size, global_batch=config.batch_size, seed=0, start_step=0)))
    pending: collections.deque = collections.deque()

    def check(i: int, metrics) -> None:
      values = layout.values(metrics)
      for slot, run in enumerate(slots):
        if run is not None and run.remaining(i):
          _record(config, run, run.start_step + i + 1, {name: float(value[slot]) for name, value in values.items()})

    def save(slot: int, step: int) -> None:
      while pending:
        check(*pending.popleft())
      run = slots[slot]
      run.store.save(step, layout.fold(states, slot))
      run.last_saved = step

    for i in range(longest):
      active = [run is not None and run.remaining(i) for run in slots]
      batches = [next(run.batches) if on else idle_batch for run, on in zip(slots, active)]
      learning_rates = [np.float32(run.schedule(run.start_step + i) if on else 0.0) for run, on in zip(slots, active)]
      states, metrics = steps.train(states, data, layout.batches(batches), layout.per_slot(learning_rates),
                                    layout.per_slot(active))
      pending.append((i, metrics))
      while len(pending) > 1:  # one step behind, so the host never waits for the device
        check(*pending.popleft())
      stopping = interruption.requested() and any(run.remaining(i + 1) for run in runs)
      stopped = []
      for slot, run in enumerate(slots):
        if not active[slot]:
          continue
        done = run.start_step + i + 1
        if done % config.checkpoint_every_steps == 0 or done == run.total_steps or stopping:
          save(slot, done)
        if stopping and done < run.total_steps:
          stopped.append((run, done))
      if stopped:
        raise _interrupted(stopped)
      for slot, run in enumerate(slots):
        if active[slot] and _validation_due(config, run, run.start_step + i + 1):
          _validate(config, run, steps, replicate(layout.fold(states, slot)), run.start_step + i + 1)
    while pending:
      check(*pending.popleft())
    for slot, run in enumerate(runs):
      if run.store.latest_step() != run.total_steps:
        save(slot, run.total_steps)
  finally:
    for run in runs:
      if run.writer:
        run.writer.close()
  return [_evaluate_splits(config, run.workdir, run.fold, steps, replicate(layout.fold(states, slot)))
          for slot, run in enumerate(runs)]


def _evaluate_fold(config, workdir, fold, steps, initial_state):
  store = checkpoints.Checkpoints(workdir / "checkpoints", max_to_keep=config.max_checkpoints_to_keep)
  if store.latest_step() is None:
    raise errors.WorkdirError(f"{fold.name}: no checkpoint in {store.directory}; train first "
                            f"(python run_train.py --config=... --workdir={workdir}).")
  state = store.restore(jax.device_get(initial_state))
  _, total_steps = num_steps(config, fold.num_train)
  note = "" if int(state.step) == total_steps else f" (the run is unfinished: {total_steps} steps planned)"
  _log(f"{fold.name}: evaluating the checkpoint of step {int(state.step)}{note}")
  return _evaluate_splits(config, workdir, fold, steps, replicate(state))


def _evaluate_splits(config, workdir, fold, steps, replicated):
  outputs = {}
  for split, arrays in (("validation", fold.validation), ("test", fold.test)):
    if len(arrays["age"]):
      outputs[split] = evaluate.predict(steps.eval, replicated, arrays, config.eval_batch_size)
      if _is_writer():
        summary = evaluate.write_report(workdir / split, outputs[split], title=f"{config.name}, {fold.name}, {split}")
        _log(f"{fold.name}: {split} MAE {summary['mae']:.3f}, CS(5) {summary['cs'][5]:.3f} over {summary['count']} "
             f"images -> {workdir / split}")
  return outputs.get("test")


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
  config_checks.check(config, jax.device_count(), jax.process_count(), training=training)


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
  loss_fn = from_config.loss_fn(config)
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
  steps = compile_steps(config, loss_fn, augmentation, layout)
  if _is_writer() and not evaluate_only:  # the config has passed every check
    for change in workdir_config.write(workdir, config, stored):
      _log(f"{workdir / workdir_config.FILE_NAME}: {change}")

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
      results.append((splits, _evaluate_fold(config, fold_dir, splits, steps, initial_state)))
  else:
    data = None  # the training images on the devices, put there once for every group
    parallel = config.parallel_folds
    for first in range(0, len(fold_ids), parallel):
      group = fold_ids[first:first + parallel]
      runs = []
      for fold in group:
        fold_dir = fold_workdir(config, workdir, fold, all_folds=all_folds)
        if fold_dir != workdir and _is_writer():
          # A fold's folder knows its fold too: run_eval.py --workdir=<it> evaluates that fold alone.
          fold_config = config.copy_and_resolve_references()
          fold_config.fold = fold
          fold_dir.mkdir(parents=True, exist_ok=True)
          workdir_config.write(fold_dir, fold_config, workdir_config.read(fold_dir))
        runs.append(open_fold(config, fold_dir, training_data.fold_splits(config, dataset, fold), initial_state,
                              layout))
      if parallel > 1:
        _log(f"training {', '.join(run.fold.name for run in runs)} at once ({layout.describe()})")
      if data is None and any(run.start_step < run.total_steps for run in runs):
        source = runs[0].fold.train_source  # every fold's training examples index the same arrays
        data = layout.everywhere({"image": source["image"], "age": source["age"]})
      predictions = train_folds(config, runs, steps, layout, data, initial_state)
      results += [(run.fold, p) for run, p in zip(runs, predictions)]
  if not results:
    raise errors.WorkdirError(f"{workdir}: no fold is finished ({'; '.join(missing)}); train first.")
  if len(results) == 1 and not missing:
    return evaluate.metrics_of(results[0][1])
  by_fold = [(splits.name, predictions) for splits, predictions in results]
  if config.get("folds", "") and not evaluate_only:
    # One slice of an array job: the pool is written once every slice is done, by run_eval.py.
    _log(f"trained folds {config.folds}; once every slice has finished, pool them all with: "
         f"python run_eval.py --workdir={workdir}")
    return evaluate.pooled_metrics(by_fold)
  if _is_writer():
    summary = evaluate.write_pooled_report(workdir / "summary", by_fold, missing=missing,
                                           title=f"{config.name}, {len(results)} folds pooled")
  else:
    summary = evaluate.pooled_metrics(by_fold)
  listed = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
  extent = f"{len(results)} folds" if not missing else (
      f"{len(results)} of {len(results) + len(missing)} folds, INCOMPLETE (missing: {listed})")
  _log(f"pooled over {extent}: MAE {summary['mae']:.3f} over {summary['count']} images, mean of "
       f"per-fold MAEs {summary['mean_fold_mae']:.3f}, CS(5) {summary['cs'][5]:.3f} -> {workdir / 'summary'}")
  return summary
