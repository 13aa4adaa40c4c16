"""Training checkpoints with Orbax's ``CheckpointManager``, and errors that say what to do.

A checkpoint holds the host copy of the whole training state (step,
parameters, BatchNorm statistics, optimizer state) as a plain state dict
(:func:`flax.serialization.to_state_dict`), so it does not depend on Python
class names. The data position and every random draw are functions of the
step (:mod:`amr_jax.input_pipeline`, :mod:`amr_jax.augment`), so the step is
all a resumed run needs to continue exactly where the interrupted one was.

Orbax writes each checkpoint to a temporary folder and renames it when
complete, so a run killed while saving leaves the previous checkpoints
intact. Saving is synchronous: a checkpoint reported as written is on disk.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used: corrupt, or written by a different model or optimizer."""


class Checkpoints:
  """The checkpoints of one training run, in ``directory``.

  Args:
    directory: the checkpoint folder (created if missing).
    max_to_keep: older checkpoints beyond this many are deleted.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Saves the host (unreplicated) ``state`` as checkpoint ``step``; every process must call it."""
    state_dict = flax.serialization.to_state_dict(jax.device_get(state))
    self._manager.save(step, args=ocp.args.StandardSave(state_dict), force=True)
    self._manager.wait_until_finished()

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
          f"checkpoint {path} cannot be read; it is corrupt or incomplete ({type(error).__name__}: "
          f"{str(error).splitlines()[0] if str(error) else ''}). To recover, {fallback}, or use a new workdir."
      ) from error
    expected = flax.serialization.to_state_dict(template)
    problems = _differences(expected, restored)
    if problems:
      listed = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
      raise CheckpointError(
          f"checkpoint {path} does not fit this run's model and optimizer: {listed}. It was written by a "
          "run with another config (model, num_classes, optimizer, ...). Use a new --workdir for this "
          f"config, or run with the config that wrote {self.directory.parent / 'config.json'}.")
    return flax.serialization.from_state_dict(template, jax.tree.map(np.asarray, restored))


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
