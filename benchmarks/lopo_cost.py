"""The 82-fold protocol's wall time from measured step and compile times: a cost model, not a measurement.

  python -m benchmarks.lopo_cost                                     # the figures measured on one H200 so far
  python -m benchmarks.lopo_cost --at_once_step_s=0.2 --group_size=8 --compile_s=60 --alone_images_per_s=9000

The protocol is ``--folds`` folds of ``--steps`` steps of ``--batch`` images (the recipe: 82 x 1500 x 64, 7.9 M
images). Its time, for each way of running it:

- in sequence, one compiled step reused: ``compile + folds * steps * batch / alone_images_per_s``;
- ``N = group_size`` folds at once: ``ceil(folds / N)`` groups; the last, of ``r = folds mod N`` folds, is either
  compiled on its own (two compilations: ``2 compile + (groups - 1) steps t_N + steps t_r``) or padded to ``N`` folds
  whose results are dropped (one compilation: ``compile + groups steps t_N``). Padding pays when
  ``steps (t_N - t_r) < compile``. ``t_r`` is unmeasured on a GPU: the table shows both ends, ``t_r = t_N r / N``
  (a step's time grows with its folds, as on the CPU) and ``t_r = t_N`` (a launch-bound step, as XLA's cost
  analysis suggests: ``benchmarks/lopo_speed.py``).

Evaluation is left out (a fold tests on about 12 images). The defaults are the first H200 run's figures
(JAX 0.11.2, CUDA 13; ``docs/training.md``): 8 folds of EfficientNet-Lite0 at 224 px, float32, batch 64 per fold,
0.243 s a step; compiling and the first 100 steps took about 160 s, so compiling about 160 - 100 x 0.243 = 136 s;
one model alone (``benchmarks/speed.py``, bfloat16, batch 128) 7,306 images/s, taken here as the rate of the
recipe's batch of 64 in sequence, which it can only overstate. Every output line is a projection from those.
"""

from __future__ import annotations

import argparse
import math
import sys

GOAL_S = 600.0  # the goal: the 82 folds in 10 minutes, compile and evaluation included


def sequence_seconds(folds: int, steps: int, batch: int, alone_images_per_s: float, compile_s: float) -> float:
  """Folds one after another, one compiled step reused."""
  return compile_s + folds * steps * batch / alone_images_per_s


def at_once_seconds(folds: int, steps: int, group_size: int, step_s: float, last_group_step_s: float,
                    compile_s: float, *, pad_last_group: bool) -> float:
  """``group_size`` folds at once, ``step_s`` a step; the last, smaller group (``last_group_step_s`` a step) compiled
  on its own, or padded to ``group_size`` folds (one compilation, the padded folds' work wasted)."""
  full, rest = divmod(folds, group_size)
  if rest == 0 or pad_last_group:
    return compile_s + math.ceil(folds / group_size) * steps * step_s
  return (2 if full else 1) * compile_s + full * steps * step_s + steps * last_group_step_s


def _minutes(seconds: float) -> str:
  return f"{seconds / 60:.1f} min"


def report(args) -> str:
  images = args.folds * args.steps * args.batch
  rest = args.folds % args.group_size
  rows = [("in sequence, one compiled step reused", 1,
           sequence_seconds(args.folds, args.steps, args.batch, args.alone_images_per_s, args.compile_s))]
  scaled, flat = args.at_once_step_s * rest / args.group_size, args.at_once_step_s
  if rest:
    for name, last in ((f"t_{rest} = t_{args.group_size} x {rest}/{args.group_size}", scaled),
                       (f"t_{rest} = t_{args.group_size} (launch-bound)", flat)):
      rows.append((f"{args.group_size} at once, the last {rest} compiled apart, {name}", 2,
                   at_once_seconds(args.folds, args.steps, args.group_size, args.at_once_step_s, last,
                                   args.compile_s, pad_last_group=False)))
  rows.append((f"{args.group_size} at once, {'the last group padded, ' if rest else ''}one compilation", 1,
               at_once_seconds(args.folds, args.steps, args.group_size, args.at_once_step_s, flat, args.compile_s,
                               pad_last_group=True)))
  lines = ["# The 82-fold protocol's wall time: a cost model (a projection, not a measurement)", "",
           f"- command: `{' '.join(['python -m benchmarks.lopo_cost', *sys.argv[1:]])}`",
           f"- protocol: {args.folds} folds x {args.steps} steps x {args.batch} images = {images / 1e6:.2f} M images; "
           f"goal {GOAL_S:.0f} s",
           f"- inputs: {args.group_size} folds at once {args.at_once_step_s:g} s a step "
           f"({args.group_size * args.batch / args.at_once_step_s:,.0f} images/s); one model alone "
           f"{args.alone_images_per_s:,.0f} images/s; a compilation {args.compile_s:g} s", "",
           "| way | compilations | time | images/s over the folds | time / goal |", "|---|---:|---:|---:|---:|"]
  for name, compilations, seconds in rows:
    lines.append(f"| {name} | {compilations} | {_minutes(seconds)} | {images / seconds:,.0f} | "
                 f"{seconds / GOAL_S:.1f}x |")
  if args.compile_s >= GOAL_S:
    lines += ["", f"One {args.compile_s:g} s compilation alone takes the goal's {GOAL_S:.0f} s."]
  else:
    needed = images / (GOAL_S - args.compile_s)
    lines += ["", f"The goal needs {needed:,.0f} images/s over the folds after one {args.compile_s:g} s compilation: "
              f"{needed / args.alone_images_per_s:.2f}x one model alone, "
              f"{needed / (args.group_size * args.batch / args.at_once_step_s):.1f}x {args.group_size} folds at "
              "once as measured."]
  if rest:
    break_even = args.compile_s / args.steps
    lines.append(f"Padding the last group pays when t_{args.group_size} - t_{rest} < {break_even * 1e3:.0f} ms "
                 f"(one compilation / {args.steps} steps).")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.lopo_cost", description=__doc__.splitlines()[0])
  parser.add_argument("--folds", type=int, default=82)
  parser.add_argument("--steps", type=int, default=1500, help="steps a fold")
  parser.add_argument("--batch", type=int, default=64, help="images a fold and step")
  parser.add_argument("--group_size", type=int, default=8, help="folds at once")
  parser.add_argument("--at_once_step_s", type=float, default=0.243, help="seconds a step of group_size folds")
  parser.add_argument("--alone_images_per_s", type=float, default=7306.0, help="one model alone, images a second")
  parser.add_argument("--compile_s", type=float, default=136.0, help="seconds one compilation of the step takes")
  args = parser.parse_args(argv)
  for name in ("folds", "steps", "batch", "group_size", "at_once_step_s", "alone_images_per_s"):
    if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
      parser.error(f"--{name} must be > 0 and finite; got {getattr(args, name)}")
  if not (math.isfinite(args.compile_s) and args.compile_s >= 0):
    parser.error(f"--compile_s must be >= 0 and finite; got {args.compile_s}")
  if args.group_size > args.folds:
    parser.error(f"--group_size={args.group_size} is more than --folds={args.folds}: at most every fold at once")
  print(report(args), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
