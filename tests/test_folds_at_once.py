"""Several folds in one step (``step_functions.folds_train_step``): each fold gets the update it gets when trained alone."""

import functools

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amr_jax.data import input_pipeline
from amr_jax.evaluation import evaluate
from amr_jax.training import step_functions, train_state
import training_setup

NUM_STEPS = 3


def _config():
  # As the pmap identity test (tests/test_train.py): cross-entropy and SGD in float64, augmentation on.
  return training_setup.config("fgnet_ce", "3", batch_size=8, optimizer="sgd", dtype="float64")


def _fold_data(num_folds):
  rng = np.random.default_rng(1)
  return [{"image": rng.integers(0, 256, (8 + 4 * f, 64, 64, 3), dtype=np.uint8),
           "age": rng.integers(0, 70, 8 + 4 * f).astype(np.float64)} for f in range(num_folds)]


def _step_kwargs(config):
  return dict(loss_fn=train_state.loss_fn(config), augmentation=train_state.augmentation(config), seed=config.seed,
              global_batch=config.batch_size)


def _learning_rate(fold, step):
  return 1e-3 * (fold + 1) / (step + 1)  # each fold its own schedule


def _alone(config, state, arrays, fold, num_steps, devices):
  step = jax.pmap(functools.partial(step_functions.train_step, **_step_kwargs(config)), axis_name="batch", devices=devices)
  replicated = evaluate.replicate(state, devices=devices)
  batches = input_pipeline.train_batches(arrays, global_batch=config.batch_size, seed=0, num_devices=len(devices))
  for i in range(num_steps):
    lr = flax.jax_utils.replicate(jnp.float64(_learning_rate(fold, i)), devices=devices)
    replicated, _ = step(replicated, next(batches), lr)
  return jax.device_get(evaluate.unreplicate(replicated))


# On one device; the whole driver of folds at once on 1 and 4 devices is tests/test_parallel_folds.py.
@pytest.mark.parametrize("num_devices", [1])
def test_folds_at_once_equal_each_fold_alone_and_a_finished_fold_stays_as_it_is(num_devices):
  devices = jax.devices()[:num_devices]
  with jax.enable_x64(True):
    config = _config()
    state = jax.device_get(train_state.initial_train_state(config, train_state.model(config),
                                                            train_state.optimizer(config)))
    folds = _fold_data(2)
    steps_of = [NUM_STEPS, NUM_STEPS - 1]  # fold 1 finishes a step early
    step = jax.pmap(functools.partial(step_functions.folds_train_step, **_step_kwargs(config)), axis_name="batch",
                    devices=devices)
    stacked = evaluate.replicate(jax.tree.map(lambda x: np.stack([x] * len(folds)), state), devices=devices)
    batches = [input_pipeline.train_batches(arrays, global_batch=config.batch_size, seed=0, num_devices=num_devices)
               for arrays in folds]
    for i in range(NUM_STEPS):
      batch = jax.tree.map(lambda *xs: np.stack(xs, axis=1), *[next(b) for b in batches])  # [devices, folds, ...]
      lrs = np.array([_learning_rate(f, i) for f in range(len(folds))])
      active = np.array([i < steps_of[f] for f in range(len(folds))])
      stacked, metrics = step(stacked, batch, flax.jax_utils.replicate(lrs, devices=devices),
                              flax.jax_utils.replicate(active, devices=devices))
      if i == steps_of[1] - 1:
        fold_1_when_done = jax.device_get(jax.tree.map(lambda x: x[1], evaluate.unreplicate(stacked)))
    together = jax.device_get(evaluate.unreplicate(stacked))
    assert evaluate.unreplicate(metrics)["loss"].shape == (len(folds),)
    for f, arrays in enumerate(folds):
      alone = _alone(config, state, arrays, f, steps_of[f], devices)
      mine = jax.tree.map(lambda x: x[f], together)
      assert int(mine.step) == steps_of[f]
      if f == 1:  # finished: kept bit for bit while the others trained on
        jax.tree.map(np.testing.assert_array_equal, mine, fold_1_when_done)
      training_setup.assert_same_training_result(mine, alone, state)



@pytest.mark.parametrize("fold_convolution", ["grouped", "patches"])
def test_patches_turn_the_folds_convolutions_into_batched_matrix_products(fold_convolution):
  """What XLA is given for two folds of tiny_age_net (no grouped layer of its own): grouped convolutions, or none."""
  config = training_setup.config("fgnet_ce", "3", batch_size=4)
  model = train_state.model(config, axis_name=None)  # one device, no pmap: BatchNorm averages over no axis
  state = jax.device_get(train_state.initial_train_state(config, model, train_state.optimizer(config)))
  stacked = jax.tree.map(lambda x: np.stack([x, x]), state)
  batches = {"image": np.zeros((2, 4, 64, 64, 3), np.uint8), "age": np.zeros((2, 4), np.float32),
             "position": np.tile(np.arange(4, dtype=np.int32), (2, 1))}
  step = functools.partial(step_functions.folds_train_step, fold_convolution=fold_convolution, axis_name=None,
                           **_step_kwargs(config))
  jaxpr = str(jax.make_jaxpr(step)(stacked, batches, np.full(2, 1e-3, np.float32), np.ones(2, bool)))
  if fold_convolution == "grouped":
    assert "feature_group_count=2" in jaxpr
  else:
    assert "conv_general_dilated" not in jaxpr and "dot_general" in jaxpr
  with pytest.raises(ValueError, match="fold_convolution must be one of"):
    step_functions.folds_train_step(stacked, batches, np.full(2, 1e-3), np.ones(2, bool), fold_convolution="x")


def test_runs_use_the_patches_where_they_were_measured_faster():
  assert step_functions.fold_convolution_for("cpu", "float64") == "patches"
  assert step_functions.fold_convolution_for("cpu", "float32") == "grouped"
  assert step_functions.fold_convolution_for("gpu", "float64") == "grouped"
