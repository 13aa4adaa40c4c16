"""amr_jax.atomic_files: a file is replaced whole or left as it was, and the reports written through it."""

import os
import stat

import numpy as np
import pytest

from amr_jax import atomic_files
from amr_jax.evaluation import evaluate, reports


def test_a_new_file_is_written_and_the_temporary_ends_in_the_same_suffix(tmp_path):
  with atomic_files.replacing(tmp_path / "plot.png") as temporary:
    assert temporary.parent == tmp_path and temporary.suffix == ".png" and temporary.name.startswith(".plot.")
    temporary.write_bytes(b"png bytes")
    assert not (tmp_path / "plot.png").exists()  # nothing at the target until the block ends
  assert (tmp_path / "plot.png").read_bytes() == b"png bytes"
  assert os.listdir(tmp_path) == ["plot.png"]


def test_a_failure_in_the_block_leaves_the_earlier_file_whole_and_no_temporary(tmp_path):
  target = tmp_path / "metrics.json"
  target.write_text("earlier\n")
  with pytest.raises(OSError, match="No space left") as error:
    with atomic_files.replacing(target) as temporary:
      temporary.write_text("half of the new")
      raise OSError(28, "No space left on device")  # as Pillow raises it: no file name
  assert error.value.filename == str(target) and error.value.errno == 28  # the file meant, for the message
  with pytest.raises(KeyboardInterrupt):
    with atomic_files.replacing(target):
      raise KeyboardInterrupt
  assert target.read_text() == "earlier\n" and os.listdir(tmp_path) == ["metrics.json"]


def test_the_file_keeps_the_mode_it_replaces_or_gets_the_umasks(tmp_path):
  atomic_files.write_text(tmp_path / "new.txt", "x")
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600
  (tmp_path / "kept.txt").write_text("x")
  os.chmod(tmp_path / "kept.txt", 0o640)
  atomic_files.write_text(tmp_path / "kept.txt", "y")
  assert stat.S_IMODE((tmp_path / "kept.txt").stat().st_mode) == 0o640


def test_text_is_written_as_utf8_bytes_without_newline_translation(tmp_path):
  atomic_files.write_text(tmp_path / "a.csv", "äge,1\r\n")
  assert (tmp_path / "a.csv").read_bytes() == "äge,1\r\n".encode()


def test_a_report_that_fails_midway_leaves_the_earlier_report_whole(tmp_path, monkeypatch):
  """A full disk at the last plot: the files already replaced are whole new ones, the rest (metrics.json, written
  last, so that a new one means a whole new report) are the earlier ones, and no temporary file is left."""
  rng = np.random.default_rng(0)
  predictions = {"age": rng.integers(0, 70, 20).astype(np.float64), "predicted_age": rng.uniform(0, 70, 20)}
  evaluate.write_report(tmp_path, predictions, title="first")
  earlier = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  assert sorted(earlier) == ["cumulative_score.png", "error_by_age_group.png", "metrics.json",
                             "predicted_vs_true.png", "predictions.csv"]

  def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(reports, "plot_error_by_age_group", full_disk)
  with pytest.raises(OSError, match="No space left"):
    evaluate.write_report(tmp_path, {**predictions, "predicted_age": predictions["predicted_age"] + 1}, title="second")
  for name in ("metrics.json", "error_by_age_group.png"):
    assert (tmp_path / name).read_bytes() == earlier[name], name
  assert reports.read_predictions_csv(tmp_path / "predictions.csv")["predicted_age"][0] == pytest.approx(
      predictions["predicted_age"][0] + 1, abs=1e-4)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(earlier)
