"""DLDL-v2 on SCUT-FBP5500 end to end, on the dummy data: the release's folds, the 0.1 score grid, each face's
rater spread as its sigma, and the attractiveness metrics (MAE, RMSE, Pearson's correlation) in the reports."""

import json
import pathlib

import numpy as np
import pytest

import training_setup
from amr_jax import config_checks, errors, experiment
from amr_jax.evaluation import reports
from amr_jax.training import metric_writers, stages

ROOT = pathlib.Path(__file__).resolve().parents[1]
DUMMY = ROOT / "datasets" / "scut_fbp5500" / "dummy_data"
# The dummy release's five cross-validation test files (datasets/scut_fbp5500/make_dummy_data.py).
CV_TEST = {1: {"AF1.jpg", "CM1.jpg"}, 2: {"AF2.jpg", "CF1.jpg"}, 3: {"AF3.jpg", "CM2.jpg"}, 4: {"AM1.jpg", "CF2.jpg"},
           5: {"AM2.jpg", "CM3.jpg"}}
TEST_60_40 = {"AF3.jpg", "AM2.jpg", "CF2.jpg", "CM3.jpg"}


def _config(tmp_path, arg=None, **overrides):
  return training_setup.config("scut_fbp5500_dldlv2", arg, **{
      "data.manual_dir": str(DUMMY), "data.data_dir": str(tmp_path / "tfds"), **overrides})


def test_the_config_is_the_codes_grid_and_protocol():
  config = training_setup.config("scut_fbp5500_dldlv2")
  values = 1 + 0.1 * np.arange(config.num_classes)
  assert (config.num_classes, config.start_age, config.label_step) == (41, 1, 0.1)
  np.testing.assert_allclose(values[[0, -1]], [1.0, 5.0])  # torch.range(1, 5, 0.1): 41 scores
  assert (config.protocol, config.num_folds, config.sigma_field, config.model_selection) == ("kfold", 5, "age_std",
                                                                                             "last")
  assert [stage.name for stage in stages.stages_of(config)] == ["kl", "kl+l1"]


def test_a_fold_trains_on_the_release_split_and_reports_attractiveness_metrics(tmp_path, capsys):
  config = _config(tmp_path, "3")  # tests on cross_validation_4
  result = experiment.train_and_evaluate(config, tmp_path / "run")
  out = capsys.readouterr().out
  assert "in 2 stages of 2, 2" in out
  predictions = reports.read_predictions_csv(tmp_path / "run" / "test" / "predictions.csv")
  assert set(predictions["file_name"]) == CV_TEST[4]
  metrics = json.loads((tmp_path / "run" / "test" / "metrics.json").read_text())
  for name in ("mae", "rmse", "pearson", "eps_error"):
    assert name in metrics and metrics[name] == result[name]
  # Predictions are means over the scores 1.0..5.0; the most probable score is one of them.
  predicted, true = np.asarray(predictions["predicted_age"]), np.asarray(predictions["age"])
  assert np.all((predicted >= 1) & (predicted <= 5))
  mode = np.asarray(predictions["mode_age"])
  np.testing.assert_allclose(np.round((mode - 1) / 0.1) * 0.1 + 1, mode, atol=1e-4)  # 4 decimals in the CSV
  np.testing.assert_allclose(metrics["mae"], np.mean(np.abs(predicted - true)), atol=1e-4)
  np.testing.assert_allclose(metrics["rmse"], np.sqrt(np.mean((predicted - true) ** 2)), atol=2e-4)
  # CS(k) counts the faces within k tenths of a point (the CSV's 4 decimals decide no threshold they lie far from).
  assert metrics["cs_step"] == 0.1 and f"CS(0.5) {metrics['cs'][5]:.3f} over 2 images" in out
  abs_errors = np.abs(predicted - true)
  for k, fraction in enumerate(metrics["cs"]):
    if np.all(np.abs(abs_errors - 0.1 * k) > 1e-3):
      assert fraction == np.mean(abs_errors <= 0.1 * k), k
  logged = metric_writers.read_jsonl(tmp_path / "run" / "metrics.jsonl")
  assert [entry["step"] for entry in logged if "train/loss" in entry] == [1, 2, 3, 4]


def test_the_sixty_forty_split_tests_on_its_test_file(tmp_path):
  experiment.train_and_evaluate(_config(tmp_path, protocol="splits", num_train_steps=1), tmp_path / "run")
  predictions = reports.read_predictions_csv(tmp_path / "run" / "test" / "predictions.csv")
  assert set(predictions["file_name"]) == TEST_60_40


@pytest.mark.parametrize("overrides, message", [
    ({"num_folds": 10}, r"config.num_folds=10: scut_fbp5500's kfold protocol is its release's 5 cross-validation"),
    ({"num_validation_subjects": 2}, r"config.num_validation_subjects=2: scut_fbp5500's splits have no validation"),
    ({"model_selection": "validation_mae", "eval_every_epochs": 1}, r"config.model_selection='validation_mae': "
     r"scut_fbp5500's splits have no validation images"),
    ({"protocol": "lopo"}, r"config.protocol for scut_fbp5500 must be one of kfold, splits"),
    ({"data.crop": "aligned"}, r"config.data.crop for scut_fbp5500 must be one of whole"),
])
def test_configs_the_release_cannot_honour_are_refused_naming_the_field(tmp_path, overrides, message):
  with pytest.raises(errors.ConfigError, match=message):
    config_checks.check(_config(tmp_path, **overrides))


def test_scores_off_the_grid_are_refused_naming_the_image(tmp_path):
  # A grid of 2.0..5.0 leaves the dummy's 1.5 (AM1) and 1.25 (CM1) below its first class.
  config = _config(tmp_path, "0", start_age=2, num_classes=31)
  with pytest.raises(errors.DataError, match=r"scut_fbp5500: 2 image\(s\) have labels outside the 31 classes of "
                     r"labels 2..5 in steps of 0.1 \(config.start_age, config.label_step, config.num_classes\), "
                     r"e.g. AM1.jpg with label 1.5"):
    experiment.train_and_evaluate(config, tmp_path / "run")
