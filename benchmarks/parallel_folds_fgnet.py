"""All 82 FG-NET folds trained 8 at once against the same folds one by one, by run_train.py, on the real data.

  python -m benchmarks.parallel_folds_fgnet --out amr.md                       # the recipe's AMR loss
  python -m benchmarks.parallel_folds_fgnet --config=fgnet_ce --out ce.md      # cross-entropy

Runs the command ``python run_train.py --config=configs/fgnet_amr.py --config.parallel_folds=8`` (the recipe's
loss, optimizer, schedule and augmentation) and the same command with ``parallel_folds=1``, both made small
enough for a CPU by the same overrides (``--model``, 64 px, ``--batch_size``, ``--steps`` steps per fold; on
XLA:CPU, 8 folds of 64 images at once in float64 take minutes a step) and computing in
float64 (``JAX_ENABLE_X64=1``), so that two arrangements of the same arithmetic can only differ by float64
rounding. Then, fold by fold, it compares the final parameters (the largest difference, relative to the largest
parameter change of the one-by-one run) and the test predictions, and the pooled summaries. Prints a Markdown
report (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _command(workdir: pathlib.Path, args, parallel_folds: int) -> list[str]:
  return [sys.executable, "run_train.py", f"--config=configs/{args.config}.py", f"--workdir={workdir}",
          f"--config.parallel_folds={parallel_folds}", f"--config.data.manual_dir={args.manual_dir}",
          f"--config.data.data_dir={args.data_dir}", f"--config.model={args.model}", "--config.pretrained=",
          f"--config.image_size={args.image_size}", f"--config.batch_size={args.batch_size}",
          f"--config.num_train_steps={args.steps}", "--config.dtype=float64", "--config.log_every_steps=1"]


def _run(command: list[str], log: pathlib.Path) -> float:
  env = {**os.environ, "JAX_ENABLE_X64": "1"}
  start = time.perf_counter()
  with log.open("w") as out:
    result = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
  if result.returncode:
    sys.exit(f"{' '.join(command)} failed (exit {result.returncode}); its output: {log}")
  return time.perf_counter() - start


def _fold_states(workdir: pathlib.Path):
  import jax

  from amr_jax import workdir_layout
  from amr_jax.training import checkpoints, train_state

  config = workdir_layout.load(workdir)
  with jax.enable_x64(True):
    template = jax.device_get(train_state.initial_train_state(config, train_state.model(config),
                                                               train_state.optimizer(config)))
    for folder in sorted((workdir / "folds").iterdir()):
      yield folder.name, checkpoints.Checkpoints(folder / "checkpoints").restore(template), template


def compare(one_by_one: pathlib.Path, at_once: pathlib.Path) -> dict:
  import jax

  from amr_jax.evaluation import reports

  worst_params, worst_predictions, folds = 0.0, 0.0, 0
  others = {name: state for name, state, _ in _fold_states(at_once)}
  for name, alone, start in _fold_states(one_by_one):
    together = others.pop(name)
    assert int(together.step) == int(alone.step), name
    change = max(float(np.abs(a - s).max()) for a, s in zip(jax.tree.leaves(alone.params),
                                                             jax.tree.leaves(start.params)))
    difference = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(alone.params),
                                                                 jax.tree.leaves(together.params)))
    worst_params = max(worst_params, difference / change)
    mine = reports.read_predictions_csv(at_once / "folds" / name / "test" / "predictions.csv")
    theirs = reports.read_predictions_csv(one_by_one / "folds" / name / "test" / "predictions.csv")
    assert list(mine["file_name"]) == list(theirs["file_name"]), name
    worst_predictions = max(worst_predictions, float(np.abs(mine["predicted_age"] - theirs["predicted_age"]).max()))
    folds += 1
  assert not others, f"folds trained at once only: {sorted(others)}"
  summaries = [json.loads((w / "summary" / "metrics.json").read_text()) for w in (one_by_one, at_once)]
  return {"folds": folds, "params": worst_params, "predictions": worst_predictions, "summaries": summaries}


def _shown(command: list[str], args) -> list[str]:
  """The command as the report shows it: the data folders relative to the checkout, or under the workdir W."""
  manual = os.path.relpath(args.manual_dir, ROOT)
  return [part.replace(args.manual_dir, manual).replace(args.data_dir, "W/tfds") for part in command]


def _cs5(summary: dict) -> float:
  cs = summary["cs"]
  return cs["5"] if isinstance(cs, dict) else cs[5]


def report(args, seconds: dict, result: dict) -> str:
  alone, together = result["summaries"]
  lines = [
      f"# 82 FG-NET folds of `configs/{args.config}.py`: 8 at once against one by one ({datetime.date.today()})", "",
      f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; no accelerator.", "",
      f"Command (`python -m benchmarks.parallel_folds_fgnet --config={args.config}`), for `parallel_folds` 8 and 1:",
      "",
      "```", "JAX_ENABLE_X64=1 python " + " ".join(_shown(_command(pathlib.Path("W"), args, 8)[1:], args)), "```", "",
      "| | one by one | 8 at once |", "|---|---:|---:|",
      f"| folds trained | {alone['num_folds']} | {together['num_folds']} |",
      f"| pooled MAE | {alone['mae']:.6f} | {together['mae']:.6f} |",
      f"| mean of per-fold MAEs | {alone['mean_fold_mae']:.6f} | {together['mean_fold_mae']:.6f} |",
      f"| CS(5) | {_cs5(alone):.6f} | {_cs5(together):.6f} |",
      f"| wall time (s) | {seconds['one_by_one']:.0f} | {seconds['at_once']:.0f} |", "",
      f"Over the {result['folds']} folds, the largest difference of a final parameter is "
      f"{result['params']:.1e} of that fold's largest parameter change, and the largest difference of a test "
      f"prediction {result['predictions']:.1e} years (predictions.csv keeps 4 decimals).", ""]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks.parallel_folds_fgnet", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--manual_dir", default=str(ROOT.parent / "shared" / "data" / "fgnet"))
  parser.add_argument("--data_dir", default="", help="where TFDS builds FG-NET (default: a temporary folder)")
  parser.add_argument("--config", default="fgnet_amr", help="configs/<this>.py")
  parser.add_argument("--model", default="tiny_age_net")
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--batch_size", type=int, default=16, help="images per fold and step (the recipe: 64)")
  parser.add_argument("--steps", type=int, default=2, help="training steps per fold")
  parser.add_argument("--workdir", default="", help="where both runs write (default: a temporary folder)")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  if not (ROOT / "configs" / f"{args.config}.py").is_file():
    parser.error(f"--config={args.config}: no configs/{args.config}.py")
  if args.out and not pathlib.Path(args.out).resolve().parent.is_dir():
    parser.error(f"--out {args.out}: its folder does not exist")
  workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="parallel_folds_fgnet_"))
  # Runs already there would be resumed, not timed, and compared as they are.
  if any((workdir / name).exists() for name in ("one_by_one", "at_once")):
    parser.error(f"--workdir {workdir} already holds runs of this script; give a new folder")
  args.data_dir = args.data_dir or str(workdir / "tfds")
  from amr_jax import errors
  from amr_jax.data import tfds_builders

  try:
    tfds_builders.build("fgnet", manual_dir=args.manual_dir, data_dir=args.data_dir)  # built once, not timed
  except errors.RunError as error:
    sys.exit(f"error: {error}")
  seconds = {}
  for name, parallel in (("one_by_one", 1), ("at_once", 8)):
    print(f"training all folds, {name.replace('_', ' ')} -> {workdir / name} (log: {workdir / name}.log)", flush=True)
    seconds[name] = _run(_command(workdir / name, args, parallel), workdir / f"{name}.log")
  text = report(args, seconds, compare(workdir / "one_by_one", workdir / "at_once"))
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
  main()
