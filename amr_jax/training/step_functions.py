"""The training step: pure functions of ``(state, batch)``, and their compiled forms shared by every fold of a run.

``train_step`` and :func:`amr_jax.evaluation.evaluate.eval_step` are pure;
:func:`compile_steps` applies ``jax.pmap(..., axis_name="batch")`` to them once,
so every fold of a LOPO run reuses the same compiled steps. Gradients, metrics
and BatchNorm statistics are averaged over all devices of all processes, so a
step on N devices computes the same update as one device with the whole global
batch (tested for 1, 2 and 4 devices, and for two processes).

Everything random is a function of ``(seed, step)``: the batch order
(:func:`amr_jax.data.input_pipeline.train_batches`), each example's
augmentation (keyed by its place in the global batch) and dropout. A
checkpoint therefore needs only the state.

The learning rate is computed on the host from the step and fed to the step
(``optax.inject_hyperparams``), so the optimizer, and with it the compiled
step, does not depend on a fold's number of steps per epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Callable

import jax
import jax.numpy as jnp

from amr_jax.data import augment
from amr_jax.evaluation import evaluate
from amr_jax.models import layers
from amr_jax.training import fold_layout, train_state

FOLD_CONVOLUTIONS = ("grouped", "patches")
# Where the patches were measured faster for folds at once (python -m benchmarks.lopo_speed, tiny_age_net, 16 images
# a fold): on a CPU in float64, 6.5x for 4 folds (benchmarks/results/lopo_speed_cpu_float64.md). In float32 there
# the grouped convolution was faster, by 1.3x for 8 folds (lopo_speed_cpu.md); on a GPU neither is measured yet.
PATCHES_MEASURED_FASTER = {("cpu", "float64")}


def fold_convolution_for(platform: str, dtype: str) -> str:
  """The fold convolution measured faster on ``platform`` (``jax.Device.platform``) for ``config.dtype``."""
  return "patches" if (platform, dtype) in PATCHES_MEASURED_FASTER else "grouped"


def train_step(state: train_state.TrainState, batch: dict[str, jax.Array], learning_rate: jax.Array, *,
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


def folds_train_step(states: train_state.TrainState, batches: dict[str, jax.Array], learning_rates: jax.Array,
                     active: jax.Array, *, fold_convolution: str = "grouped", **step_kwargs):
  """:func:`train_step` for several folds at once; call under ``pmap(axis_name="batch")``.

  Every argument has a leading fold axis: ``states`` are the folds' states stacked, ``batches`` each fold's part
  of its own global batch, ``learning_rates`` each fold's rate. Each fold's update, BatchNorm statistics, keys and
  averages over devices are those it gets trained alone. A fold whose ``active`` is False keeps its state as it
  is (a fold that has finished while longer ones go on).

  ``fold_convolution``: how two or more folds' convolutions are computed, each fold with its own weights:
  "grouped" (what ``vmap`` makes of a convolution, one grouped convolution) or "patches" (a batched matrix
  product of image patches, :func:`amr_jax.models.layers.patch_convolutions`). The same sums in another order.

  Returns:
    ``(new_states, metrics)``, both with the fold axis first.
  """
  if fold_convolution not in FOLD_CONVOLUTIONS:
    raise ValueError(f"fold_convolution must be one of {FOLD_CONVOLUTIONS}; got {fold_convolution!r}.")
  with layers.patch_convolutions(fold_convolution == "patches" and active.shape[0] > 1):
    new_states, metrics = jax.vmap(functools.partial(train_step, **step_kwargs))(states, batches, learning_rates)

  def keep_finished(new, old):
    return jnp.where(active.reshape(active.shape + (1,) * (new.ndim - 1)), new, old)

  return jax.tree.map(keep_finished, new_states, states), metrics


def gathered_train_step(states: train_state.TrainState, data: dict[str, jax.Array], batches: dict[str, jax.Array],
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
  key = json.dumps([config.loss, config.loss_kwargs.to_dict(), config.start_age, config.label_step, config.seed,
                    config.batch_size, config.dtype, config.test_time_flip, config.augmentation.to_dict(),
                    config.sigma_field, layout.axis_name, [str(d) for d in layout.pmap_devices or []]],
                   sort_keys=True, default=str)
  if key not in _STEPS:
    _STEPS[key] = _compile_steps(config, loss_fn, augmentation, layout)
  return _STEPS[key]


def _compile_steps(config, loss_fn, augmentation, layout) -> Steps:
  # Folds over devices: each device holds its folds' whole batches, so the step averages over no axis.
  step_axis = None if layout.over_devices else "batch"
  platform = (layout.pmap_devices[0] if layout.pmap_devices else jax.local_devices()[0]).platform
  train = jax.pmap(functools.partial(gathered_train_step, loss_fn=loss_fn, augmentation=augmentation,
                                     seed=config.seed, global_batch=config.batch_size, axis_name=step_axis,
                                     fold_convolution=fold_convolution_for(platform, config.dtype)),
                   axis_name=layout.axis_name, devices=layout.pmap_devices, donate_argnums=(0,))
  eval_ = jax.pmap(functools.partial(evaluate.eval_step, start_age=config.start_age, label_step=config.label_step,
                                     test_time_flip=config.test_time_flip), axis_name="batch")
  return Steps(train, eval_)


