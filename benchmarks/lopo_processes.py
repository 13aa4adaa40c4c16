"""Folds in processes that share one device: the images/s of N processes, each training its own fold, against one.

  python -m benchmarks.lopo_processes --out lopo_processes_cpu.md                 # CPU: tiny_age_net, 64 px
  python -m benchmarks.lopo_processes --model efficientnet_lite0 --image_size 224 --batch 64 --dtype bfloat16 \\
      --processes 1,2,4 --out lopo_processes_gpu.md                               # a GPU: the recipe's step

The third way of issue 29's table, beside folds in sequence and folds at once (``benchmarks/lopo_speed.py``): N
``run_train.py`` slices (``--config.folds``) started together on one GPU, sharing it as the driver interleaves
their kernels. Each worker is a fresh Python process that compiles the one-fold training step
(:func:`amr_jax.training.step_functions.train_step` under ``pmap`` on one device, as a run compiles it), takes
``--warmup`` steps, and waits until every worker is ready; then all take ``--steps`` steps at once, each step timed
to its end (``block_until_ready``). The group's images/s is ``N x steps x batch`` over the window from the first
worker's start to the last one's end, so a worker that runs alone for part of it does not flatter the result.
GPU workers allocate memory as they need it (``XLA_PYTHON_CLIENT_PREALLOCATE=false``), so that N fit on one device.
With ``--cache_dir`` the workers share JAX's persistent compilation cache, as slices started one after another
would (docs/training.md): only the first group compiles.

The 82-fold projection: each process trains ceil(82 / N) folds of 1500 steps one after another at the group's
measured step time, after its compile (the longest of the N, taken once: a process compiles its step once).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROTOCOL_FOLDS, PROTOCOL_STEPS = 82, 1500
READY_TIMEOUT_S = 600  # a worker waits this long for the others to compile before it gives up


def _progress(message: str) -> None:
  print(f"lopo_processes.py: {message}", file=sys.stderr, flush=True)


def worker(args) -> dict:
  """One process's part: compile, warm up, meet the others, take the timed steps; returns its times."""
  import flax.jax_utils  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from amr_jax.evaluation import evaluate  # pylint: disable=import-outside-toplevel
  from amr_jax.training import step_functions, train_state  # pylint: disable=import-outside-toplevel
  from benchmarks import lopo_speed  # pylint: disable=import-outside-toplevel

  config = lopo_speed._config(args.model, args.image_size, args.batch, args.dtype)  # pylint: disable=protected-access
  config.seed = args.index  # each process its own fold
  device = jax.local_devices()[:1]
  kwargs = dict(loss_fn=train_state.loss_fn(config), augmentation=train_state.augmentation(config),
                seed=config.seed, global_batch=config.batch_size)
  state = evaluate.replicate(jax.device_get(train_state.initial_train_state(
      config, train_state.model(config), train_state.optimizer(config))), devices=device)
  inputs = lopo_speed._inputs(config, 1, seed=args.index)  # pylint: disable=protected-access
  batch = evaluate.replicate(jax.tree.map(lambda x: x[0, 0], inputs), devices=device)
  learning_rate = flax.jax_utils.replicate(np.float32(1e-3), devices=device)
  step = jax.pmap(functools.partial(step_functions.train_step, **kwargs), axis_name="batch", devices=device)
  start = time.perf_counter()
  compiled = step.lower(state, batch, learning_rate).compile()
  compile_s = time.perf_counter() - start
  for _ in range(args.warmup):
    state, metrics = compiled(state, batch, learning_rate)
  jax.block_until_ready(state)
  rendezvous = pathlib.Path(args.rendezvous)
  (rendezvous / f"ready_{args.index}").touch()
  waited = time.monotonic()
  while len(list(rendezvous.glob("ready_*"))) < args.group:
    if time.monotonic() - waited > READY_TIMEOUT_S:
      raise SystemExit(f"worker {args.index}: the other workers were not ready after {READY_TIMEOUT_S} s")
    time.sleep(0.005)
  step_times, first = [], time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
  for _ in range(args.steps):
    begin = time.perf_counter()
    state, metrics = compiled(state, batch, learning_rate)
    jax.block_until_ready(metrics)
    step_times.append(time.perf_counter() - begin)
  last = time.monotonic()
  loss = float(np.asarray(metrics["loss"]).reshape(-1)[0])
  return {"index": args.index, "compile_s": compile_s, "start": first, "end": last, "step_times": step_times,
          "finite": math.isfinite(loss), "device": f"{device[0].platform} ({device[0].device_kind})",
          "jax": jax.__version__}


def combine(results: list[dict], batch: int, steps: int) -> dict:
  """The group's figures from its workers' results: the window from the first start to the last end, the images/s
  over it, each worker's median step, the longest compile and the 82-fold projection."""
  if not results or any(len(r["step_times"]) != steps for r in results):
    raise ValueError(f"every worker must report {steps} step times; got {[len(r['step_times']) for r in results]}")
  processes = len(results)
  window = max(r["end"] for r in results) - min(r["start"] for r in results)
  # The steps of the group: each process's steps in the window, all of them concurrent.
  group_step_s = window / steps
  compile_s = max(r["compile_s"] for r in results)
  protocol_s = compile_s + math.ceil(PROTOCOL_FOLDS / processes) * PROTOCOL_STEPS * group_step_s
  return {"processes": processes, "window_s": window, "images_per_s": processes * steps * batch / window,
          "group_step_s": group_step_s, "median_step_s": statistics.median(
              statistics.median(r["step_times"]) for r in results),
          "overlap": min(r["end"] for r in results) > max(r["start"] for r in results),
          "compile_s": compile_s, "protocol_s": protocol_s, "finite": all(r["finite"] for r in results)}


def run_group(args, processes: int) -> dict:
  """Starts ``processes`` workers together and combines what they report."""
  with tempfile.TemporaryDirectory(prefix="lopo_processes_") as folder:
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    if args.cache_dir:  # every program, however quick to compile (JAX keeps only slow ones by default)
      env.update(JAX_COMPILATION_CACHE_DIR=args.cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    common = ["--model", args.model, "--image_size", str(args.image_size), "--batch", str(args.batch), "--dtype",
              args.dtype, "--warmup", str(args.warmup), "--steps", str(args.steps)]
    workers = [subprocess.Popen(
        [sys.executable, "-m", "benchmarks.lopo_processes", *common, "--worker", "--index", str(i), "--group",
         str(processes), "--rendezvous", folder, "--result", os.path.join(folder, f"result_{i}.json")],
        cwd=ROOT, env=env) for i in range(processes)]
    codes = [w.wait() for w in workers]
    if any(codes):
      raise SystemExit(f"error: {processes} processes: workers exited with {codes} (their output is above)")
    results = [json.loads(pathlib.Path(folder, f"result_{i}.json").read_text()) for i in range(processes)]
  group = combine(results, args.batch, args.steps)
  group.update(device=results[0]["device"], jax=results[0]["jax"])
  return group


def _minutes(seconds: float) -> str:
  return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def report(args, groups: list[dict]) -> str:
  one = next((g for g in groups if g["processes"] == 1), None)
  lines = [
      "# Folds in processes sharing one device", "",
      f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
      f"- command: `python -m benchmarks.lopo_processes {' '.join(sys.argv[1:])}`",
      f"- jax {groups[0]['jax']}, Python {platform.python_version()}; device: {groups[0]['device']}, shared by "
      "every process",
      f"- step: {args.model}, {args.image_size} px, {args.dtype}, batch {args.batch} per process (one fold each), AMR "
      f"loss, AdamW; {args.steps} timed steps per process after {args.warmup} warm-up, all processes at once",
      "- compiled steps: " + (f"shared through JAX's persistent cache ({args.cache_dir}): groups after the first "
                              "read the step there" if args.cache_dir else "each process compiles its own"), "",
      "| processes | images/s, all together | vs one process | s per step of the group | median step of a process | "
      "compile (longest) | 82 folds x 1500 steps |",
      "|---:|---:|---:|---:|---:|---:|---:|"]
  for g in groups:
    ratio = f"{g['images_per_s'] / one['images_per_s']:.2f}x" if one else "n/a"
    note = "" if g["overlap"] else " (the processes' steps did not overlap)"
    lines.append(f"| {g['processes']} | {g['images_per_s']:.0f}{note} | {ratio} | {g['group_step_s']:.3f} | "
                 f"{g['median_step_s']:.3f} | {g['compile_s']:.0f} s | {_minutes(g['protocol_s'])} |")
  if not all(g["finite"] for g in groups):
    lines += ["", "A worker's last loss was not finite: these steps do not train."]
  return "\n".join(lines) + "\n"


def main(argv=None):
  from benchmarks import lopo_speed  # pylint: disable=import-outside-toplevel

  parser = argparse.ArgumentParser(prog="python -m benchmarks.lopo_processes", description=__doc__.splitlines()[0])
  lopo_speed.add_step_flags(parser, "images per process and step")
  parser.add_argument("--processes", type=lopo_speed.positive_counts, default="1,2", help="process counts, e.g. 1,2,4")
  parser.add_argument("--warmup", type=lopo_speed.at_least(0), default=2)
  parser.add_argument("--steps", type=lopo_speed.at_least(1), default=10)
  parser.add_argument("--cache_dir", default="",
                      help="JAX's persistent compilation cache for the workers: the first group compiles the step, "
                      "the later ones read it (the compile column then shows the read); default: none")
  parser.add_argument("--out", default="")
  for name in ("--index", "--group"):
    parser.add_argument(name, type=int, default=0, help=argparse.SUPPRESS)
  for name in ("--rendezvous", "--result"):
    parser.add_argument(name, default="", help=argparse.SUPPRESS)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    result = worker(args)
    pathlib.Path(args.result).write_text(json.dumps(result))
    return
  if args.out and not pathlib.Path(args.out).resolve().parent.is_dir():
    parser.error(f"--out {args.out}: its folder does not exist")
  groups = []
  for processes in args.processes:
    _progress(f"{processes} process(es): starting")
    groups.append(run_group(args, processes))
    _progress(f"{processes} process(es): {groups[-1]['images_per_s']:.0f} images/s together")
    if args.out:  # the table so far: a run stopped at a time limit keeps what it measured
      pathlib.Path(args.out).write_text(report(args, groups))
  print(report(args, groups))


if __name__ == "__main__":
  main()
