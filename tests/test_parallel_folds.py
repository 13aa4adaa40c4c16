"""Folds trained at once (``config.parallel_folds``, ``config.folds_over_devices``) end as each fold trained alone.

Every run here is a whole LOPO run of a synthetic FG-NET whose subjects have 1, 2, 3 and 4 images: with batches
of 4, folds 1 and 2 have 2 steps per epoch and folds 3 and 4 one, so over 2 epochs folds 3 and 4 finish two steps
before the others, and the learning rate drops (milestone epoch 1) at step 3 for folds 1-2 and at step 2 for 3-4.
Identities between arrangements are checked in float64 (see training_setup.IDENTITY_TOLERANCE); a resume in the
same arrangement runs the same program and must give the same bits.
"""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from amr_jax import errors, experiment, workdir_layout
from amr_jax.evaluation import reports
from amr_jax.training import checkpoints, fold_layout, interruption, train_state
import training_setup

IMAGES_PER_SUBJECT = [1, 2, 3, 4]
FOLDS = [1, 2, 3, 4]
TOTAL_STEPS = {1: 4, 2: 4, 3: 2, 4: 2}
RUN = {"dtype": "float64", "optimizer": "sgd", "num_train_steps": -1, "num_epochs": 2, "milestone_epochs": (1,),
       "checkpoint_every_steps": 100, "max_checkpoints_to_keep": 10}


@pytest.fixture(scope="module")
def uneven_fgnet(tmp_path_factory):
  from amr_jax.data import tfds_builders

  manual = training_setup.make_synthetic_fgnet(tmp_path_factory.mktemp("uneven_manual"),
                                               images_per_subject=IMAGES_PER_SUBJECT)
  data_dir = tmp_path_factory.mktemp("uneven_tfds")
  tfds_builders.build("fgnet", manual_dir=manual, data_dir=data_dir)
  return {"data.manual_dir": str(manual), "data.data_dir": str(data_dir)}


def _config(data, **changes):
  return training_setup.config("fgnet_ce", None, **RUN, **data, **changes)


def _train(config, workdir):
  with jax.enable_x64(True):
    return experiment.train_and_evaluate(config, workdir)


def _fold_dir(workdir, fold):
  return workdir / "folds" / f"subject_{fold:03d}"


def _final_state(config, workdir, fold):
  with jax.enable_x64(True):
    template = jax.device_get(train_state.initial_train_state(config, train_state.model(config),
                                                               train_state.optimizer(config)))
    store = checkpoints.Checkpoints(_fold_dir(workdir, fold) / "checkpoints")
    assert store.latest_step() == TOTAL_STEPS[fold]
    return store.restore(template), template


def _predictions(workdir, fold):
  return reports.read_predictions_csv(_fold_dir(workdir, fold) / "test" / "predictions.csv")


@pytest.fixture(scope="module")
def one_by_one(uneven_fgnet, tmp_path_factory):
  """The reference: every fold trained alone, one after another, data parallel on this process's 4 devices."""
  config = _config(uneven_fgnet)
  workdir = tmp_path_factory.mktemp("one_by_one") / "run"
  summary = _train(config, workdir)
  return config, workdir, summary


@pytest.fixture(scope="module")
def four_at_once(uneven_fgnet, tmp_path_factory):
  config = _config(uneven_fgnet, parallel_folds=4)
  workdir = tmp_path_factory.mktemp("four_at_once") / "run"
  summary = _train(config, workdir)
  return config, workdir, summary


def assert_each_fold_as_alone(workdir, reference, folds=FOLDS):
  """Each fold's final state and test predictions in ``workdir`` are those of the one-by-one run, to rounding."""
  config, reference_dir, _ = reference
  for fold in folds:
    state, start = _final_state(config, workdir, fold)
    alone, _ = _final_state(config, reference_dir, fold)
    assert int(state.step) == int(alone.step) == TOTAL_STEPS[fold]
    training_setup.assert_same_training_result(state, alone, start)
    mine, theirs = _predictions(workdir, fold), _predictions(reference_dir, fold)
    assert list(mine["file_name"]) == list(theirs["file_name"])
    # predictions.csv holds 4 decimals: equal values may print one unit of the last decimal apart.
    np.testing.assert_allclose(mine["predicted_age"], theirs["predicted_age"], rtol=0, atol=1.5e-4)


def test_four_folds_at_once_data_parallel_equal_each_fold_alone_with_its_own_length_and_schedule(four_at_once,
                                                                                                 one_by_one):
  assert_each_fold_as_alone(four_at_once[1], one_by_one)
  lrs = {fold: [r["train/learning_rate"] for r in _metrics(four_at_once[1], fold)] for fold in FOLDS}
  assert [len(lrs[fold]) for fold in FOLDS] == [4, 4, 2, 2]
  # Record j is step j + 1, taken at the learning rate of step j: the drop is at each fold's first step of epoch 1.
  assert lrs[1][2] == pytest.approx(1e-4, rel=1e-6) and lrs[1][1] == pytest.approx(1e-3, rel=1e-6)
  assert lrs[4][1] == pytest.approx(1e-4, rel=1e-6) and lrs[4][0] == pytest.approx(1e-3, rel=1e-6)


def _metrics(workdir, fold):
  from amr_jax.training import metric_writers

  return [r for r in metric_writers.read_jsonl(_fold_dir(workdir, fold) / "metrics.jsonl") if "train/loss" in r]


def test_the_pooled_summary_is_the_one_by_one_summary(four_at_once, one_by_one):
  _, workdir, summary = four_at_once
  _, reference_dir, reference_summary = one_by_one
  assert summary["num_folds"] == 4 and summary["complete"]
  for key in ("mae", "mean_fold_mae"):
    assert summary[key] == pytest.approx(reference_summary[key], abs=1e-9)
  mine = reports.read_predictions_csv(workdir / "summary" / "per_fold.csv")
  theirs = reports.read_predictions_csv(reference_dir / "summary" / "per_fold.csv")
  assert list(mine["fold"]) == list(theirs["fold"]) == [f"subject {f}" for f in FOLDS]
  np.testing.assert_allclose(mine["mae"], theirs["mae"], rtol=0, atol=1.5e-4)


def _run_train(devices, workdir, data, **changes):
  overrides = {**RUN, **data, **changes}
  env = {**os.environ, "JAX_ENABLE_X64": "1",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} --xla_cpu_multi_thread_eigen=false"}
  command = [sys.executable, "run_train.py"] + training_setup.command_line("fgnet_ce", None, workdir, **overrides)
  result = subprocess.run(command, cwd=training_setup.ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result.stdout


def test_run_train_on_one_device_with_groups_of_three_and_one_equals_each_fold_alone(uneven_fgnet, one_by_one,
                                                                                    tmp_path):
  out = _run_train(1, tmp_path / "run", uneven_fgnet, parallel_folds=3)
  assert "training subject 1, subject 2, subject 3 at once (data parallel over 1 device(s))" in out
  assert "subject 4: 6 training" in out and "training subject 4 at once" in out
  assert_each_fold_as_alone(tmp_path / "run", one_by_one)


def test_folds_over_devices_put_each_slot_on_its_device_and_read_it_back():
  """Four slots on two devices, two each: slot j lives on device j // 2, and comes back as it went."""
  devices = jax.devices("cpu")[:2]  # the host's, also where the default backend has one device
  layout = fold_layout.FoldLayout(True, devices=devices)
  assert layout.num_slots(3) == 4 and layout.num_slots(4) == 4 and layout.num_slots(5) == 6
  trees = [{"w": np.full((3,), j, np.float32), "step": np.int32(10 + j)} for j in range(4)]
  stacked = layout.states(trees)
  assert stacked["w"].shape == (2, 2, 3)
  for j in range(4):
    slot = layout.fold(stacked, j)
    assert slot["w"].devices() == {devices[j // 2]}
    np.testing.assert_array_equal(slot["w"], trees[j]["w"])
    assert int(slot["step"]) == 10 + j
  np.testing.assert_array_equal(layout.values(stacked["step"]), [10, 11, 12, 13])
  batches = [next(layout.batch_indices(8 + j, global_batch=4, seed=0, start_step=0)) for j in range(4)]
  laid_out = layout.batches(batches)
  assert laid_out["index"].shape == (2, 2, 4)
  np.testing.assert_array_equal(laid_out["index"][1, 0], batches[2]["index"])
  np.testing.assert_array_equal(laid_out["position"][0, 1], np.arange(4))


def test_a_group_stopped_mid_way_and_resumed_ends_with_the_same_bits(four_at_once, one_by_one, tmp_path, monkeypatch):
  """Stopped (as by Ctrl-C) after step 3: folds 3 and 4 finished at step 2, folds 1 and 2 are saved at step 3."""
  config, reference_dir, _ = four_at_once
  calls = []
  monkeypatch.setattr(interruption, "requested", lambda: calls.append(1) or len(calls) >= 3)
  with pytest.raises(errors.Interrupted, match=r"subject 1 after step 3, subject 2 after step 3 stopped, each with "
                     r"its checkpoint saved in its folder"):
    _train(config, tmp_path / "run")
  for fold in FOLDS:
    assert checkpoints.latest_step_on_disk(_fold_dir(tmp_path / "run", fold) / "checkpoints") == min(
        3, TOTAL_STEPS[fold])
  copy = tmp_path / "copy"
  shutil.copytree(tmp_path / "run", copy)
  monkeypatch.setattr(interruption, "requested", lambda: False)
  _train(config, tmp_path / "run")
  for fold in FOLDS:
    resumed, _ = _final_state(config, tmp_path / "run", fold)
    uninterrupted, _ = _final_state(config, reference_dir, fold)
    jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)
    np.testing.assert_array_equal(_predictions(tmp_path / "run", fold)["predicted_age"],
                                  _predictions(reference_dir, fold)["predicted_age"])
  # The same stopped run continued in another arrangement: folds 1-3 over the 4 devices, one each, the fourth
  # device idle (nothing crosses devices), ends as the one-by-one run, to rounding.
  other = config.copy_and_resolve_references()
  other.update(parallel_folds=8, folds_over_devices=True, folds="1-3")
  _train(other, copy)
  assert workdir_layout.read(copy)["parallel_folds"] == 8
  assert_each_fold_as_alone(copy, one_by_one, folds=[1, 2, 3])  # fold 4 finished before the stop


@pytest.mark.parametrize("changes, message", [
    ({"parallel_folds": 0}, "config.parallel_folds must be a positive integer"),
    ({"parallel_folds": 6, "folds_over_devices": True}, "gives each of the 4 devices its own folds: "
                                                        "config.parallel_folds=6 must be a multiple of 4"),
])
def test_arrangements_that_cannot_run_are_refused_naming_the_field(changes, message):
  from amr_jax import config_checks

  config = training_setup.config("fgnet_ce", None, **changes)
  with pytest.raises(errors.ConfigError, match=message):
    config_checks.check_fields(config, num_devices=4)


def test_evaluation_ignores_how_folds_were_spread_over_devices():
  from amr_jax import config_checks

  config = training_setup.config("fgnet_ce", "3", parallel_folds=6, folds_over_devices=True)
  config_checks.check_fields(config, num_devices=4, training=False)  # trained elsewhere, on 6 or 3 or 2 devices


def test_a_fold_folder_of_a_run_of_folds_at_once_evaluates_alone(four_at_once, capsys):
  from amr_jax import experiment

  _, workdir, _ = four_at_once
  folder = _fold_dir(workdir, 2)
  stored = workdir_layout.load(folder)
  assert stored.fold == 2 and stored.parallel_folds == 4
  before = _predictions(workdir, 2)["predicted_age"]
  with jax.enable_x64(True):
    experiment.evaluate_workdir(stored, folder)
  assert "subject 2: evaluating the checkpoint of step 4" in capsys.readouterr().out
  np.testing.assert_array_equal(_predictions(workdir, 2)["predicted_age"], before)


def test_folds_over_devices_runs_in_one_process_only():
  from amr_jax import config_checks

  config = training_setup.config("fgnet_ce", None, parallel_folds=4, folds_over_devices=True)
  config_checks.check_fields(config, num_devices=4)
  with pytest.raises(errors.ConfigError, match=r"runs in one process: across hosts, give each its own slice"):
    config_checks.check_fields(config, num_devices=8, num_processes=2)


def test_folds_at_once_in_two_stages_end_as_each_fold_alone(uneven_fgnet, tmp_path):
  """Fold 3 reaches the second stage two steps before fold 2; each still ends as it does alone."""
  stages = ({"name": "ce", "num_epochs": 2},
            {"name": "kl+l1", "loss": "dldl_v2", "loss_kwargs": {"sigma": 2.0, "lambda_l1": 1.0}, "num_epochs": 1})
  folds = [2, 3]
  totals = {2: 6, 3: 3}  # 2 + 1 epochs of 2 steps (fold 2) or of 1 step (fold 3)
  runs = {}
  for name, parallel in (("alone", 1), ("at_once", 2)):
    # SGD with momentum, whose buffer a stage starts afresh. (Not Adam: it divides rounding noise in a gradient that
    # is zero in exact arithmetic by that noise's size, so arrangements would differ by more than rounding.)
    config = _config(uneven_fgnet, stages=stages, parallel_folds=parallel, folds="2-3")
    _train(config, tmp_path / name)
    runs[name] = config
  with jax.enable_x64(True):
    config = runs["alone"]
    template = jax.device_get(train_state.initial_train_state(config, train_state.model(config),
                                                               train_state.optimizer(config)))
    for fold in folds:
      states = [checkpoints.Checkpoints(_fold_dir(tmp_path / name, fold) / "checkpoints").restore(template)
                for name in runs]
      assert [int(s.step) for s in states] == [totals[fold]] * 2
      training_setup.assert_same_training_result(states[1], states[0], template)
  for fold in folds:
    logged = _metrics(tmp_path / "at_once", fold)
    assert ["train/l1" in r for r in logged] == [False] * (totals[fold] * 2 // 3) + [True] * (totals[fold] // 3)
