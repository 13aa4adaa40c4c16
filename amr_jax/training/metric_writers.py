"""Training logs a researcher can read during and after a run, with no TensorFlow.

:class:`MetricWriter` appends each step's scalars to ``<workdir>/metrics.jsonl``
(one JSON object a line, flushed at once, so a killed run keeps what it wrote;
:func:`read_jsonl` reads it back) and to TensorBoard event files in
``<workdir>/tensorboard/`` (tensorboardX). It writes wherever it is built: the
caller decides which process writes (usually ``jax.process_index() == 0``).
A run resumed from the checkpoint of step N passes ``resume_step=N``: what the
interrupted run logged after step N is dropped, since it is logged again.
:class:`ProgressLine` formats one line per logging step with images per second
and time left::

  writer.write_scalars(step, {"loss": loss, "learning_rate": lr}, prefix="train")
  print(progress.format(step, {"loss": loss, "learning_rate": lr}))
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax

from amr_jax import atomic_files, errors, workdir_layout

# Non-finite values are stored as these strings so the file stays strict JSON
# (``NaN``/``Infinity`` are not JSON, and ``null`` would lose which one it was).
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_RESERVED_KEYS = ("step", "time")


def _json_value(value: float) -> float | str:
  if math.isfinite(value):
    return value
  return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


class MetricWriter:
  """Writes scalars to ``metrics.jsonl`` and (optionally) TensorBoard under ``workdir``.

  Non-finite values (a diverged loss) are written to TensorBoard as they are
  (it shows NaN and infinities) and to the JSON file as the strings ``"nan"``,
  ``"inf"`` and ``"-inf"``, which :func:`read_jsonl` turns back into floats.

  Args:
    workdir: the run's folder (created if missing).
    tensorboard: also write TensorBoard event files.
    resume_step: the step a resumed run restarts from: records of ``metrics.jsonl``
      past it are removed, and TensorBoard hides the events past it. ``None`` keeps all.
      Either way a last line cut short by a killed run is removed.

  Raises:
    errors.WorkdirError: ``resume_step`` is given and ``metrics.jsonl`` holds a
      line that is not a record with a step (the message names the line).
  """

  def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True, resume_step: int | None = None):
    self.workdir = pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    _truncate_jsonl(self.workdir / workdir_layout.METRICS_LOG, resume_step)
    self._jsonl = open(self.workdir / workdir_layout.METRICS_LOG, "a", encoding="utf-8")
    self._events = None
    if tensorboard:
      from tensorboardX.proto import event_pb2  # imported here: only writers need it
      from tensorboardX.record_writer import RecordWriter

      # Written here, in the caller's thread: tensorboardX's SummaryWriter writes from a daemon thread and flushes
      # again at exit, so a full disk there ends in tracebacks nobody can catch. The name is SummaryWriter's
      # (seconds, host) with a nanosecond suffix: a run restarted within the same second would otherwise truncate
      # the file of the one before, and the suffix keeps the files in the order TensorBoard reads them.
      folder = self.workdir / workdir_layout.TENSORBOARD_FOLDER
      folder.mkdir(exist_ok=True)
      now = time.time_ns()
      self._events_path = folder / f"events.out.tfevents.{now // 10**9}.{socket.gethostname()}.{now:020d}"
      with atomic_files.naming_failures(self._events_path):
        self._events = RecordWriter(str(self._events_path))
        self._write_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        if resume_step is not None:  # TensorBoard hides the events of earlier files at steps >= this one
          self._write_event(event_pb2.Event(wall_time=time.time(), step=int(resume_step) + 1,
                                            session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        self._events.flush()

  def _write_event(self, event) -> None:
    self._events.write(event.SerializeToString())

  def _write_summary(self, step: int, summary) -> None:
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel

    self._write_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, Any], prefix: str = "") -> None:
    """Appends ``{"step", "time", "<prefix>/<name>": value, ...}`` to the JSON file and to TensorBoard.

    Args:
      step: training step (numpy and JAX integers are accepted).
      scalars: name -> value; anything ``float()`` accepts (numpy or JAX scalars).
      prefix: tag prefix such as ``"train"`` or ``"eval"``; names are used as is when empty.
    """
    if self._jsonl.closed:
      raise ValueError("MetricWriter is closed.")
    step = int(step)
    values = {(f"{prefix}/{name}" if prefix else name): float(value) for name, value in scalars.items()}
    clash = [key for key in values if key in _RESERVED_KEYS]
    if clash:
      raise ValueError(f"scalar names {clash} clash with the keys {list(_RESERVED_KEYS)} of metrics.jsonl.")
    record = {"step": step, "time": time.time(), **{key: _json_value(v) for key, v in values.items()}}
    with atomic_files.naming_failures(self.workdir / workdir_layout.METRICS_LOG):
      self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
      self._jsonl.flush()
    if self._events is not None:
      from tensorboardX import summary  # pylint: disable=import-outside-toplevel

      with atomic_files.naming_failures(self._events_path):
        for tag, value in values.items():
          self._write_summary(step, summary.scalar(tag, value))
        self._events.flush()

  def write_text(self, step: int, tag: str, text: str) -> None:
    """Writes ``text`` (Markdown, e.g. the config) to TensorBoard's text tab; nothing without TensorBoard."""
    if self._events is not None:
      from tensorboardX import summary  # pylint: disable=import-outside-toplevel

      with atomic_files.naming_failures(self._events_path):
        self._write_summary(int(step), summary.text(tag, text))
        self._events.flush()

  def close(self) -> None:
    """Flushes and closes the files; calling it again does nothing. Both are closed even when a flush fails (a
    full disk); the failure is raised once both are (if both fail, the second, with the first as its context)."""
    try:
      with atomic_files.naming_failures(self.workdir / workdir_layout.METRICS_LOG):
        self._jsonl.close()  # closed even when its flush fails
    finally:
      if self._events is not None:
        events, self._events = self._events, None
        with atomic_files.naming_failures(self._events_path):
          events.close()  # likewise

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _truncate_jsonl(path: pathlib.Path, resume_step: int | None) -> None:
  """Rewrites ``path`` without the records past ``resume_step`` and without a last line cut short by a kill."""
  try:
    data = path.read_bytes()
  except FileNotFoundError:
    return
  *lines, tail = data.split(b"\n")
  if tail and isinstance(_parse(tail), dict):
    lines.append(tail)  # the kill came between a whole record and its newline
  if resume_step is not None:
    lines = [line for number, line in enumerate(lines, 1)
             if not line.strip() or _step_of(path, number, line) <= resume_step]
  new = b"".join(line + b"\n" for line in lines)
  if new == data:
    return
  # A kill during the rewrite leaves either the old file or the new one, never a part of either.
  with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
    temporary = f.name
    try:
      f.write(new)
      f.flush()
      os.fsync(f.fileno())
    except BaseException:
      os.unlink(temporary)
      raise
  try:
    shutil.copymode(path, temporary)
    os.replace(temporary, path)
  except BaseException:
    os.unlink(temporary)
    raise


def _parse(line: bytes) -> Any:
  try:
    return json.loads(line)
  except ValueError:
    return None


def _step_of(path: pathlib.Path, number: int, line: bytes) -> int:
  record = _parse(line)
  step = record.get("step") if isinstance(record, dict) else None
  if isinstance(step, int) and not isinstance(step, bool):
    return step
  raise errors.WorkdirError(
      f"{path}, line {number}: not a metrics record with an integer step ({line[:80]!r}), so it cannot be told "
      "whether it was logged after the checkpoint this run resumes from. Delete or fix that line, or use a new "
      "--workdir.")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Parses a ``metrics.jsonl`` file, with ``"nan"``/``"inf"``/``"-inf"`` values turned back into floats."""
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        records.append({k: _NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in record.items()})
  return records


def format_duration(seconds: float) -> str:
  """Short duration with two units at most, rounded to the second: "45s", "12m05s", "3h04m", "2d03h"."""
  if not math.isfinite(seconds) or seconds < 0:
    raise ValueError(f"seconds must be finite and >= 0; got {seconds}.")
  s = round(seconds)
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  if s < 86400:
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
  return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class ProgressLine:
  """One log line per call: step, epoch, scalars, learning rate, images per second and time left.

  Speed is measured between consecutive calls of :meth:`format` (the first call:
  since construction), so it reflects the recent rate, not compilation at the start.

  Args:
    total_steps: steps of the whole run.
    steps_per_epoch: steps in one epoch (for the epoch shown).
    global_batch: images per step, all devices and processes together.
    start_step: the step the run (re)started from.
    clock: seconds as a float; injectable for tests.
  """

  def __init__(self, total_steps: int, steps_per_epoch: int, global_batch: int, *, start_step: int = 0,
               clock: Callable[[], float] = time.perf_counter):
    sizes = dict(total_steps=total_steps, steps_per_epoch=steps_per_epoch, global_batch=global_batch)
    for name, value in sizes.items():
      if value <= 0:
        raise ValueError(f"{name} must be positive; got {value}.")
    if not 0 <= start_step <= total_steps:
      raise ValueError(f"start_step must be in [0, total_steps={total_steps}]; got {start_step}.")
    self.total_steps, self.steps_per_epoch, self.global_batch = total_steps, steps_per_epoch, global_batch
    self._clock = clock
    self._last_step, self._last_time = start_step, clock()

  def format(self, step: int, scalars: Mapping[str, Any]) -> str:
    """The line for ``step`` (steps done so far) with ``scalars`` (``loss`` first, ``learning_rate`` as lr)."""
    now = self._clock()
    steps_done, elapsed = step - self._last_step, now - self._last_time
    self._last_step, self._last_time = step, now
    names = (["loss"] if "loss" in scalars else []) + [k for k in scalars if k not in ("loss", "learning_rate")]
    parts = [f"step {step}/{self.total_steps} (epoch {step / self.steps_per_epoch:.1f})"]
    parts += [f"{name} {float(scalars[name]):.4f}" for name in names]
    line = " ".join(parts)
    if "learning_rate" in scalars:
      line += f" | lr {float(scalars['learning_rate']):.1e}"
    steps_per_second = steps_done / elapsed if elapsed > 0 and steps_done > 0 else None
    if steps_per_second is None:
      return line + " | ? img/s | ? left"
    left = format_duration(max(self.total_steps - step, 0) / steps_per_second)
    return line + f" | {steps_per_second * self.global_batch:.1f} img/s | {left} left"


__all__ = ["MetricWriter", "ProgressLine", "format_duration", "read_jsonl"]


def is_writer() -> bool:
  """Whether this process writes files and logs: the first of a multi-process run (every process computes)."""
  return jax.process_index() == 0


def log(message: str) -> None:
  """Prints a progress or result line, from the writing process only."""
  if is_writer():
    print(message, flush=True)
