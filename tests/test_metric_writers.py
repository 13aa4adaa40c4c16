"""Metric logs read back as a researcher's tools would: JSONL, TensorBoard event files, progress lines.

The event files are parsed here from the TFRecord framing (length, masked CRC-32C,
data, masked CRC-32C) with tensorboardX's protobuf classes, so neither
TensorFlow nor the tensorboard package is needed to check them.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import struct
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from amr_jax import errors
from amr_jax.training.metric_writers import MetricWriter, ProgressLine, format_duration, read_jsonl


def _crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = _crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_events(directory: pathlib.Path) -> list[event_pb2.Event]:
  files = sorted(directory.glob("events.out.tfevents.*"))
  assert files, f"no event file in {directory}"
  events = []
  for file in files:
    data = file.read_bytes()
    offset = 0
    while offset < len(data):
      header = data[offset:offset + 8]
      (length,) = struct.unpack("<Q", header)
      (length_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
      assert length_crc == _masked_crc(header)
      record = data[offset + 12:offset + 12 + length]
      (record_crc,) = struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])
      assert record_crc == _masked_crc(record)
      events.append(event_pb2.Event.FromString(record))
      offset += 16 + length
  return events


def _scalars(events: list[event_pb2.Event]) -> list[tuple[int, str, float]]:
  return [(e.step, v.tag, v.simple_value) for e in events for v in e.summary.value if v.HasField("simple_value")]


def test_crc32c_known_answer():
  assert _crc32c(b"123456789") == 0xE3069283


def test_jsonl_round_trip_with_non_finite_values(tmp_path):
  before = time.time()
  with MetricWriter(tmp_path, tensorboard=False) as writer:
    writer.write_scalars(np.int64(10), {"loss": np.float32(2.5), "mae": jnp.float32(4.25)}, prefix="train")
    writer.write_scalars(20, {"loss": float("nan"), "grad_norm": float("inf"), "delta": -math.inf}, prefix="train")
  with MetricWriter(tmp_path, tensorboard=False) as writer:  # a resumed run appends
    writer.write_scalars(30, {"mae": 3})
  assert not (tmp_path / "tensorboard").exists()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 3

  def reject(constant):
    raise AssertionError(f"non-strict JSON constant {constant}")

  raw = [json.loads(line, parse_constant=reject) for line in lines]
  assert raw[1]["train/loss"] == "nan" and raw[1]["train/grad_norm"] == "inf" and raw[1]["train/delta"] == "-inf"
  records = read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in records] == [10, 20, 30]
  assert all(before <= r["time"] <= time.time() for r in records)
  assert list(records[0]) == ["step", "time", "train/loss", "train/mae"]
  assert records[0]["train/loss"] == 2.5 and records[0]["train/mae"] == 4.25
  assert math.isnan(records[1]["train/loss"])
  assert records[1]["train/grad_norm"] == math.inf and records[1]["train/delta"] == -math.inf
  assert records[2]["mae"] == 3.0 and isinstance(records[2]["mae"], float)


def test_each_line_is_on_disk_before_close(tmp_path):
  writer = MetricWriter(tmp_path, tensorboard=False)
  writer.write_scalars(1, {"loss": 1.0})
  assert read_jsonl(tmp_path / "metrics.jsonl")[0]["loss"] == 1.0
  writer.close()
  writer.close()  # idempotent
  with pytest.raises(ValueError, match="closed"):
    writer.write_scalars(2, {"loss": 1.0})


def test_reserved_names_are_rejected(tmp_path):
  with MetricWriter(tmp_path, tensorboard=False) as writer:
    with pytest.raises(ValueError, match="step"):
      writer.write_scalars(1, {"step": 1.0})


def test_tensorboard_event_files_hold_the_scalars_and_text(tmp_path):
  with MetricWriter(tmp_path) as writer:
    writer.write_text(0, "config", "batch_size: 64")
    writer.write_scalars(100, {"loss": np.float32(3.5), "learning_rate": 1e-3}, prefix="train")
    writer.write_scalars(200, {"loss": 2.25, "diverged": float("nan")}, prefix="train")
    writer.write_scalars(200, {"mae": 4.5}, prefix="eval")
  events = _read_events(tmp_path / "tensorboard")
  assert events[0].file_version.startswith("brain.Event")
  scalars = _scalars(events)
  assert [(step, tag) for step, tag, _ in scalars] == [
      (100, "train/loss"), (100, "train/learning_rate"), (200, "train/loss"), (200, "train/diverged"),
      (200, "eval/mae")]
  values = [value for _, _, value in scalars]
  np.testing.assert_allclose(values[:3] + values[4:], [3.5, 1e-3, 2.25, 4.5], rtol=1e-7)
  assert math.isnan(values[3])
  texts = [(e.step, v.tag, v.tensor.string_val[0]) for e in events for v in e.summary.value if v.HasField("tensor")]
  assert texts == [(0, "config/text_summary", b"batch_size: 64")]


def _log_steps(workdir: pathlib.Path, steps, **kwargs) -> bytes:
  with MetricWriter(workdir, **kwargs) as writer:
    for step in steps:
      writer.write_scalars(step, {"loss": step / 10}, prefix="train")
  return (workdir / "metrics.jsonl").read_bytes()


def test_resume_step_drops_what_was_logged_after_the_checkpoint(tmp_path):
  logged = _log_steps(tmp_path, [10, 20, 30], tensorboard=False)
  with MetricWriter(tmp_path, tensorboard=False) as writer:
    writer.write_scalars(20, {"mae": 4.5}, prefix="validation")  # logged at the checkpoint's step: kept
  before = (tmp_path / "metrics.jsonl").read_bytes()
  lines = before.splitlines(keepends=True)
  # A run killed after logging step 30 restarts from the checkpoint of step 20 and logs 21..30 again.
  resumed = _log_steps(tmp_path, [30], tensorboard=False, resume_step=20)
  assert resumed == lines[0] + lines[1] + lines[3] + resumed.splitlines(keepends=True)[-1], (
      "metrics.jsonl: resume_step=20 must drop exactly the records past step 20 and keep the rest byte for byte")
  assert [(r["step"], list(r)[-1]) for r in read_jsonl(tmp_path / "metrics.jsonl")] == [
      (10, "train/loss"), (20, "train/loss"), (20, "validation/mae"), (30, "train/loss")]
  assert logged.splitlines()[2] not in resumed
  assert os.listdir(tmp_path) == ["metrics.jsonl"], "the rewrite of metrics.jsonl left its temporary file behind"


def test_resume_step_past_every_record_leaves_the_file_as_it_was(tmp_path):
  logged = _log_steps(tmp_path, [10, 20], tensorboard=False)
  inode = (tmp_path / "metrics.jsonl").stat().st_ino
  with MetricWriter(tmp_path, tensorboard=False, resume_step=20):
    pass
  assert (tmp_path / "metrics.jsonl").read_bytes() == logged
  assert (tmp_path / "metrics.jsonl").stat().st_ino == inode, "metrics.jsonl was rewritten with nothing to drop"
  with MetricWriter(tmp_path, tensorboard=False, resume_step=0):  # trained again from the start
    pass
  assert (tmp_path / "metrics.jsonl").read_bytes() == b""


@pytest.mark.parametrize("resume_step, steps_kept", [(None, [10, 20]), (30, [10, 20]), (10, [10])])
def test_a_last_line_cut_short_by_a_kill_is_dropped(tmp_path, resume_step, steps_kept):
  logged = _log_steps(tmp_path, [10, 20], tensorboard=False)
  with open(tmp_path / "metrics.jsonl", "ab") as f:
    f.write(b'{"step": 30, "time": 1700000000.5, "train/lo')
  _log_steps(tmp_path, [30], tensorboard=False, resume_step=resume_step)
  content = (tmp_path / "metrics.jsonl").read_bytes()
  assert content.startswith(b"".join(logged.splitlines(keepends=True)[:len(steps_kept)]))
  assert b"1700000000.5" not in content, "metrics.jsonl: the cut-short line must be dropped, not kept or merged"
  assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == steps_kept + [30]


def test_a_last_record_that_lost_only_its_newline_is_kept(tmp_path):
  logged = _log_steps(tmp_path, [10, 20], tensorboard=False)
  (tmp_path / "metrics.jsonl").write_bytes(logged[:-1])
  _log_steps(tmp_path, [30], tensorboard=False, resume_step=20)
  assert (tmp_path / "metrics.jsonl").read_bytes().startswith(logged)
  assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [10, 20, 30]


def test_a_line_that_is_not_a_record_stops_a_resume_and_is_named(tmp_path):
  logged = _log_steps(tmp_path, [10, 20], tensorboard=False)
  damaged = logged.replace(b"\n", b"\nnot json\n", 1)
  (tmp_path / "metrics.jsonl").write_bytes(damaged)
  with pytest.raises(errors.WorkdirError, match=r"metrics\.jsonl, line 2: not a metrics record.*Delete or fix"):
    MetricWriter(tmp_path, tensorboard=False, resume_step=10)
  assert (tmp_path / "metrics.jsonl").read_bytes() == damaged


def test_a_failed_rewrite_leaves_metrics_jsonl_whole(tmp_path, monkeypatch):
  logged = _log_steps(tmp_path, [10, 20, 30], tensorboard=False)

  def interrupted(*args):
    raise KeyboardInterrupt  # as a Ctrl-C between writing the new file and putting it in place

  monkeypatch.setattr(os, "replace", interrupted)
  with pytest.raises(KeyboardInterrupt):
    MetricWriter(tmp_path, tensorboard=False, resume_step=10)
  assert (tmp_path / "metrics.jsonl").read_bytes() == logged
  assert os.listdir(tmp_path) == ["metrics.jsonl"], "the interrupted rewrite left its temporary file behind"


def _visible_scalars(events: list[event_pb2.Event]) -> list[tuple[int, str, float]]:
  """The scalars TensorBoard shows: a SessionLog START at step s hides the events before it with steps >= s.

  As tensorboard/backend/event_processing/event_accumulator.py, _CheckForRestartAndMaybePurge.
  """
  visible = []
  for event in events:
    if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
      visible = [scalar for scalar in visible if scalar[0] < event.step]
    visible += _scalars([event])
  return visible


def test_tensorboard_hides_the_steps_after_the_resumed_checkpoint(tmp_path):
  _log_steps(tmp_path, [10, 20, 30])
  _log_steps(tmp_path, [30], resume_step=20)  # within the same second as the first run, as a quick restart
  files = sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert len(files) == 2, f"the restarted writer overwrote the first run's event file: {files}"
  events = _read_events(tmp_path / "tensorboard")
  assert [(step, tag) for step, tag, _ in _scalars(events)] == [(s, "train/loss") for s in (10, 20, 30, 30)]
  starts = [e.step for e in events if e.session_log.status == event_pb2.SessionLog.START]
  assert starts == [21], "the resumed writer must tell TensorBoard to hide the steps after 20"
  assert [(step, tag) for step, tag, _ in _visible_scalars(events)] == [(s, "train/loss") for s in (10, 20, 30)]


def test_format_duration():
  cases = {0: "0s", 45: "45s", 59.4: "59s", 59.6: "1m00s", 725: "12m05s", 3599.4: "59m59s",
           3 * 3600 + 4 * 60 + 10: "3h04m", 2 * 86400 + 3 * 3600 + 59 * 60: "2d03h", 40 * 86400: "40d00h"}
  for seconds, want in cases.items():
    assert format_duration(seconds) == want, seconds
  for bad in (-1.0, math.inf, math.nan):
    with pytest.raises(ValueError, match="seconds"):
      format_duration(bad)


class _FakeClock:

  def __init__(self, *times: float):
    self.times = list(times)

  def __call__(self) -> float:
    return self.times.pop(0)


def test_progress_line_exact_text_speed_and_time_left():
  clock = _FakeClock(1000.0, 1006.0, 1011.0, 1012.0, 1013.0)
  progress = ProgressLine(1500, 15, 64, start_step=100, clock=clock)
  scalars = {"cross_entropy": np.float32(2.9012), "learning_rate": 1e-3, "mean": 1.2, "loss": 3.21037}
  # 20 steps of 64 images in 6 s: 213.33 img/s; 1380 steps left at 20/6 steps/s: 414 s.
  assert progress.format(120, scalars) == (
      "step 120/1500 (epoch 8.0) loss 3.2104 cross_entropy 2.9012 mean 1.2000 | lr 1.0e-03 "
      "| 213.3 img/s | 6m54s left")
  # Measured since the previous call: 30 steps in 5 s = 384 img/s; 1350 steps at 6 steps/s: 225 s.
  assert progress.format(150, {"mae": 4.0}) == "step 150/1500 (epoch 10.0) mae 4.0000 | 384.0 img/s | 3m45s left"
  assert progress.format(150, {}) == "step 150/1500 (epoch 10.0) | ? img/s | ? left"  # no step since the last call
  # 1350 steps of 64 images in the 1 s since the previous call.
  assert progress.format(1500, {"loss": float("nan")}).endswith("(epoch 100.0) loss nan | 86400.0 img/s | 0s left")


def test_progress_line_validates():
  with pytest.raises(ValueError, match="steps_per_epoch"):
    ProgressLine(100, 0, 8)
  with pytest.raises(ValueError, match="start_step"):
    ProgressLine(100, 10, 8, start_step=101)


_FULL_DISK = """
import resource, sys
from amr_jax.training.metric_writers import MetricWriter
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))  # a write past the limit fails: EFBIG
writer = MetricWriter(sys.argv[1])
try:
  for step in range(10_000):
    writer.write_scalars(step, {"loss": 1.0, "mae": 2.0}, prefix="train")
except OSError as error:
  print(error.filename, error.strerror)
  try:
    writer.close()
  except OSError as again:
    print("close:", again.filename)
"""


@pytest.mark.parametrize("limit", [2_000, 200_000])
def test_a_full_disk_is_an_oserror_naming_the_file_and_nothing_is_left_to_fail_at_exit(tmp_path, limit):
  """Both files are written in the caller's thread: the failure comes back to it with the file's name, and once
  closed, no thread or exit handler tries the write again (tensorboardX's SummaryWriter did both, as tracebacks).
  Either file may meet the limit first; close then fails on whichever still holds unwritten bytes."""
  result = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path), str(limit)], capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0 and result.stderr == "", result.stderr
  first, *rest = result.stdout.splitlines()
  events = next((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert first in (f"{tmp_path / 'metrics.jsonl'} File too large", f"{events} File too large"), result.stdout
  assert all(line in (f"close: {tmp_path / 'metrics.jsonl'}", f"close: {events}") for line in rest), result.stdout
