"""Checkpoints on their own: a round trip, and one message, not pages of Orbax tracebacks, when a checkpoint file is
damaged or the disk fills up. The resumption of real runs is tested in test_train.py."""

from __future__ import annotations

import asyncio
import pathlib
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
from orbax.checkpoint._src import asyncio_utils

from amr_jax import errors
from amr_jax.training import checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Run as `python -c SCRIPT MODE DIRECTORY`: saves step 3, then fails on step 6 as MODE says ("corrupt": saved, its
# data files cut short, restored; "full": the disk fills up while saving it) and reports the error as run_train.py
# does. Random values do not compress, so the files are as large as the arrays; with many arrays, TensorStore still
# has reads or writes running when the first one fails, which is what made Orbax's noise.
SCRIPT = """
import contextlib, pathlib, resource, signal, sys
import numpy as np
from amr_jax import errors
from amr_jax.training import checkpoints

mode, directory = sys.argv[1], pathlib.Path(sys.argv[2])
rng = np.random.default_rng(0)
state = {"step": np.int32(0), "params": {f"layer{i}": {"kernel": rng.normal(size=(32, 32)).astype(np.float32),
                                                       "bias": rng.normal(size=32).astype(np.float32)}
                                         for i in range(48)}}
try:
  with checkpoints.Checkpoints(directory) as store:
    store.save(3, state)
    if mode == "corrupt":
      store.save(6, state)
      data = [p for p in (directory / "6").rglob("*") if p.is_file() and p.parent.name == "d"]
      assert data, f"no array data file (in a folder d/) under {directory / '6'}: Orbax's layout changed"
      for path in data:
        path.write_bytes(path.read_bytes()[:5])
      for _ in range(4):  # whether reads are still running when the first fails depends on timing: try again
        with contextlib.suppress(errors.RunError):
          store.restore(state)
      store.restore(state)
    else:  # a full disk: a write past 20 kB fails (EFBIG) instead of killing the process (SIGXFSZ)
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
      resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
      store.save(6, state)
except errors.RunError as error:
  print(f"error: {error}", file=sys.stderr)
  sys.exit(1)
"""


def _failing_run(mode: str, directory: pathlib.Path) -> list[str]:
  result = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(directory)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
  lines = result.stderr.splitlines()
  assert result.returncode == 1, (f"the {mode} run should end in a RunError (amr_jax/training/checkpoints.py raises "
                                  f"CheckpointError); stderr:\n{result.stderr[-3000:]}")
  assert "Event loop is closed" not in result.stderr, (
      f"Orbax's closed-event-loop tracebacks are back ({len(lines)} lines of stderr): check that "
      "amr_jax/training/checkpoints.py still wraps orbax.checkpoint._src.asyncio_utils.run_sync.\n" + result.stderr[-3000:])
  assert "Traceback" not in result.stderr and len(lines) < 5, (
      f"the {mode} run should report its error in one line, with nothing from Orbax around it (see the filters in "
      f"amr_jax/training/checkpoints.py); stderr:\n{result.stderr[-3000:]}")
  return [line for line in lines if line.startswith("error: ")]


def test_checkpoint_error_is_a_run_error():
  assert issubclass(checkpoints.CheckpointError, errors.RunError)
  assert issubclass(checkpoints.CheckpointError, RuntimeError)  # what code catching it before expects


def test_round_trip_and_close(tmp_path):
  rng = np.random.default_rng(0)
  state = {"step": np.int32(0), "params": {"kernel": rng.normal(size=(3, 4)).astype(np.float32)}}
  with checkpoints.Checkpoints(tmp_path / "checkpoints", max_to_keep=2) as store:
    for step in (3, 6, 9):
      store.save(step, {**state, "step": np.int32(step)})
    assert store.all_steps() == [6, 9] and store.latest_step() == 9
    restored = store.restore(state, 6)
  assert int(restored["step"]) == 6
  np.testing.assert_array_equal(restored["params"]["kernel"], state["params"]["kernel"])
  store.close()  # again: nothing to do


def test_a_corrupt_checkpoint_is_reported_once(tmp_path):
  directory = tmp_path / "checkpoints"
  reported = _failing_run("corrupt", directory)
  assert len(reported) == 1, reported
  assert re.fullmatch(rf"error: checkpoint {re.escape(str(directory / '6'))} cannot be read; it is corrupt or "
                      rf"incomplete \(\w+: .*\)\. To recover, delete {re.escape(str(directory / '6'))} to resume "
                      r"from the previous checkpoint \(step 3\), or use a new workdir\.", reported[0]), reported[0]


def test_a_full_disk_is_reported_once_and_keeps_the_previous_checkpoint(tmp_path):
  directory = tmp_path / "checkpoints"
  reported = _failing_run("full", directory)
  assert len(reported) == 1, reported
  assert re.fullmatch(rf"error: checkpoint {re.escape(str(directory / '6'))} could not be written \(\w+: .*File "
                      rf"too large.*\); the previous checkpoint \(step 3, {re.escape(str(directory / '3'))}\) is "
                      r"intact\. If the disk is full, free space on it .*, then run the same command again: it "
                      r"resumes from step 3\.", reported[0]), reported[0]
  with checkpoints.Checkpoints(directory) as store:
    assert store.all_steps() == [3]


def test_a_failed_first_save_says_the_run_starts_again(tmp_path, monkeypatch):
  with checkpoints.Checkpoints(tmp_path / "checkpoints") as store:

    def disk_full(*args, **kwargs):
      raise OSError(28, "No space left on device")

    monkeypatch.setattr(store._manager, "save", disk_full)
    with pytest.raises(checkpoints.CheckpointError, match=r"checkpoints/3 could not be written \(OSError: \[Errno 28\] "
                       r"No space left on device\); no checkpoint of this run was written before it\. .* it starts "
                       r"again from step 0\.$"):
      store.save(3, {"step": np.int32(3)})


def test_orbax_waits_for_the_operations_a_failure_left_running():
  """The mechanism of the noise without TensorStore: the failed batch's other operation finishes in another thread."""
  finished = threading.Event()

  async def fails():
    raise OSError("disk full")

  async def slow():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    threading.Timer(0.2, loop.call_soon_threadsafe, (done.set_result, None)).start()
    await done
    finished.set()

  async def batch():
    await asyncio.gather(fails(), slow())

  with pytest.raises(OSError, match="disk full"):
    asyncio_utils.run_sync(batch())
  assert finished.is_set(), "run_sync closed its event loop while an operation of the failed batch was running"
