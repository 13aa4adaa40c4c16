"""Model selection on validation data: the kept checkpoint, its resume, the reports, and a test split never read early."""

import json
import shutil

import jax
import numpy as np
import pytest

from amr_jax import config_checks, errors, experiment
from amr_jax.data import training_data
from amr_jax.training import checkpoints, metric_writers, selection, train_state
import training_setup

ROOT = training_setup.ROOT
CLAP2016_DUMMY = ROOT / "datasets" / "clap2016" / "dummy_data"


def _data(fgnet_dirs):
  manual, data_dir = fgnet_dirs
  return {"data.manual_dir": str(manual), "data.data_dir": str(data_dir)}


def _selecting_config(fgnet_dirs, **changes):
  # Subject 3 held out, one of the other three for validation: 8 training images, 2 steps of 4 per epoch.
  settings = {"num_train_steps": 6, "eval_every_epochs": 1, "num_validation_subjects": 1,
              "model_selection": "validation_mae", "max_checkpoints_to_keep": 10, "checkpoint_every_steps": 100,
              **_data(fgnet_dirs), **changes}
  return training_setup.config("fgnet_amr", "3", **settings)


@pytest.fixture(scope="module")
def selecting_run(fgnet_dirs, tmp_path_factory):
  config = _selecting_config(fgnet_dirs)
  workdir = tmp_path_factory.mktemp("selection") / "run"
  result = experiment.train_and_evaluate(config, workdir)
  return config, workdir, result


def _template(config):
  return jax.device_get(train_state.initial_train_state(config, train_state.model(config),
                                                        train_state.optimizer(config)))


def test_every_validation_is_scored_and_the_lowest_is_kept_besides_the_latest(selecting_run):
  config, workdir, _ = selecting_run
  history = json.loads((workdir / selection.FILE_NAME).read_text())["history"]
  logged = {e["step"]: e for e in metric_writers.read_jsonl(workdir / "metrics.jsonl") if "validation/mae" in e}
  assert [e["step"] for e in history] == [2, 4, 6] == sorted(logged)  # each epoch, the last step included
  for entry in history:
    assert entry["score"] == pytest.approx(logged[entry["step"]]["validation/mae"], rel=1e-6)
  best = min(history, key=lambda e: (e["score"], e["step"]))
  kept = checkpoints.Checkpoints(workdir / selection.CHECKPOINT_FOLDER)
  assert kept.all_steps() == [best["step"]]
  regular = checkpoints.Checkpoints(workdir / "checkpoints")
  assert best["step"] in regular.all_steps() and regular.latest_step() == 6
  template = _template(config)
  jax.tree.map(np.testing.assert_array_equal, kept.restore(template).params,
               regular.restore(template, best["step"]).params)


def test_the_reports_give_the_selected_model_and_the_last_steps_test_metrics_beside_it(selecting_run, fgnet_dirs,
                                                                                        tmp_path):
  config, workdir, result = selecting_run
  history = json.loads((workdir / selection.FILE_NAME).read_text())["history"]
  best = min(history, key=lambda e: (e["score"], e["step"]))
  reported = json.loads((workdir / "test" / "metrics.json").read_text())
  assert reported["model_selection"] == "validation_mae" and reported["selected_step"] == best["step"]
  assert reported["selected_validation_mae"] == pytest.approx(best["score"])
  assert reported["last_step"] == 6 and reported["mae"] == pytest.approx(result["mae"])
  validation = json.loads((workdir / "validation" / "metrics.json").read_text())
  assert validation["mae"] == pytest.approx(best["score"], rel=1e-6)  # the validation report is the selected model's
  assert validation["selected_step"] == best["step"] and "last_step_test" not in validation
  # The same run reporting its last step: training is the same, so its test MAE is the last_step_test beside.
  last = experiment.train_and_evaluate(_selecting_config(fgnet_dirs, model_selection="last"), tmp_path / "last")
  assert reported["last_step_test"]["mae"] == pytest.approx(last["mae"], rel=1e-6)
  assert result["last_step_test"]["mae"] == pytest.approx(last["mae"], rel=1e-6)
  # Beside the report, the last step's test predictions: a pool made from the reports' files needs them.
  from amr_jax.evaluation import reports
  last_rows = reports.read_predictions_csv(workdir / "test" / "last_step_predictions.csv")
  assert np.mean(np.abs(last_rows["predicted_age"] - last_rows["age"])) == pytest.approx(last["mae"], abs=5e-5)
  assert not (tmp_path / "last" / "test" / "last_step_predictions.csv").exists()  # a run that does not select


def test_a_resumed_run_keeps_its_selection(selecting_run, tmp_path):
  config, workdir, _ = selecting_run
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  for step in (4, 6):  # killed after step 2: later scores are forgotten and validated again
    shutil.rmtree(copy / "checkpoints" / str(step))
  experiment.train_and_evaluate(config, copy)
  for name in (selection.FILE_NAME, "test/metrics.json"):  # the steps trained again are the same computations
    assert json.loads((copy / name).read_text()) == json.loads((workdir / name).read_text())
  template = _template(config)
  jax.tree.map(np.testing.assert_array_equal,
               checkpoints.Checkpoints(copy / selection.CHECKPOINT_FOLDER).restore(template).params,
               checkpoints.Checkpoints(workdir / selection.CHECKPOINT_FOLDER).restore(template).params)


def test_a_run_killed_between_its_score_and_its_kept_checkpoint_recovers_the_checkpoint(selecting_run, tmp_path):
  config, workdir, _ = selecting_run
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  shutil.rmtree(copy / selection.CHECKPOINT_FOLDER)  # the score was written, the checkpoint not yet
  experiment.evaluate_workdir(config, copy)
  best = json.loads((workdir / "test" / "metrics.json").read_text())["selected_step"]
  assert checkpoints.Checkpoints(copy / selection.CHECKPOINT_FOLDER).all_steps() == [best]
  assert json.loads((copy / "test" / "metrics.json").read_text())["mae"] == pytest.approx(
      json.loads((workdir / "test" / "metrics.json").read_text())["mae"])


@pytest.mark.parametrize("changes, message", [
    ({"model_selection": "best"}, "config.model_selection must be one of last, validation_mae, validation_eps"),
    ({"model_selection": "validation_eps"}, "needs the annotators' spread of CLAP2016; fgnet has none"),
    ({"num_validation_subjects": 0}, "set config.num_validation_subjects"),
    ({"eval_every_epochs": 0}, "set config.eval_every_epochs"),
])
def test_a_selection_the_run_cannot_make_is_refused(changes, message, fgnet_dirs):
  with pytest.raises(errors.ConfigError, match=message):
    config_checks.check(_selecting_config(fgnet_dirs, **changes))


def test_a_pooled_summary_says_how_the_folds_models_were_chosen(fgnet_dirs, tmp_path):
  config = _selecting_config(fgnet_dirs, protocol="kfold", num_folds=2, fold=-1, num_train_steps=2)
  result = experiment.train_and_evaluate(config, tmp_path / "run")
  summary = json.loads((tmp_path / "run" / "summary" / "metrics.json").read_text())
  assert summary["model_selection"] == result["model_selection"] == "validation_mae"
  assert summary["last_step_test"]["count"] == summary["count"] == 16
  assert summary["last_step_test"]["num_folds"] == 2


def _test_split_files(data_dir):
  files = [p for p in data_dir.rglob("*") if p.is_file() and "-test." in p.name]
  assert files, f"no test split files under {data_dir}"
  return files


def test_the_test_split_is_read_only_after_training_has_ended(tmp_path):
  """CLAP2016's test images are made unreadable while the run trains: it trains and selects, then needs them."""
  config = training_setup.config("clap2016_amr", num_train_steps=2, **{
      "data.manual_dir": str(CLAP2016_DUMMY), "data.data_dir": str(tmp_path / "tfds")})
  assert config.model_selection == "validation_eps"
  training_data.prepare(config.data)
  hidden = tmp_path / "hidden"
  hidden.mkdir()
  files = _test_split_files(tmp_path / "tfds")
  for path in files:
    shutil.move(path, hidden / path.name)
  with pytest.raises(errors.DataError, match=r"split 'test' cannot be read .* The trained checkpoints are kept"):
    experiment.train_and_evaluate(config, tmp_path / "run")
  # Training ran to its end and chose its model before anything touched the test split.
  assert checkpoints.latest_step_on_disk(tmp_path / "run" / "checkpoints") == 2
  assert json.loads((tmp_path / "run" / selection.FILE_NAME).read_text())["history"]
  assert not (tmp_path / "run" / "test").exists()
  for path in files:
    shutil.move(hidden / path.name, path)
  result = experiment.train_and_evaluate(config, tmp_path / "run")  # trains nothing: evaluates the selected model
  reported = json.loads((tmp_path / "run" / "test" / "metrics.json").read_text())
  assert reported["model_selection"] == "validation_eps" and reported["selected_step"] in (1, 2)
  assert 0 <= result["eps_error"] <= 1 and 0 <= reported["last_step_test"]["eps_error"] <= 1


def test_model_selection_is_one_object_for_last_and_for_validation_criteria(tmp_path):
  """``selection.for_fold`` gives ``LastStep`` for "last" (keeps nothing, reports the last step's checkpoint) and a
  ``Selection`` for a criterion, which scores validation metrics on its own criterion and keeps the best."""
  store = checkpoints.Checkpoints(tmp_path / "checkpoints")
  last = selection.for_fold("last", tmp_path, 0, store, None)
  assert isinstance(last, selection.LastStep) and not last.selects
  assert last.consider(3, {"mae": 1.0}, {"w": np.zeros(2)}) is False and not (tmp_path / selection.FILE_NAME).exists()
  assert selection.reported_checkpoint("last") == "last"
  state = {"w": np.arange(3.0)}
  chosen = selection.for_fold("validation_mae", tmp_path, 0, store, state)
  assert isinstance(chosen, selection.Selection) and chosen.selects
  assert chosen.consider(2, {"mae": 4.0, "eps_error": 0.1}, state) is True
  assert chosen.consider(4, {"mae": 5.0, "eps_error": 0.0}, {"w": np.ones(3)}) is False  # scored on MAE, not eps
  assert chosen.best == {"step": 2, "score": 4.0}
  np.testing.assert_array_equal(chosen.restore(state)["w"], np.arange(3.0))
  assert selection.reported_checkpoint("validation_eps") == "selected"
