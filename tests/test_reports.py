"""Evaluation reports: the predictions CSV reads back, age-group errors are exact, plots are real PNGs."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from amr_jax.evaluation import reports

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_predictions_csv_round_trip_with_mixed_types(tmp_path):
  path = tmp_path / "out" / "predictions.csv"
  columns = {
      "image": ["a.jpg", 'b, "quoted".jpg', "été.png"],
      "source": [b"fgnet", b"clap", "caf\u00e9".encode()],
      "id": ["007", "010", "123"],  # leading zeros: stays text
      "true_age": np.array([23.5, 40.0, 7.0], np.float32),
      "predicted_age": [24.123456, 38.0, 6.99996],
      "fold": np.array([0, 3, -1], np.int64),
      "is_test": [True, False, True],
  }
  reports.write_predictions_csv(path, columns)
  lines = path.read_text(encoding="utf-8").splitlines()
  assert lines[0] == "image,source,id,true_age,predicted_age,fold,is_test"
  assert lines[1] == "a.jpg,fgnet,007,23.5000,24.1235,0,1"
  result = reports.read_predictions_csv(path)
  assert list(result) == list(columns)
  np.testing.assert_array_equal(result["image"], columns["image"])
  np.testing.assert_array_equal(result["source"], ["fgnet", "clap", "café"])
  np.testing.assert_array_equal(result["id"], ["007", "010", "123"])
  assert result["true_age"].dtype == np.float64 and result["predicted_age"].dtype == np.float64
  np.testing.assert_array_equal(result["true_age"], [23.5, 40.0, 7.0])
  np.testing.assert_array_equal(result["predicted_age"], [24.1235, 38.0, 7.0])
  assert result["fold"].dtype == np.int64
  np.testing.assert_array_equal(result["fold"], [0, 3, -1])
  np.testing.assert_array_equal(result["is_test"], [1, 0, 1])


def test_predictions_csv_bad_shapes_name_the_columns(tmp_path):
  with pytest.raises(ValueError, match=r"same length.*'true_age': 3, 'predicted_age': 2"):
    reports.write_predictions_csv(tmp_path / "p.csv", {"true_age": [1, 2, 3], "predicted_age": [1.0, 2.0]})
  with pytest.raises(ValueError, match=r"1-D, non-empty.*\{\}"):
    reports.write_predictions_csv(tmp_path / "p.csv", {})
  with pytest.raises(ValueError, match=r"'true_age': 0"):
    reports.write_predictions_csv(tmp_path / "p.csv", {"true_age": []})
  with pytest.raises(ValueError, match=r"'true_age': 'shape \(2, 1\)'"):
    reports.write_predictions_csv(tmp_path / "p.csv", {"true_age": [[1], [2]]})
  assert not (tmp_path / "p.csv").exists()
  (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3\n")
  with pytest.raises(ValueError, match="2 cells"):
    reports.read_predictions_csv(tmp_path / "ragged.csv")


def test_error_by_age_group_hand_computed():
  true = [3, 9.5, 10, 25, 27, 61]
  predicted = [5, 9.5, 14, 20, 27, 60]  # errors 2, 0, 4, 5, 0, 1
  assert reports.error_by_age_group(true, predicted) == [
      ("0-9", 2, 1.0), ("10-19", 1, 4.0), ("20-29", 2, 2.5), ("60-69", 1, 1.0)]
  assert reports.error_by_age_group(np.array(true), np.array(predicted), group_width=20) == [
      ("0-19", 3, 2.0), ("20-39", 2, 2.5), ("60-79", 1, 1.0)]


def _png(path) -> np.ndarray:
  assert path.read_bytes()[:8] == PNG_SIGNATURE
  with Image.open(path) as image:
    assert image.format == "PNG"
    assert image.size == (768, 576)  # 6.4 x 4.8 inches at 120 dpi
    return np.asarray(image.convert("RGB"))


def test_plots_write_pngs_that_depend_on_the_data(tmp_path):
  rng = np.random.default_rng(0)
  true = rng.uniform(0, 70, 200)
  close, far = true + rng.normal(0, 2, 200), true + rng.normal(0, 10, 200)
  pictures = {}
  for name, predicted in (("close", close), ("far", far)):
    reports.plot_cumulative_score(tmp_path / f"cs_{name}.png", {name: np.mean(
        np.abs(predicted - true)[:, None] <= np.arange(11), axis=0)}, title="FG-NET")
    reports.plot_predicted_vs_true(tmp_path / f"scatter_{name}.png", true, predicted, title="FG-NET")
    reports.plot_error_by_age_group(tmp_path / f"groups_{name}.png", true, predicted, title="FG-NET")
    for kind in ("cs", "scatter", "groups"):
      pictures[kind, name] = _png(tmp_path / f"{kind}_{name}.png")
  for kind in ("cs", "scatter", "groups"):
    assert not np.array_equal(pictures[kind, "close"], pictures[kind, "far"]), kind
  reports.plot_cumulative_score(tmp_path / "two.png", {"AMR": [0.1, 0.5, 0.9], "mean-variance": [0.05, 0.4, 1.0]})
  _png(tmp_path / "two.png")


def test_plots_use_no_pyplot():
  code = ("import sys; from amr_jax.evaluation import reports; "
          "reports.plot_predicted_vs_true(sys.argv[1], [10, 20], [12, 18]); "
          "assert 'matplotlib.pyplot' not in sys.modules")
  subprocess.run([sys.executable, "-c", code, "/dev/null"], check=True)


@pytest.mark.parametrize("call, name", [
    (lambda p: reports.plot_predicted_vs_true(p, [10, 20, 30], [10, 20]), "true_ages and predicted_ages"),
    (lambda p: reports.plot_predicted_vs_true(p, [], []), "true_ages"),
    (lambda p: reports.plot_predicted_vs_true(p, [10, 20], [10, float("nan")]), "predicted_ages"),
    (lambda p: reports.plot_error_by_age_group(p, [10, float("inf")], [10, 20]), "true_ages"),
    (lambda p: reports.plot_error_by_age_group(p, [10, 20], [10, 20], group_width=0), "group_width"),
    (lambda p: reports.error_by_age_group([-1, 20], [10, 20]), "true_ages"),
    (lambda p: reports.plot_cumulative_score(p, {}), "curves"),
    (lambda p: reports.plot_cumulative_score(p, {"AMR": [10, 50, 85]}), r"curves\['AMR'\]"),
    (lambda p: reports.plot_cumulative_score(p, {"AMR": []}), r"curves\['AMR'\]"),
])
def test_bad_inputs_name_the_argument(tmp_path, call, name):
  with pytest.raises(ValueError, match=name):
    call(tmp_path / "plot.png")
  assert not (tmp_path / "plot.png").exists()


def test_a_label_scale_names_thresholds_groups_and_axes_in_its_unit(tmp_path, monkeypatch):
  scores = reports.LabelScale("score", "points", 0.1)
  assert (reports.AGES.cs_name(5), scores.cs_name(5), scores.cs_name(3)) == ("CS(5)", "CS(0.5)", "CS(0.3)")
  assert (reports.AGES.group_width, scores.group_width) == (10, 1.0)
  true, predicted = [1.5, 1.9, 2.0, 4.25, 5.0], [1.5, 2.4, 2.5, 4.0, 4.5]  # errors 0, 0.5, 0.5, 0.25, 0.5
  assert reports.error_by_age_group(true, predicted, scores.group_width) == [
      ("[1, 2)", 2, 0.25), ("[2, 3)", 1, 0.5), ("[4, 5)", 1, 0.25), ("[5, 6)", 1, 0.5)]
  assert reports.error_by_age_group(true, predicted, 2.5)[0][0] == "[0, 2.5)"
  axes = {}
  monkeypatch.setattr(reports, "_save", lambda fig, ax, path, title: axes.__setitem__(pathlib.Path(path).stem, ax))
  reports.plot_cumulative_score(tmp_path / "cs.png", {"x": [0.2, 0.6, 1.0]}, scale=scores)
  reports.plot_predicted_vs_true(tmp_path / "scatter.png", true, predicted, scale=scores)
  reports.plot_error_by_age_group(tmp_path / "groups.png", true, predicted, scale=scores)
  assert axes["cs"].get_xlabel() == "error level theta (points)"
  np.testing.assert_allclose(axes["cs"].get_lines()[0].get_xdata(), [0, 0.1, 0.2])
  assert (axes["scatter"].get_xlabel(), axes["scatter"].get_ylabel()) == ("true score (points)",
                                                                          "predicted score (points)")
  assert axes["scatter"].get_xlim() == (0.0, 5.5)  # the largest score + CS(5)'s half point
  assert (axes["groups"].get_xlabel(), axes["groups"].get_ylabel()) == ("true score group (points)", "MAE (points)")
  assert [tick.get_text() for tick in axes["groups"].get_xticklabels()] == ["[1, 2)", "[2, 3)", "[4, 5)", "[5, 6)"]
  reports.plot_predicted_vs_true(tmp_path / "scatter.png", [10, 20], [12, 18])
  assert axes["scatter"].get_xlabel() == "true age (years)" and axes["scatter"].get_xlim() == (0.0, 25.0)


@pytest.mark.parametrize("fields, name", [(("", "points", 0.1), "name"), (("score", None, 0.1), "unit"),
                                          (("score", "points", 0), "cs_step"), (("a", "b", float("nan")), "cs_step")])
def test_a_bad_label_scale_is_refused_naming_the_field(fields, name):
  with pytest.raises(ValueError, match=f"LabelScale.{name} must be"):
    reports.LabelScale(*fields)


def test_reports_on_a_finer_scale_count_cs_in_its_step_and_name_the_per_fold_column(tmp_path):
  from amr_jax.evaluation import evaluate  # pylint: disable=import-outside-toplevel

  scores = reports.LabelScale("score", "points", 0.1)
  folds = [(name, {"age": np.array(true), "predicted_age": np.array(predicted)})
           for name, true, predicted in (("fold_0", [3.0, 2.0], [3.5, 2.0]), ("fold_1", [4.0], [3.05]))]
  summary = evaluate.write_pooled_report(tmp_path, folds, scale=scores)
  assert summary["cs_step"] == 0.1 and summary["cs"][5] == 2 / 3  # errors 0.5, 0 and 0.95: two within half a point
  per_fold = reports.read_predictions_csv(tmp_path / "per_fold.csv")
  np.testing.assert_array_equal(per_fold["cs0.5"], [1.0, 0.0])
  assert evaluate.metrics_of(folds[0][1])["cs_step"] == 1.0 and evaluate.metrics_of(folds[1][1])["cs"][1] == 1.0
