"""What turning XLA:CPU's YNNPACK fusions off (amr_jax.xla_flags) changes: finite bfloat16 logits, and the speed.

  python -m benchmarks.cpu_fusion --out benchmarks/results/cpu_fusion.md

For each model, size and dtype, two fresh processes, one per setting, one after the other:

- ``XLA default``: JAX's backend is started before ``amr_jax`` is imported, so XLA:CPU keeps its YNNPACK fusions
  (jaxlib 0.11 and later);
- ``fusions off``: ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=``, what importing ``amr_jax`` sets.

Each process counts the ``__ynn_fusion`` kernels of the jitted eval-mode forward pass, checks its logits for NaN
(``model_speed.py``'s random-initialised model on uniform images), and times ``model_speed.py``'s training step:
images/s = batch / median of ``--steps`` steps after ``--warmup``. The two settings alternate ``--rounds`` times;
the table gives the median rate of each and their ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SETTINGS = ("XLA default", "fusions off")
FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def worker(settings: dict) -> dict:
  """One setting's measurement in this process (started by :func:`run_worker`)."""
  import warnings

  import jax

  jax.devices()  # start the backend first: with "XLA default", amr_jax's flag then comes too late (it warns)
  warnings.simplefilter("ignore", RuntimeWarning)
  import functools

  import jax.numpy as jnp
  import numpy as np

  from amr_jax import models
  from benchmarks import model_speed
  from benchmarks.timing import median_time

  dtype = jnp.bfloat16 if settings["dtype"] == "bfloat16" else jnp.float32
  size, batch = settings["size"], settings["batch"]
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(0, 1, (batch, size, size, 3)).astype(np.float32))
  ages = jnp.asarray(rng.integers(0, model_speed.NUM_CLASSES, batch))
  module = models.create_model(settings["model"], model_speed.NUM_CLASSES, dtype=dtype)
  variables = jax.jit(functools.partial(module.init, train=False))(jax.random.key(0), images[:1])
  forward = jax.jit(functools.partial(module.apply, train=False)).lower(variables, images).compile()
  logits = np.asarray(forward(variables, images), np.float32)
  _, train, _ = model_speed.jax_calls(settings["model"], images, ages, dtype)
  return {"fusions": forward.as_text().count('"__ynn_fusion"'), "nan_share": float(np.isnan(logits).mean()),
          "seconds": median_time(train, settings["warmup"], settings["steps"])}


def run_worker(settings: dict, fusions_off: bool) -> dict:
  env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
  if fusions_off:
    env["XLA_FLAGS"] = FLAG
  command = [sys.executable, "-m", "benchmarks.cpu_fusion", "--_worker", json.dumps(settings)]
  done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  if done.returncode or not lines:
    raise SystemExit(f"error: the worker for {settings} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
  return json.loads(lines[-1])


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ["--_worker"]:
    print(json.dumps(worker(json.loads(argv[1]))), flush=True)
    return
  parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_fusion", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  from amr_jax import models

  parser.add_argument("--models", nargs="+", default=["thin_age_net", "resnet18", "efficientnet_lite0"],
                      choices=sorted(models.MODELS), metavar="MODEL", help=f"from {', '.join(sorted(models.MODELS))}")
  parser.add_argument("--size", type=int, default=112)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=2, help="alternations of the two settings")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  if min(args.batch, args.steps, args.rounds) < 1 or args.warmup < 0 or args.size < 64:
    parser.error("--batch, --steps and --rounds must be positive, --warmup >= 0 and --size >= 64")
  if args.out and not pathlib.Path(args.out).resolve().parent.is_dir():
    parser.error(f"--out {args.out}: its folder does not exist")
  import jax
  import jaxlib

  rows = []
  for model in args.models:
    for dtype in ("float32", "bfloat16"):
      settings = {"model": model, "dtype": dtype, "size": args.size, "batch": args.batch, "warmup": args.warmup,
                  "steps": args.steps}
      results = {name: [] for name in SETTINGS}
      for _ in range(args.rounds):
        for name in SETTINGS:
          results[name].append(run_worker(settings, fusions_off=name == "fusions off"))
          print(f"cpu_fusion.py: {model} {dtype} {name}: {results[name][-1]}", file=sys.stderr, flush=True)
      rates = {name: statistics.median(args.batch / r["seconds"] for r in results[name]) for name in SETTINGS}
      cells = [f"`{model}`", dtype]
      for name in SETTINGS:
        worst = max(r["nan_share"] for r in results[name])
        cells += [str(results[name][0]["fusions"]), f"{100 * worst:.0f}%"]
      cells += [f"{rates[name]:.1f}" for name in SETTINGS] + [f"{rates['fusions off'] / rates['XLA default']:.2f}x"]
      rows.append("| " + " | ".join(cells) + " |")
  lines = [
      "# XLA:CPU's YNNPACK fusions: XLA's default against turned off", "",
      f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
      f"- command: `python -m benchmarks.cpu_fusion {' '.join(argv)}`",
      f"- jax {jax.__version__}, jaxlib {jaxlib.__version__}, Python {platform.python_version()}, "
      f"{os.cpu_count()} CPU cores, {platform.machine()}",
      f"- {args.size} px, batch {args.batch}; eval-mode forward for the fusions and NaN; training step (AMR, AdamW) "
      f"median of {args.steps} steps after {args.warmup} warm-up, median over {args.rounds} alternating rounds", "",
      "| model | dtype | fusions, default | NaN logits, default | fusions, off | NaN logits, off | train img/s, "
      "default | train img/s, off | off / default |",
      "|---|---|---:|---:|---:|---:|---:|---:|---:|", *rows]
  text = "\n".join(lines) + "\n"
  print(text, end="")
  if args.out:
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
  main()
