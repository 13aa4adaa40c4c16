"""Slices of folds for array jobs: ``config.folds`` picks folds, tasks share one workdir, evaluation pools them."""

import json

import pytest

from amr_jax import config_checks, errors, experiment, workdir_layout
from amr_jax.data import folds as folds_lib
import training_setup


def _config(fgnet_dirs, folds="", **overrides):
  manual, data_dir = fgnet_dirs
  return training_setup.config("fgnet_ce", None, folds=folds, num_train_steps=1, **overrides,
                               **{"data.manual_dir": str(manual), "data.data_dir": str(data_dir)})


@pytest.mark.parametrize("text, folds", [("", []), ("1-3,5", [1, 2, 3, 5]), (" 7-7, 2 ,1-2", [1, 2, 7])])
def test_folds_are_numbers_and_ranges(text, folds):
  assert folds_lib.parse_folds(text) == folds


@pytest.mark.parametrize("text", ["a", "3-1", "1-2-3", "-1", "1,,x"])
def test_a_malformed_slice_is_refused_naming_the_field(text):
  with pytest.raises(errors.ConfigError, match=r"config.folds: .* is not a fold number or a range such as 1-8"):
    folds_lib.parse_folds(text)


def test_a_slice_and_a_single_fold_are_not_both_given():
  config = training_setup.config("fgnet_ce", "3", folds="1-2")
  with pytest.raises(errors.ConfigError, match="config.folds='1-2' selects folds .* and config.fold=3 one fold"):
    config_checks.check_fields(config, num_devices=1)


def test_folds_the_protocol_lacks_are_refused(fgnet_dirs, tmp_path):
  with pytest.raises(errors.ConfigError, match=r"config.folds='2-6' names folds .* does not have: 5, 6 \(valid: 1..4\)"):
    experiment.train_and_evaluate(_config(fgnet_dirs, "2-6"), tmp_path / "run")


def test_slices_on_one_workdir_pool_into_the_summary_of_one_run_over_all_folds(fgnet_dirs, tmp_path, capsys):
  whole = experiment.train_and_evaluate(_config(fgnet_dirs), tmp_path / "whole")
  assert whole["complete"] and whole["missing_folds"] == []
  shared = tmp_path / "shared"
  capsys.readouterr()
  experiment.train_and_evaluate(_config(fgnet_dirs, "1-2"), shared)  # array task 0
  out = capsys.readouterr().out
  assert f"trained folds 1-2; once every slice has finished, pool them all with: python run_eval.py " \
         f"--workdir={shared}" in out
  assert not (shared / "summary").exists()
  assert json.loads((shared / "config.json").read_text())["folds"] == ""  # the workdir is the whole protocol's

  early = experiment.evaluate_workdir(workdir_layout.load(shared), shared)  # pooled before task 1 has run
  out = capsys.readouterr().out
  assert "pooled over 2 of 4 folds, INCOMPLETE (missing: subject 3 (not started), subject 4 (not started))" in out
  stored = json.loads((shared / "summary" / "metrics.json").read_text())
  assert not stored["complete"] and stored["missing_folds"] == ["subject 3 (not started)", "subject 4 (not started)"]
  assert early["count"] == 8

  experiment.train_and_evaluate(_config(fgnet_dirs, "3-4"), shared)  # array task 1
  pooled = experiment.evaluate_workdir(workdir_layout.load(shared), shared)
  assert pooled["complete"] and pooled["num_folds"] == 4
  # RMSE and Pearson's correlation beside MAE, over the pooled images as MAE is.
  from amr_jax import metrics
  from amr_jax.evaluation import reports
  rows = reports.read_predictions_csv(shared / "summary" / "predictions.csv")
  again = metrics.compute_age_metrics(rows["predicted_age"], rows["age"])
  stored = json.loads((shared / "summary" / "metrics.json").read_text())
  assert stored["rmse"] == pytest.approx(again["rmse"], abs=1e-4) and stored["rmse"] >= stored["mae"]
  # The CSV's predictions are rounded by at most 5e-5; to first order that moves r by at most 2 * 5e-5 / their std.
  assert stored["pearson"] == pytest.approx(again["pearson"], abs=2 * 5e-5 / rows["predicted_age"].std() + 1e-6)
  for name in ("predictions.csv", "per_fold.csv"):  # the same computations: the same text
    assert (shared / "summary" / name).read_text() == (tmp_path / "whole" / "summary" / name).read_text()

  some = workdir_layout.load(shared)
  some.folds = "2"
  experiment.evaluate_workdir(some, shared)
  out = capsys.readouterr().out
  assert "pooled over 1 of 4 folds, INCOMPLETE (missing: subject 1 (not in config.folds)" in out


def test_a_slice_packed_on_another_machine_pools_with_the_folds_trained_here(fgnet_dirs, tmp_path, capsys):
  """Folds 1-2 trained here, 3-4 "elsewhere" (another workdir) and brought back as a pack of their reports.

  A pool holding a packed fold reads every fold's predictions from its report (four decimals): its MAE is that of
  the reports' rows, and each packed fold's MAE within a unit of the fourth decimal of the one computed where the
  fold was trained.
  """
  import subprocess
  import sys
  import tarfile

  import numpy as np

  from amr_jax import workdir_pack
  from amr_jax.evaluation import reports

  here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
  experiment.train_and_evaluate(_config(fgnet_dirs, "1-2"), here)
  experiment.train_and_evaluate(_config(fgnet_dirs, "3-4"), elsewhere)
  experiment.evaluate_workdir(workdir_layout.load(elsewhere), elsewhere)  # its pool of 2 of 4 folds, made there
  archive = tmp_path / "out" / "slice.tar.gz"
  result = subprocess.run([sys.executable, "run_eval.py", f"--workdir={elsewhere}", f"--pack={archive}"],
                          cwd=training_setup.ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"packed 2 folds (subject_003, subject_004) -> {archive}" in result.stdout
  with tarfile.open(archive) as tar:
    names = set(tar.getnames())
  assert "config.json" in names and "folds/subject_003/packed.json" in names
  assert not any("checkpoints" in name for name in names) and archive.stat().st_size < 100_000
  with pytest.raises(errors.ConfigError, match="slice.tar.gz exists; give a new file"):
    workdir_pack.pack(elsewhere, archive)

  kept = (here / "config.json").read_bytes()
  subprocess.run(["tar", "-xz", "--skip-old-files", "-f", str(archive), "-C", str(here)], check=True)  # as documented
  assert (here / "config.json").read_bytes() == kept
  capsys.readouterr()
  pooled = experiment.evaluate_workdir(workdir_layout.load(here), here)
  out = capsys.readouterr().out
  assert "2 folds packed on another machine (subject 3, subject 4)" in out
  assert pooled["complete"] and pooled["num_folds"] == 4 and pooled["count"] == 16
  rows = [reports.read_predictions_csv(here / "folds" / f"subject_{fold:03d}" / "test" / "predictions.csv")
          for fold in (1, 2, 3, 4)]
  errors_in_reports = np.concatenate([np.abs(r["predicted_age"] - r["age"]) for r in rows])
  # The metrics sum in float32: 16 terms, each rounded by at most 2^-24 of the largest sum.
  assert pooled["mae"] == pytest.approx(float(errors_in_reports.mean()), rel=16 * 2**-24)
  # The packed folds' own MAEs, from their reports, against those computed there in memory.
  per_fold = reports.read_predictions_csv(here / "summary" / "per_fold.csv")
  there = reports.read_predictions_csv(elsewhere / "summary" / "per_fold.csv")
  np.testing.assert_allclose(per_fold["mae"][2:], there["mae"], atol=5e-5 + 5e-5)  # both printed to 4 decimals

  stored = json.loads((here / "folds" / "subject_004" / "config.json").read_text())
  stored["loss"] = "amr"
  (here / "folds" / "subject_004" / "config.json").write_text(json.dumps(stored))
  with pytest.raises(errors.WorkdirError, match=r"subject_004: a packed fold of another run: config.loss: 'amr' in "
                     r"the workdir, 'cross_entropy' now"):
    experiment.evaluate_workdir(workdir_layout.load(here), here)
