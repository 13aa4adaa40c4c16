"""Training as users run it: ``run_train.py`` killed and restarted, and two processes on loopback."""

import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from amr_jax import checkpoints, from_config, metric_writers, reports, train
import training_setup

ROOT = training_setup.ROOT
TIMEOUT_S = 600
# Cross-entropy and SGD (see test_train.py's pmap test); 8 steps of 4 images, a checkpoint every 2, all kept.
RUN = {"loss": "cross_entropy", "loss_kwargs": {}, "optimizer": "sgd", "num_train_steps": 8,
       "checkpoint_every_steps": 2, "max_checkpoints_to_keep": 10}


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
  train.train_and_evaluate(config, workdir)
  return config, workdir


def _state(config, workdir, step):
  template = jax.device_get(from_config.initial_train_state(config, from_config.model(config),
                                                             from_config.optimizer(config)))
  return checkpoints.Checkpoints(workdir / "checkpoints").restore(template, step)


def test_a_killed_run_restarted_ends_with_the_uninterrupted_parameters(fgnet_dirs, reference, tmp_path):
  config, reference_dir = reference
  expected = _state(config, reference_dir, 8)
  command = _command(fgnet_dirs, tmp_path / "run")
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  seen = []
  for line in process.stdout:
    seen.append(line)
    if "step 5/8" in line:
      process.send_signal(signal.SIGKILL)  # no chance to clean up, as a pre-empted job
      break
  process.wait(timeout=TIMEOUT_S)
  assert process.returncode == -signal.SIGKILL, "".join(seen)
  saved = checkpoints.Checkpoints(tmp_path / "run" / "checkpoints").all_steps()
  assert saved and max(saved) < 8, saved
  finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
  assert finished.returncode == 0, finished.stdout + finished.stderr
  assert f"resumed from {tmp_path / 'run' / 'checkpoints' / str(max(saved))} at step {max(saved)}" in finished.stdout
  resumed = _state(config, tmp_path / "run", 8)
  for name in ("params", "batch_stats", "opt_state"):
    jax.tree.map(np.testing.assert_array_equal, getattr(resumed, name), getattr(expected, name))


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def test_two_processes_of_two_devices_equal_one_process_of_four(fgnet_dirs, reference, tmp_path):
  """Two steps: enough to exercise every cross-process sum, few enough that float rounding has not grown.

  (In this tiny setting, batches of 4 at random initialisation, runs on 1, 2 and 4 devices of one process
  also drift apart after 3-4 steps, from rounding alone.)
  """
  config, reference_dir = reference
  command = _command(fgnet_dirs, tmp_path / "run", num_train_steps=2)
  port = _free_port()
  processes = []
  for process_id in range(2):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
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
                             rtol=1e-5)
  result, expected = _state(config, tmp_path / "run", 2), _state(config, reference_dir, 2)
  fresh = jax.device_get(from_config.initial_train_state(config, from_config.model(config),
                                                          from_config.optimizer(config)))
  # Within 2% of each tensor's largest update, as in test_train.py's pmap test (it says why).
  jax.tree.map(lambda got, want, start: np.testing.assert_allclose(
      got - start, want - start, rtol=0, atol=0.02 * np.abs(want - start).max()),
      result.params, expected.params, fresh.params)
  jax.tree.map(np.testing.assert_allclose, result.opt_state.hyperparams, expected.opt_state.hyperparams)
  assert int(result.step) == 2
  # Both processes evaluated their share of the test images; the one report has every image.
  assert len(reports.read_predictions_csv(tmp_path / "run" / "test" / "predictions.csv")["age"]) == 4
