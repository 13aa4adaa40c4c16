"""Folds at once against folds in sequence: step time, images/s, memory, XLA's cost counts, the 82-fold projection.

  python -m benchmarks.lopo_speed --out benchmarks/results/lopo_speed_cpu.md        # CPU: tiny_age_net, 64 px
  python -m benchmarks.lopo_speed --model efficientnet_lite0 --image_size 224 --batch 64 --dtype bfloat16 \\
      --folds 1,2,4,8 --out lopo_speed_gpu.md                                       # an accelerator: the recipe

For N folds, one step of :func:`amr_jax.training.step_functions.folds_train_step` (N folds' training states stacked, vmapped inside
the pmapped step, on one device) is timed against N calls of :func:`amr_jax.training.step_functions.train_step`, one per fold: the
median of ``--steps`` timed steps after ``--warmup``, each fold ``--batch`` images. Peak memory is XLA's
``memory_analysis()`` of the compiled step (arguments + outputs + temporaries); FLOPs and bytes accessed are its
``cost_analysis()``. The projection for the paper's protocol multiplies the step time by 1500 steps and
ceil(82 / N) groups.

The last table is a projection on paper for one H100 SXM (989 TFLOP/s dense bfloat16, 3.35 TB/s HBM3), for the
recipe's step (EfficientNet-Lite0, 224 px, batch 64 per fold, bfloat16): compute time from XLA's FLOP count of the
lowered step, plus kernel launches (the kernels of the step XLA compiles here for one fold, times ``--launch_us``),
and, apart, the memory time of the lowered program's bytes (before fusion: an upper bound on traffic). It cannot
tell how well grouped convolutions (what a vmap over folds' weights becomes) run on a GPU: it is a projection, not a
measurement.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import pathlib
import platform
import re
import sys
import time
from typing import Any

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np

from amr_jax.evaluation import evaluate
from amr_jax.training import step_functions, train_state
from benchmarks.timing import median_time
from configs import fgnet_amr

PROTOCOL_FOLDS, PROTOCOL_STEPS = 82, 1500
H100_BF16_FLOPS, H100_BYTES_PER_S = 989e12, 3.35e12


def _config(model: str, image_size: int, batch: int, dtype: str):
  config = fgnet_amr.get_config("1")
  config.model, config.image_size, config.batch_size, config.dtype, config.pretrained = model, image_size, batch, \
      dtype, ""
  return config


def _first(cost):
  return cost[0] if isinstance(cost, (list, tuple)) else cost


def _inputs(config, num_folds, seed=0):
  rng = np.random.default_rng(seed)
  size, batch = config.image_size, config.batch_size
  return {"image": rng.integers(0, 256, (1, num_folds, batch, size, size, 3), dtype=np.uint8),
          "age": rng.integers(0, 70, (1, num_folds, batch)).astype(np.float32),
          "position": np.broadcast_to(np.arange(batch, dtype=np.int32), (1, num_folds, batch)).copy()}


def _timed_compile(step, *args) -> tuple[Any, float]:
  start = time.perf_counter()
  compiled = step.lower(*args).compile()
  return compiled, time.perf_counter() - start


def measure(config, num_folds: int, warmup: int, steps: int, alone_step: dict, fold_convolution: str = "grouped"
            ) -> dict:
  """Times ``num_folds`` folds in one step (their convolutions as ``fold_convolution``) and one after another;
  returns seconds, compile times, memory and cost counts. ``alone_step`` caches the one-fold step's compiled
  program across calls (it does not depend on N)."""
  device = jax.local_devices()[:1]
  kwargs = dict(loss_fn=train_state.loss_fn(config), augmentation=train_state.augmentation(config),
                seed=config.seed, global_batch=config.batch_size)
  state = jax.device_get(train_state.initial_train_state(config, train_state.model(config),
                                                          train_state.optimizer(config)))
  # On the device as pmap lays out its inputs, so the timed steps copy nothing from the host.
  batch = evaluate.replicate(jax.tree.map(lambda x: x[0], _inputs(config, num_folds)), devices=device)
  at_once = jax.pmap(functools.partial(step_functions.folds_train_step, fold_convolution=fold_convolution, **kwargs),
                     axis_name="batch", devices=device)
  stacked = evaluate.replicate(jax.tree.map(lambda x: np.stack([x] * num_folds), state), devices=device)
  lrs = flax.jax_utils.replicate(np.full((num_folds,), 1e-3, np.float32), devices=device)
  active = flax.jax_utils.replicate(np.ones((num_folds,), bool), devices=device)
  _progress(f"{num_folds} folds: compiling the folds-at-once step ...")
  compiled, at_once_compile_s = _timed_compile(at_once, stacked, batch, lrs, active)
  _progress(f"{num_folds} folds: compiled in {at_once_compile_s:.1f} s")
  cost, memory = _first(compiled.cost_analysis()), compiled.memory_analysis()
  box = {"stacked": stacked}

  def folds_at_once():
    box["stacked"], metrics = compiled(box["stacked"], batch, lrs, active)
    jax.block_until_ready(metrics)

  states = [evaluate.replicate(state, devices=device) for _ in range(num_folds)]
  fold_batches = [jax.tree.map(lambda x, f=f: x[:, f], batch) for f in range(num_folds)]
  lr = flax.jax_utils.replicate(np.float32(1e-3), devices=device)
  if "compiled" not in alone_step:
    _progress("compiling the one-fold step ...")
    alone = jax.pmap(functools.partial(step_functions.train_step, **kwargs), axis_name="batch", devices=device)
    alone_step["compiled"], alone_step["compile_s"] = _timed_compile(alone, states[0], fold_batches[0], lr)
    _progress(f"one-fold step compiled in {alone_step['compile_s']:.1f} s")

  def folds_in_sequence():
    for f in range(num_folds):
      states[f], metrics = alone_step["compiled"](states[f], fold_batches[f], lr)
    jax.block_until_ready(metrics)

  # Alternating blocks, so that a slow spell of the machine does not fall on one side only.
  at_once_times, sequence_times = [], []
  for _ in range(2):
    at_once_times.append(median_time(folds_at_once, warmup, steps))
    sequence_times.append(median_time(folds_in_sequence, warmup, steps))
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
          if memory is not None else float("nan"))
  return {"folds": num_folds, "fold_convolution": fold_convolution, "at_once_s": float(np.median(at_once_times)),
          "sequence_s": float(np.median(sequence_times)), "peak_bytes": peak,
          "at_once_compile_s": at_once_compile_s, "alone_compile_s": alone_step["compile_s"],
          "flops": float(cost.get("flops", float("nan"))), "bytes": float(cost.get("bytes accessed", float("nan")))}


def _progress(message: str) -> None:
  print(f"lopo_speed.py: {message}", file=sys.stderr, flush=True)


def _recipe_step(num_folds: int):
  """The recipe's pmapped folds step for ``num_folds`` folds on one device, and abstract arguments for it."""
  config = _config("efficientnet_lite0", 224, 64, "bfloat16")
  kwargs = dict(loss_fn=train_state.loss_fn(config), augmentation=train_state.augmentation(config),
                seed=config.seed, global_batch=config.batch_size)
  model, tx = train_state.model(config), train_state.optimizer(config)

  def fresh_state():
    images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    variables = model.init(jax.random.key(0), images, train=False)
    return train_state.TrainState.create(apply_fn=model.apply, tx=tx, params=variables["params"],
                                         batch_stats=variables.get("batch_stats", {}))

  state = jax.eval_shape(fresh_state)
  stacked = jax.tree.map(lambda x: jax.ShapeDtypeStruct((1, num_folds) + x.shape, x.dtype), state)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _inputs(config, num_folds))
  step = jax.pmap(functools.partial(step_functions.folds_train_step, **kwargs), axis_name="batch",
                  devices=jax.local_devices()[:1])
  return step.lower(stacked, batch, jax.ShapeDtypeStruct((1, num_folds), jnp.float32),
                    jax.ShapeDtypeStruct((1, num_folds), jnp.bool_))


def kernel_count(compiled) -> int:
  """Instructions of the compiled program's entry computation that run as kernels (fusions, convolutions, ...)."""
  text = compiled.as_text()
  entry = text[text.index("\nENTRY"):].split("\n}\n")[0]
  ops = re.findall(r"= \S+ ([\w-]+)\(", entry)
  return sum(op not in NOT_KERNELS for op in ops)


NOT_KERNELS = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant"}


def recipe_bounds(folds: list[int], launch_s: float) -> list[dict]:
  """XLA's FLOP counts of the recipe's lowered step per number of folds, and the H100 bound on paper.

  The kernel count is that of the program compiled here for one fold, assumed the same for N folds (a vmap
  batches inside the kernels); the launch cost ``launch_s`` is an assumption.
  """
  kernels = kernel_count(_recipe_step(1).compile())
  bounds = []
  for n in folds:
    cost = _first(_recipe_step(n).cost_analysis())
    flops, traffic = float(cost["flops"]), float(cost["bytes accessed"])
    step_s = flops / H100_BF16_FLOPS + kernels * launch_s
    bounds.append({"folds": n, "flops": flops, "bytes": traffic, "compute_s": flops / H100_BF16_FLOPS,
                   "kernels": kernels, "launch_s": kernels * launch_s, "memory_s": traffic / H100_BYTES_PER_S,
                   "step_s": step_s, "protocol_s": math.ceil(PROTOCOL_FOLDS / n) * PROTOCOL_STEPS * step_s})
  return bounds


def _hours(seconds: float) -> str:
  return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def report(args, rows, bounds) -> str:
  devices = jax.local_devices()
  lines = [
      "# Folds at once against folds in sequence", "",
      f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
      f"- command: `python -m benchmarks.lopo_speed {' '.join(sys.argv[1:])}`",
      f"- jax {jax.__version__}, Python {platform.python_version()}; device: {devices[0].platform} "
      f"({devices[0].device_kind}), one device used",
      f"- step: {args.model}, {args.image_size} px, {args.dtype}, batch {args.batch} per fold, AMR loss, AdamW; "
      f"median of {args.steps} steps after {args.warmup} warm-up, two alternating blocks", "",
      "| folds | convolutions at once | at once: s/step | in sequence: s/step | at once / in sequence | images/s at once | images/s in "
      "sequence | compile at once | compile one fold | peak memory at once | GFLOP/step | GB accessed/step | 82 "
      "folds x 1500 steps: at once | in sequence |",
      "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    images = r["folds"] * args.batch
    groups = math.ceil(PROTOCOL_FOLDS / r["folds"])
    lines.append(
        f"| {r['folds']} | {r['fold_convolution']} | {r['at_once_s']:.3f} | {r['sequence_s']:.3f} | {r['at_once_s'] / r['sequence_s']:.2f}x | "
        f"{images / r['at_once_s']:.0f} | {images / r['sequence_s']:.0f} | {r['at_once_compile_s']:.0f} s | "
        f"{r['alone_compile_s']:.0f} s | {r['peak_bytes'] / 2**20:.0f} MiB | "
        f"{r['flops'] / 1e9:.2f} | {r['bytes'] / 1e9:.2f} | {_hours(groups * PROTOCOL_STEPS * r['at_once_s'])} | "
        f"{_hours(PROTOCOL_FOLDS * PROTOCOL_STEPS * r['sequence_s'] / r['folds'])} |")
  if bounds:
    lines += ["", f"Projection, not a measurement: one H100 SXM (989 TFLOP/s dense bfloat16, 3.35 TB/s), the recipe's "
              "step (EfficientNet-Lite0, 224 px, batch 64 per fold, bfloat16). Compute: XLA's FLOP count of the lowered "
              f"step / 989 TFLOP/s. Launches: {bounds[0]['kernels']} kernels (the entry computation of this step for "
              f"one fold as XLA compiled it here, assumed the same for N folds) x {args.launch_us:g} us. Step = "
              "compute + launches, assuming grouped convolutions run as efficiently as dense ones, which this "
              "cannot tell. Memory: XLA's bytes count of the lowered (unfused) step / 3.35 TB/s, an upper bound on "
              "traffic time since fusion only removes traffic.", "",
              "| folds | TFLOP/step | compute | launches | memory (unfused, upper) | step | 82 folds x 1500 steps |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for b in bounds:
      lines.append(f"| {b['folds']} | {b['flops'] / 1e12:.3f} | {b['compute_s'] * 1e3:.2f} ms | "
                   f"{b['launch_s'] * 1e3:.1f} ms | {b['memory_s'] * 1e3:.0f} ms | {b['step_s'] * 1e3:.1f} ms | "
                   f"{_hours(b['protocol_s'])} |")
  return "\n".join(lines) + "\n"


def positive_counts(text: str) -> list[int]:
  """An argparse type: positive counts separated by commas ("1,2,4,8")."""
  try:
    counts = [int(part) for part in text.split(",")]
  except ValueError:
    counts = []
  if not counts or min(counts) < 1:
    raise argparse.ArgumentTypeError(f"expected positive counts separated by commas (e.g. 1,2,4,8); got {text!r}")
  return counts


def at_least(low: int):
  """An argparse type: an integer >= ``low``."""
  def parse(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else low - 1
    if value < low:
      raise argparse.ArgumentTypeError(f"expected an integer >= {low}; got {text!r}")
    return value
  return parse


def add_step_flags(parser: argparse.ArgumentParser, batch_help: str) -> None:
  """The flags of the step a benchmark times: ``--model``, ``--image_size``, ``--batch``, ``--dtype``."""
  from amr_jax import models  # pylint: disable=import-outside-toplevel

  parser.add_argument("--model", default="tiny_age_net", choices=sorted(models.MODELS))
  parser.add_argument("--image_size", type=at_least(1), default=64)
  parser.add_argument("--batch", type=at_least(1), default=16, help=batch_help)
  parser.add_argument("--dtype", default="float32", choices=sorted(train_state.DTYPES))


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks.lopo_speed", description=__doc__.splitlines()[0])
  add_step_flags(parser, "images per fold and step")
  parser.add_argument("--folds", type=positive_counts, default="1,2,4,8", help="fold counts, e.g. 1,2,4,8")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--fold_convolution", default="grouped,patches",
                      help="how the folds' convolutions are computed at once, one row each: grouped, patches or "
                      "both, comma-separated (amr_jax.training.step_functions.folds_train_step)")
  parser.add_argument("--no_bound", action="store_true", help="skip the H100 bound of the recipe's step")
  parser.add_argument("--launch_us", type=float, default=4.0, help="assumed cost of one kernel launch (microseconds)")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  if args.out and not pathlib.Path(args.out).resolve().parent.is_dir():
    parser.error(f"--out {args.out}: its folder does not exist")
  config = _config(args.model, args.image_size, args.batch, args.dtype)
  rows, alone_step = [], {}
  convolutions = args.fold_convolution.split(",")
  unknown = sorted(set(convolutions) - set(step_functions.FOLD_CONVOLUTIONS))
  if unknown:
    parser.error(f"--fold_convolution: unknown {unknown}; valid: {', '.join(step_functions.FOLD_CONVOLUTIONS)}")
  for n in args.folds:
    for convolution in convolutions if n > 1 else convolutions[:1]:  # one fold: no vmap, both are the same
      rows.append(measure(config, n, args.warmup, args.steps, alone_step, convolution))
      _progress(f"{n} folds ({convolution}): {rows[-1]['at_once_s']:.3f} s at once, {rows[-1]['sequence_s']:.3f} s "
                "in sequence")
    if args.out:  # the table so far: a run stopped at a time limit keeps what it measured
      pathlib.Path(args.out).write_text(report(args, rows, []))
  bounds = [] if args.no_bound else recipe_bounds(args.folds, args.launch_us * 1e-6)
  text = report(args, rows, bounds)
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
  from amr_jax import errors

  try:
    main()
  except errors.RunError as error:  # a config the step cannot be built for: one line
    sys.exit(f"error: {error}")
