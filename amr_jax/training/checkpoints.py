"""Training checkpoints with Orbax's ``CheckpointManager``, and errors that say what to do.

A checkpoint holds the host copy of the whole training state (step,
parameters, BatchNorm statistics, optimizer state) as a plain state dict
(:func:`flax.serialization.to_state_dict`), so it does not depend on Python
class names. The data position and every random draw are functions of the
step (:mod:`amr_jax.data.input_pipeline`, :mod:`amr_jax.data.augment`), so the step is
all a resumed run needs to continue exactly where the interrupted one was.

Orbax writes each checkpoint to a temporary folder and renames it when
complete, so a run killed while saving leaves the previous checkpoints
intact. Saving is synchronous: a checkpoint reported as written is on disk.

A checkpoint that cannot be read or written raises one :class:`CheckpointError`
that says what to do. Importing this module makes Orbax wait for all of its
reads and writes before it closes an event loop (see
``_run_sync_with_stragglers_awaited``); without that, one failed read or
write was followed by dozens of ``RuntimeError: Event loop is closed`` tracebacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import pathlib
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src import asyncio_utils as _orbax_asyncio

from amr_jax import errors

# How long a failed read or write waits for the others it started; past it the event loop is closed as Orbax would.
_STRAGGLER_TIMEOUT_S = 60.0


class CheckpointError(errors.RunError, RuntimeError):
  """A checkpoint that cannot be used or written: corrupt, written by a different model or optimizer, or a save
  that failed (a full disk)."""


class Checkpoints:
  """The checkpoints of one training run, in ``directory``; ``close()`` it, or use it as a context manager.

  Args:
    directory: the checkpoint folder (created if missing).
    max_to_keep: older checkpoints beyond this many are deleted.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._closed = False

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Saves the host (unreplicated) ``state`` as checkpoint ``step``; every process must call it.

    Raises:
      CheckpointError: naming the checkpoint, the cause and the previous checkpoint,
        when it cannot be written (a full disk, a folder that is not writable).
    """
    state_dict = flax.serialization.to_state_dict(jax.device_get(state))
    previous = self.latest_step()
    try:
      with _orbax_background_failures_not_logged():
        self._manager.save(step, args=ocp.args.StandardSave(state_dict), force=True)
        self._manager.wait_until_finished()
    except Exception as error:  # any writing failure ends in the one message below
      if previous is None:
        kept, then = "no checkpoint of this run was written before it", "starts again from step 0"
      else:
        kept = f"the previous checkpoint (step {previous}, {self.directory / str(previous)}) is intact"
        then = f"resumes from step {previous}"
      raise CheckpointError(
          f"checkpoint {self.directory / str(step)} could not be written ({_summary(error)}); {kept}. If the "
          f"disk is full, free space on it (or make {self.directory} writable), then run the same command again: "
          f"it {then}.") from error

  def close(self) -> None:
    """Waits for Orbax's pending operations and ends its threads; calling it again does nothing."""
    if not self._closed:
      self._closed = True
      self._manager.close()

  def __enter__(self) -> Checkpoints:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def restore(self, template: Any, step: int | None = None) -> Any:
    """The checkpoint ``step`` (default: the latest) as a state shaped like ``template``.

    Raises:
      CheckpointError: naming the checkpoint and what to do, when it cannot be
        read, or when its structure, shapes or dtypes differ from ``template``'s.
    """
    step = self.latest_step() if step is None else step
    path = self.directory / str(step)
    others = [s for s in self.all_steps() if s != step]
    try:
      restored = self._manager.restore(step, args=ocp.args.StandardRestore())
    except Exception as error:  # any reading failure ends in the one message below
      fallback = (f"delete {path} to resume from the previous checkpoint (step {others[-1]})" if others
                  else f"delete {path} to start this run again from step 0")
      raise CheckpointError(
          f"checkpoint {path} cannot be read; it is corrupt or incomplete ({_summary(error)}). To recover, "
          f"{fallback}, or use a new workdir.") from error
    expected = flax.serialization.to_state_dict(template)
    problems = _differences(expected, restored)
    if problems:
      listed = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
      raise CheckpointError(
          f"checkpoint {path} does not fit this run's model and optimizer: {listed}. It was written by a "
          "run with another config (model, num_classes, optimizer, ...). Use a new --workdir for this "
          f"config, or run with the config that wrote {self.directory.parent / 'config.json'}.")
    return flax.serialization.from_state_dict(template, jax.tree.map(np.asarray, restored))


def latest_step_on_disk(directory: str | os.PathLike) -> int | None:
  """The newest complete checkpoint's step in ``directory``, without opening it (nor creating the folder).

  Orbax names a complete checkpoint by its step and one being written ``<step>.orbax-checkpoint-tmp...``.
  """
  directory = pathlib.Path(directory)
  steps = [int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()] if directory.is_dir() else []
  return max(steps, default=None)


def _differences(expected: Any, restored: Any, path: str = "") -> list[str]:
  if isinstance(expected, dict):
    if not isinstance(restored, dict):
      return [f"{path or '/'}: expected a mapping, found {type(restored).__name__}"]
    problems = [f"{path}/{key}: missing from the checkpoint" for key in expected if key not in restored]
    problems += [f"{path}/{key}: not in this run's state" for key in restored if key not in expected]
    for key in expected:
      if key in restored:
        problems += _differences(expected[key], restored[key], f"{path}/{key}")
    return problems
  want, got = np.asarray(expected), np.asarray(restored)
  if want.shape != got.shape:
    return [f"{path}: shape {got.shape} in the checkpoint, {want.shape} in this run"]
  if want.dtype != got.dtype:
    return [f"{path}: dtype {got.dtype} in the checkpoint, {want.dtype} in this run"]
  return []


def _summary(error: BaseException) -> str:
  """``"<type>: <first line of the message>"``: Orbax's and TensorStore's messages go on for lines."""
  return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


class _NotSignalingThreadFailures(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return "_SignalingThread.run() raised an exception" not in str(record.msg)


@contextlib.contextmanager
def _orbax_background_failures_not_logged():
  """Orbax logs a failure of each of its saving threads with its traceback (about 50 lines), then raises the same
  error in the thread that saves: :meth:`Checkpoints.save` reports it once, as a CheckpointError."""
  absl_logger = logging.getLogger("absl")
  quiet = _NotSignalingThreadFailures()
  absl_logger.addFilter(quiet)
  try:
    yield
  finally:
    absl_logger.removeFilter(quiet)


async def _with_stragglers_awaited(coro):
  try:
    return await coro
  finally:
    stragglers = asyncio.all_tasks() - {asyncio.current_task()}
    if stragglers:
      done, _ = await asyncio.wait(stragglers, timeout=_STRAGGLER_TIMEOUT_S)
      for task in done:
        if not task.cancelled():
          task.exception()  # retrieved, so asyncio does not log it: the first failure is the one reported


def _run_sync_with_stragglers_awaited(run_sync):
  """Orbax's ``run_sync``, that returns or raises only once the tasks its coroutine started are done.

  Orbax (0.12.8) runs each batch of reads or writes as ``asyncio.gather`` of TensorStore operations in a new event
  loop, closed as soon as the coroutine ends. When one operation fails, gather raises at once and the loop is
  closed while the others are still running in TensorStore's threads; each of them, when done, calls
  ``loop.call_soon_threadsafe`` on the closed loop, and TensorStore prints the ``RuntimeError: Event loop is
  closed`` through ``sys.unraisablehook``: 4 to 6 lines per array (121 to 753 lines seen) after the real error.
  Closing the CheckpointManager does not stop them: the operations belong to TensorStore.
  """
  if getattr(run_sync, "_awaits_stragglers", False):
    return run_sync

  @functools.wraps(run_sync)
  def wrapper(coro):
    return run_sync(_with_stragglers_awaited(coro))

  wrapper._awaits_stragglers = True
  return wrapper


_orbax_asyncio.run_sync = _run_sync_with_stragglers_awaited(_orbax_asyncio.run_sync)
