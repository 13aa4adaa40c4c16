"""Folds in processes sharing a device (benchmarks/lopo_processes.py): the group's figures worked out by hand, and a
real worker process meeting its group before its timed steps."""

import pytest

from benchmarks import lopo_processes


def _worker(start, end, steps, compile_s=3.0):
  return {"start": start, "end": end, "step_times": steps, "compile_s": compile_s, "finite": True}


def test_a_group_counts_its_images_over_the_window_from_the_first_start_to_the_last_end():
  # Two processes of 4 steps of 8 images: one from t=10 to 12, the other from 10.5 to 14: 64 images in 4 s.
  group = lopo_processes.combine([_worker(10.0, 12.0, [0.5, 0.5, 0.5, 0.5]),
                                  _worker(10.5, 14.0, [0.8, 0.9, 0.9, 0.9], compile_s=5.0)], batch=8, steps=4)
  assert group["images_per_s"] == 2 * 4 * 8 / 4.0 and group["group_step_s"] == 1.0
  assert group["median_step_s"] == pytest.approx((0.5 + 0.9) / 2) and group["overlap"]
  # 82 folds over 2 processes: 41 folds of 1500 steps each, one step of the group a second, after the longest compile.
  assert group["protocol_s"] == 5.0 + 41 * 1500 * 1.0
  apart = lopo_processes.combine([_worker(0.0, 1.0, [0.25] * 4), _worker(1.5, 2.0, [0.1] * 4)], batch=8, steps=4)
  assert not apart["overlap"] and apart["images_per_s"] == 64 / 2.0
  with pytest.raises(ValueError, match="every worker must report 4 step times"):
    lopo_processes.combine([_worker(0.0, 1.0, [0.25] * 3)], batch=8, steps=4)


def test_a_worker_process_meets_its_group_and_reports_a_row(tmp_path, capsys):
  # One worker (a second would double the test's time on 2 cores; combine() is worked out above for two): it runs
  # as every worker does, in its own process, through the meeting, to its result file and the report.
  out = tmp_path / "processes.md"
  lopo_processes.main(["--processes", "1", "--steps", "3", "--warmup", "0", "--batch", "2", "--out", str(out)])
  text = out.read_text()
  assert text in capsys.readouterr().out
  (row,) = [line for line in text.splitlines() if line.startswith("| 1 |")]
  cells = [cell.strip() for cell in row.strip("|").split("|")]
  images_per_s, group_step_s = float(cells[1]), float(cells[3])
  # 2 images a step: the images/s and the step time are two views of one window, printed to the image and to the
  # millisecond.
  assert group_step_s > 0 and 2 / (group_step_s + 5e-4) - 0.5 <= images_per_s
  assert group_step_s <= 5e-4 or images_per_s <= 2 / (group_step_s - 5e-4) + 0.5
  assert cells[2] == "1.00x" and "not finite" not in text  # against itself; the steps trained


def test_bad_counts_are_refused_naming_the_flag(capsys):
  for flags in (["--processes", "0"], ["--processes", "two"], ["--steps", "0"]):
    with pytest.raises(SystemExit):
      lopo_processes.main(flags)
    assert f"argument {flags[0]}" in capsys.readouterr().err
