"""Training as users run it: ``run_train.py`` killed and restarted, and two processes on loopback."""

import os
import re
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from amr_jax import experiment
from amr_jax.evaluation import reports
from amr_jax.training import checkpoints, metric_writers, train_state
import training_setup

ROOT = training_setup.ROOT
TIMEOUT_S = 600
# Cross-entropy and SGD in float64 (see test_train.py's pmap test); 8 steps of 4 images, a checkpoint every 2,
# all kept.
RUN = {"loss": "cross_entropy", "loss_kwargs": {}, "optimizer": "sgd", "dtype": "float64", "num_train_steps": 8,
       "checkpoint_every_steps": 2, "max_checkpoints_to_keep": 10}
X64 = {"JAX_ENABLE_X64": "1"}


def _overrides(fgnet_dirs):
  manual, data_dir = fgnet_dirs
  return {**RUN, "data.manual_dir": str(manual), "data.data_dir": str(data_dir)}


def _command(fgnet_dirs, workdir, **changes):
  overrides = {k: v for k, v in {**_overrides(fgnet_dirs), **changes}.items() if k != "loss_kwargs"}
  return [sys.executable, "run_train.py"] + training_setup.command_line("fgnet_ce", "3", workdir, **overrides)


@pytest.fixture(scope="module")
def reference(fgnet_dirs, tmp_path_factory):
  """The uninterrupted run, in this process on 4 devices: ``(config, workdir)``."""
  config = training_setup.config("fgnet_ce", "3", **_overrides(fgnet_dirs))
  workdir = tmp_path_factory.mktemp("reference") / "run"
  with jax.enable_x64(True):
    experiment.train_and_evaluate(config, workdir)
  return config, workdir


def _initial_state(config):
  with jax.enable_x64(True):
    return jax.device_get(train_state.initial_train_state(config, train_state.model(config),
                                                           train_state.optimizer(config)))


def _state(config, workdir, step):
  with jax.enable_x64(True):
    return checkpoints.Checkpoints(workdir / "checkpoints").restore(_initial_state(config), step)


def _run_until(command, env, line_wanted: str, sig: int) -> tuple[list[str], int]:
  """Starts ``command``, sends ``sig`` once it prints ``line_wanted``; returns its output and exit status."""
  process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  seen = []
  for line in process.stdout:
    seen.append(line)
    if line_wanted in line:
      process.send_signal(sig)
      break
  seen += process.stdout.readlines()
  process.wait(timeout=TIMEOUT_S)
  return seen, process.returncode


def test_an_interrupted_then_killed_run_restarted_ends_with_the_uninterrupted_parameters(fgnet_dirs, reference,
                                                                                          tmp_path):
  """Ctrl-C (the run stops after its step, with a checkpoint), a restart killed (as a pre-empted job, no clean-up)
  after step 5, a restart to the end."""
  config, reference_dir = reference
  expected = _state(config, reference_dir, 8)
  command = _command(fgnet_dirs, tmp_path / "run")
  env = {**os.environ, **X64}
  # Ctrl-C while the run is still starting (its first line comes before the data and the compilation): the request
  # is waiting when the first step ends, so the run stops after step 1 whatever the machine's speed.
  seen, status = _run_until(command, env, "workdir: ", signal.SIGINT)
  assert status == 130, "".join(seen)
  assert re.search(r"interrupted: subject 3 stopped after step 1, its checkpoint saved in .*; the same command "
                   "continues from there.", seen[-1]), "".join(seen)
  assert not any("Traceback" in line for line in seen), "".join(seen)
  assert checkpoints.Checkpoints(tmp_path / "run" / "checkpoints").all_steps() == [1]
  seen, status = _run_until(command, env, "step 5/8", signal.SIGKILL)
  assert status == -signal.SIGKILL, "".join(seen)
  saved = checkpoints.Checkpoints(tmp_path / "run" / "checkpoints").all_steps()
  assert saved and max(saved) < 8, "".join(seen)
  finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
  assert finished.returncode == 0, finished.stdout + finished.stderr
  assert f"resumed from {tmp_path / 'run' / 'checkpoints' / str(max(saved))} at step {max(saved)}" in finished.stdout
  resumed = _state(config, tmp_path / "run", 8)
  for name in ("params", "batch_stats", "opt_state"):
    jax.tree.map(np.testing.assert_array_equal, getattr(resumed, name), getattr(expected, name))
  # Each step logged once, with the values the uninterrupted run logged (the same computation).
  logged = metric_writers.read_jsonl(tmp_path / "run" / "metrics.jsonl")
  reference_logged = metric_writers.read_jsonl(reference_dir / "metrics.jsonl")
  assert [r["step"] for r in logged] == list(range(1, 9))
  assert [r["train/loss"] for r in logged] == [r["train/loss"] for r in reference_logged]


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def test_two_processes_of_two_devices_equal_one_process_of_four(fgnet_dirs, reference, tmp_path):
  """Two steps (every cross-process sum) in float64, so that only a wrong sum, never rounding, can fail it."""
  config, reference_dir = reference
  command = _command(fgnet_dirs, tmp_path / "run", num_train_steps=2)
  port = _free_port()
  processes = []
  for process_id in range(2):
    # This process's XLA flags (fast-math, say), with two devices per process: both sides compile alike.
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "--xla_force_host_platform_device_count=2",
                   os.environ["XLA_FLAGS"])
    env = {**os.environ, **X64, "XLA_FLAGS": flags,
           "AMR_JAX_COORDINATOR": f"127.0.0.1:{port}", "AMR_JAX_NUM_PROCESSES": "2",
           "AMR_JAX_PROCESS_ID": str(process_id)}
    processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=TIMEOUT_S)[0])
  finally:
    for process in processes:
      process.kill()
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output
  assert "2 process(es), 4 cpu device(s)" in outputs[0]
  assert "step 2/2" in outputs[0] and "step 2/2" not in outputs[1]  # one process reports
  logged = metric_writers.read_jsonl(tmp_path / "run" / "metrics.jsonl")
  reference_logged = metric_writers.read_jsonl(reference_dir / "metrics.jsonl")[:2]
  np.testing.assert_allclose([e["train/loss"] for e in logged], [e["train/loss"] for e in reference_logged],
                             rtol=training_setup.IDENTITY_TOLERANCE)
  result, expected = _state(config, tmp_path / "run", 2), _state(config, reference_dir, 2)
  assert {leaf.dtype for leaf in jax.tree.leaves(result.params)} == {np.dtype(np.float64)}
  training_setup.assert_same_training_result(result, expected, _initial_state(config))
  assert int(result.step) == 2
  # Both processes evaluated their share of the test images; the one report has every image.
  assert len(reports.read_predictions_csv(tmp_path / "run" / "test" / "predictions.csv")["age"]) == 4
