"""The 82-fold cost model's arithmetic, on a protocol small enough to work out by hand."""

import pytest

from benchmarks import lopo_cost


def test_the_ways_of_running_ten_folds_worked_out_by_hand():
  # 10 folds of 100 steps of 4 images; 4 at once: groups of 4, 4 and 2; a step of 4 folds 0.5 s; compiling 10 s.
  assert lopo_cost.sequence_seconds(10, 100, 4, alone_images_per_s=8.0, compile_s=10.0) == 10 + 4000 / 8
  apart = lopo_cost.at_once_seconds(10, 100, 4, 0.5, 0.25, 10.0, pad_last_group=False)
  assert apart == 2 * 10 + 2 * 100 * 0.5 + 100 * 0.25  # 145 s: two compilations, the last group's cheaper steps
  padded = lopo_cost.at_once_seconds(10, 100, 4, 0.5, 0.25, 10.0, pad_last_group=True)
  assert padded == 10 + 3 * 100 * 0.5  # 160 s: one compilation, the padded folds' work wasted
  # Folds that fill every group compile once either way.
  assert lopo_cost.at_once_seconds(8, 100, 4, 0.5, 0.25, 10.0, pad_last_group=False) == 10 + 2 * 100 * 0.5


def test_the_report_names_each_way_and_what_the_goal_needs(capsys):
  assert lopo_cost.main(["--folds=10", "--steps=100", "--batch=4", "--group_size=4", "--at_once_step_s=0.5",
                         "--alone_images_per_s=8", "--compile_s=10"]) == 0
  out = capsys.readouterr().out
  assert "| in sequence, one compiled step reused | 1 | 8.5 min | 8 | 0.8x |" in out  # 510 s, 4000 images
  assert "| 4 at once, the last 2 compiled apart, t_2 = t_4 x 2/4 | 2 | 2.4 min | 28 | 0.2x |" in out  # 145 s
  assert "| 4 at once, the last group padded, one compilation | 1 | 2.7 min | 25 | 0.3x |" in out  # 160 s
  assert "The goal needs 7 images/s" in out  # 4000 images in 600 - 10 s
  assert "Padding the last group pays when t_4 - t_2 < 100 ms" in out  # 10 s / 100 steps


def test_a_step_time_of_zero_is_refused_naming_the_flag(capsys):
  with pytest.raises(SystemExit):
    lopo_cost.main(["--at_once_step_s=0"])
  assert "--at_once_step_s must be > 0" in capsys.readouterr().err
