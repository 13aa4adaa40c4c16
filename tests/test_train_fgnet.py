"""End to end on the real FG-NET (../shared): build, train a few hundred steps, evaluate, re-evaluate."""

import numpy as np
import pytest

from amr_jax import experiment
from amr_jax.data import fgnet, tfds_builders
from amr_jax.evaluation import reports
from amr_jax.training import metric_writers
import training_setup


@pytest.fixture(scope="module")
def fgnet_data_dir(shared_dir, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  tfds_builders.build("fgnet", manual_dir=shared_dir / "data" / "fgnet", data_dir=data_dir)
  return shared_dir / "data" / "fgnet", data_dir


def test_training_on_real_fgnet_lowers_the_loss_and_writes_the_reports(fgnet_data_dir, tmp_path):
  manual, data_dir = fgnet_data_dir
  # The zero head start, with which the figures below were measured. A small network from scratch moves by years
  # between nearby steps (with the age-prior start, fold 0 gave MAE 10.2 after 100 steps here, and 6.1 after 125 in
  # benchmarks/head_bias.py --backbone=finetune at the same learning rate), so which start is better is that
  # benchmark's question, over folds and seeds, not this test's.
  config = training_setup.config(
      "fgnet_mv", None, protocol="kfold", fold=0, num_folds=5, batch_size=32, eval_batch_size=64,
      num_train_steps=100, log_every_steps=10, checkpoint_every_steps=50, head_bias="zeros",
      **{"data.manual_dir": str(manual), "data.data_dir": str(data_dir), "data.crop": "aligned"})
  workdir = tmp_path / "run"
  result = experiment.train_and_evaluate(config, workdir)

  logged = metric_writers.read_jsonl(workdir / "metrics.jsonl")
  losses = [entry["train/loss"] for entry in logged]
  assert len(losses) == 10
  # Measured here: 0.58 after 80 steps, 0.41 after 150.
  assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses

  predictions = reports.read_predictions_csv(workdir / "test" / "predictions.csv")
  assert 150 < len(predictions["file_name"]) < 250  # a fifth of the 1002 images
  assert result["count"] == len(predictions["file_name"])
  np.testing.assert_allclose(result["mae"], np.mean(np.abs(predictions["predicted_age"] - predictions["age"])),
                             atol=1e-3)
  # Better than always answering the mean training age, a model that learned nothing about faces would not be
  # (measured here: 7.4 against 9.6 after 80 steps, 6.5 after 150).
  test_subjects = {int(name[:3]) for name in predictions["file_name"]}
  train_ages = [age for subject, age in (fgnet.parse_image_name(path.name)
                                         for path in (manual / "FGNET" / "images").iterdir())
                if subject not in test_subjects]
  assert result["mae"] < np.mean(np.abs(np.mean(train_ages) - predictions["age"]))
  for png in ("cumulative_score.png", "predicted_vs_true.png", "error_by_age_group.png"):
    assert (workdir / "test" / png).stat().st_size > 10_000

  again = experiment.evaluate_workdir(config, workdir)
  assert again["mae"] == pytest.approx(result["mae"], abs=1e-4)
