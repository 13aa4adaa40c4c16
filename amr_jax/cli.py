"""What ``run_train.py`` and ``run_eval.py`` share: flags, the default workdir and multi-process start-up."""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys

import jax
from absl import app, flags, logging


def run(action, workdir_help: str) -> None:
  """Defines ``--config`` and ``--workdir`` and runs ``action(config, workdir)`` as an absl program."""
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Config file, with an optional argument: configs/fgnet_amr.py:17.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, workdir_help)
  flags.mark_flags_as_required(["config"])

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    action(*setup(flags.FLAGS.config, flags.FLAGS.workdir))

  app.run(main, flags_parser=parse_flags)


def default_workdir(config) -> str:
  """``workdirs/<config name>`` for a run over all folds, ``workdirs/<config name>_<fold>`` for one fold."""
  suffix = f"_{config.fold}" if config.get("fold", -1) != -1 else ""
  return os.path.join("workdirs", f"{config.name}{suffix}")


def initialize_distributed() -> None:
  """Joins a multi-process run when the environment describes one.

  Explicit: ``AMR_JAX_COORDINATOR=host:port``, ``AMR_JAX_NUM_PROCESSES`` and
  ``AMR_JAX_PROCESS_ID``. Otherwise ``jax.distributed.initialize()`` is
  called where JAX detects a cluster by itself (SLURM with several tasks,
  TPU pods); a single process needs nothing.
  """
  coordinator = os.environ.get("AMR_JAX_COORDINATOR")
  if coordinator:
    # Cross-process collectives on CPU devices need an implementation; it changes nothing on GPU/TPU.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=int(os.environ["AMR_JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["AMR_JAX_PROCESS_ID"]))
  elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ:
    jax.distributed.initialize()


def setup(config, workdir: str | None):
  """The config (unlocked copy) and workdir of a command-line run, after joining any multi-process run."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 shows them
  initialize_distributed()
  workdir = workdir or default_workdir(config)
  if jax.process_index() == 0:
    print(f"workdir: {os.path.abspath(workdir)}; {jax.process_count()} process(es), "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)", flush=True)
    warning = cpu_fallback_warning(jax.default_backend())
    if warning:
      print(warning, file=sys.stderr, flush=True)
  return config, workdir


def cpu_fallback_warning(backend: str) -> str | None:
  """A warning when JAX runs on the CPU of a machine with an NVIDIA GPU or a TPU: the CPU-only jaxlib is installed.

  JAX's own warning about it is one log line among many at start-up.
  """
  if backend != "cpu":
    return None
  if glob.glob("/dev/nvidia[0-9]*") or shutil.which("nvidia-smi"):
    kind, extra = "an NVIDIA GPU", "cuda12"
  elif glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"):
    kind, extra = "a TPU", "tpu"
  else:
    return None
  return (f"WARNING: this machine has {kind}, but JAX runs on the CPU (no {extra} plugin installed). Install "
          f"it with: pip install -r requirements.txt \"jax[{extra}]=={jax.__version__}\" (README, Install).")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with an unknown ``--config.FIELD`` reported as one line naming it (no traceback)."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as error:
    missing = re.findall(r"'([^']+)'", str(error))
    culprit = next((arg.split("=")[0] for arg in argv[1:] if arg.startswith("--config.") and missing
                    and missing[-1] in arg.split("=")[0].split(".")), None)
    if culprit is None:
      raise
    sys.exit(f"FATAL flags error: {culprit}: the config has no field {missing[-1]!r}; the fields are those of "
             "the config file and configs/base.py.")
