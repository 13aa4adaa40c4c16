"""Shared by the training tests: a synthetic FG-NET big enough for 4 devices, and tiny run configs."""

from __future__ import annotations

import importlib
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
DUMMY_FGNET = ROOT / "datasets" / "fgnet" / "dummy_data" / "FGNET"

# Small enough to compile and run in seconds on a CPU.
TINY = {"model": "tiny_age_net", "pretrained": "", "image_size": 64, "batch_size": 4, "eval_batch_size": 8,
        "num_train_steps": 2, "log_every_steps": 1, "checkpoint_every_steps": 100}


def make_synthetic_fgnet(folder: pathlib.Path, subjects: int = 4, images_per_subject: int | list[int] = 4
                         ) -> pathlib.Path:
  """An FG-NET tree (``FGNET/images``, ``FGNET/points``) of copies of the dummy images under new names.

  ``images_per_subject``: one count for every subject, or a count per subject.
  """
  counts = images_per_subject if isinstance(images_per_subject, list) else [images_per_subject] * subjects
  sources = sorted((DUMMY_FGNET / "images").glob("*.JPG"))
  (folder / "FGNET" / "images").mkdir(parents=True)
  (folder / "FGNET" / "points").mkdir(parents=True)
  rng = np.random.default_rng(0)
  for subject, count in enumerate(counts, start=1):
    for age in sorted(rng.choice(70, count, replace=False)):
      source = sources[(subject * 7 + int(age)) % len(sources)]
      name = f"{subject:03d}A{int(age):02d}"
      shutil.copy(source, folder / "FGNET" / "images" / f"{name}.JPG")
      shutil.copy(DUMMY_FGNET / "points" / f"{source.stem.lower()}.pts",
                  folder / "FGNET" / "points" / f"{name.lower()}.pts")
  return folder


def build_in_tfrecord(name: str, manual_dir, data_dir, **builder_kwargs) -> None:
  """Builds dataset ``name`` as tfrecord, in a subprocess: writing tfrecord imports TensorFlow, which tests of
  this process check is never imported."""
  script = ("import sys, json, tensorflow_datasets as tfds\n"
            "from amr_jax.data import tfds_builders\n"
            "name, manual, data, kwargs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])\n"
            "tfds_builders.builder_class(name)(data_dir=data, file_format='tfrecord', **kwargs).download_and_prepare(\n"
            "    download_config=tfds.download.DownloadConfig(manual_dir=manual))\n")
  kwargs = json.dumps({key: str(value) for key, value in builder_kwargs.items()})
  result = subprocess.run([sys.executable, "-c", script, name, str(manual_dir), str(data_dir), kwargs],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]


def config(name: str, arg: str | None = None, **overrides):
  """``configs/<name>.py`` with its argument, the tiny settings, then ``overrides`` (dotted keys allowed)."""
  module = importlib.import_module(f"configs.{name}")
  cfg = module.get_config(arg) if arg is not None else module.get_config()
  for key, value in {**TINY, **overrides}.items():
    target = cfg
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return cfg


def command_line(name: str, arg: str | None, workdir, **overrides) -> list[str]:
  """The ``run_train.py`` arguments that give the same config as ``config(name, arg, **overrides)``."""
  spec = f"configs/{name}.py" + (f":{arg}" if arg is not None else "")
  return [f"--config={spec}", f"--workdir={workdir}"] + [
      f"--config.{key}={value}" for key, value in {**TINY, **overrides}.items()]


# Identity checks (N devices = 1, 2 processes = 1) run in float64 (dtype="float64", JAX_ENABLE_X64=1). Each
# gradient entry or BatchNorm statistic is a sum of at most ~10^5 terms (images x pixels x channels);
# summing them in another order changes the result by at most n * eps * sum|terms| = 1e5 * 1.1e-16, about
# 1e-11 of the terms' size, ten times below this tolerance (measured: 2.6e-14 of the largest update). A missing
# average changes the largest update by at least its own size (psum for pmean over 2 devices doubles it):
# 10^10 times this tolerance.
IDENTITY_TOLERANCE = 1e-10


def assert_within_rounding(got, want):
  """Every float leaf of ``got`` is within ``IDENTITY_TOLERANCE`` times the largest magnitude in ``want``.

  The scale is the whole tree's: a value whose exact result is zero (the gradient of a bias that BatchNorm
  cancels) comes out as rounding noise, so its own size means nothing.
  """
  scale = max(float(np.abs(leaf).max()) for leaf in jax.tree.leaves(want))
  assert scale > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=IDENTITY_TOLERANCE * scale), got, want)


def assert_same_training_result(got, want, start):
  """States ``got`` and ``want``, both ``start`` after the same steps, agree to float64 rounding."""
  assert_within_rounding(jax.tree.map(np.subtract, got.params, start.params),
                         jax.tree.map(np.subtract, want.params, start.params))
  assert_within_rounding(got.batch_stats, want.batch_stats)
  assert_within_rounding(got.opt_state, want.opt_state)
