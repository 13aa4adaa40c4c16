"""FG-NET, the losses side by side: one backbone, one protocol, one training budget, several seeds.

Each (loss, seed) pair is one ``train_and_evaluate`` run of ``configs/fgnet_<loss>.py``
over every fold of the chosen protocol (subject-grouped k-fold by default,
``--protocol=lopo`` for the paper's 82 folds), so every image is tested once
per run and nothing is selected on test data (each fold reports its last
step). Runs live in ``--workdir/<loss>_seed<seed>/`` and resume, so the
command can be stopped and restarted. Writes ``--workdir/losses.md`` (the
table, and every pair of losses compared subject by subject with a sign-flip
test and a bootstrap interval: ``amr_jax.evaluation.paired_comparison``) and
``--workdir/cumulative_score.png``.

  python -m benchmarks.fgnet_losses --manual_dir=../shared/data/fgnet --workdir=/tmp/fgnet_losses \\
      --image_size=112 --num_epochs=10 --seeds=0,1

With ``--backbone=frozen`` the backbone's features are computed once and each loss trains only the model's
head (``benchmarks/frozen_backbone.py``): minutes on a CPU where fine-tuning takes days, so the full LOPO fits:

  python -m benchmarks.fgnet_losses --manual_dir=../shared/data/fgnet --workdir=/tmp/fgnet_frozen \
      --backbone=frozen --protocol=lopo --image_size=224 --num_epochs=100 --seeds=0,1,2

Any other config field: ``--set=field=value`` (repeatable), e.g. ``--set=batch_size=32``.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import pathlib
import re
import sys

import numpy as np

from amr_jax import errors, experiment
from amr_jax.evaluation import paired_comparison, reports
from benchmarks import frozen_backbone

BASELINE = "no model: the fold's mean training age"
PAIRED_NOTE = (f"each image's absolute error averaged over the seeds; a negative difference means a is better; "
               f"the interval resamples subjects ({paired_comparison.BOOTSTRAP_DRAWS:,} draws), the p-value is a "
               f"two-sided sign-flip test over subjects (every sign pattern up to "
               f"{paired_comparison.EXACT_MAX_GROUPS} subjects, else {paired_comparison.SIGN_FLIP_DRAWS:,} random "
               f"ones, so {1 / (1 + paired_comparison.SIGN_FLIP_DRAWS):.1e} is its floor), Holm-adjusted over the "
               f"pairs.")
CONFIGS = {"cross_entropy": "fgnet_ce", "mean_variance": "fgnet_mv", "amr": "fgnet_amr", "dldl_v2": "fgnet_dldlv2"}


def parse_args(argv=None, prog="python -m benchmarks.fgnet_losses") -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--manual_dir", default="", help="FG-NET's manual directory (config data.manual_dir)")
  parser.add_argument("--data_dir", default="", help="where TFDS builds FG-NET (config data.data_dir)")
  parser.add_argument("--losses", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--protocol", default="kfold", choices=("kfold", "lopo"))
  parser.add_argument("--num_folds", type=int, default=5)
  parser.add_argument("--model", default="efficientnet_lite0")
  parser.add_argument("--pretrained", default="imagenet")
  parser.add_argument("--image_size", type=int, default=112)
  parser.add_argument("--crop", default="aligned", choices=("aligned", "detected", "whole"))
  parser.add_argument("--num_epochs", type=int, default=10)
  parser.add_argument("--backbone", default="finetune", choices=("finetune", "frozen"),
                      help="train the whole model, or only its head on the frozen backbone's features")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="any other config field")
  args = parser.parse_args(argv)
  unknown = sorted(set(args.losses.split(",")) - set(CONFIGS))
  if unknown:
    parser.error(f"--losses: unknown {unknown}; valid: {', '.join(CONFIGS)}")
  if not re.fullmatch(r"\d+(,\d+)*", args.seeds):
    parser.error(f"--seeds: comma-separated whole numbers, e.g. 0,1; got {args.seeds!r}")
  return args


def scaled_milestones(milestones, recipe_epochs: int, num_epochs: int) -> tuple[int, ...]:
  """The recipe's learning-rate drops, placed for its ``recipe_epochs``, at the same proportions of ``num_epochs``."""
  return tuple(sorted({max(1, round(m * num_epochs / recipe_epochs)) for m in milestones}))


def run_config(args, loss: str, seed: int):
  config = importlib.import_module(f"configs.{CONFIGS[loss]}").get_config()
  recipe_epochs = config.num_epochs
  config.update({"model": args.model, "pretrained": args.pretrained, "image_size": args.image_size,
                 "protocol": args.protocol, "num_folds": args.num_folds, "num_epochs": args.num_epochs,
                 "seed": seed, "fold": -1})
  config.data.update({"manual_dir": args.manual_dir, "data_dir": args.data_dir, "crop": args.crop})
  config.milestone_epochs = scaled_milestones(config.milestone_epochs, recipe_epochs, args.num_epochs)
  for item in args.set:
    field, _, text = item.partition("=")
    target = config
    *parents, leaf = field.split(".")
    for parent in parents:
      target = target[parent]
    if leaf not in target:
      raise SystemExit(f"--set {item}: the config has no field {field!r}")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    target[leaf] = value
  return config


def summarise(results: dict[str, list[dict]]) -> str:
  """The table of pooled metrics; with a column of the last epoch's pooled MAE where the runs select on
  validation."""
  selecting = any("last_step_test" in r for runs in results.values() for r in runs)
  last_header = " last epoch's pooled MAE |" if selecting else ""
  lines = ["| loss | pooled MAE (mean ± std over seeds) | CS(5) | mean of per-fold MAEs | std of per-fold MAEs |"
           f"{last_header} seeds |", "|---|---:|---:|---:|---:|" + ("---:|" if selecting else "") + "---:|"]
  for loss, runs in results.items():
    mae = np.array([r["mae"] for r in runs])
    cs5 = np.array([r["cs"][5] for r in runs])
    fold_mean = np.array([r["mean_fold_mae"] for r in runs])
    fold_std = np.array([r["std_fold_mae"] for r in runs])
    last = ""
    if selecting:
      last_mae = np.array([r["last_step_test"]["mae"] for r in runs if "last_step_test" in r])
      last = f" {last_mae.mean():.2f} ± {last_mae.std():.2f} |" if len(last_mae) == len(runs) else " |"
    lines.append(f"| {loss} | {mae.mean():.2f} ± {mae.std():.2f} | {cs5.mean():.3f} | {fold_mean.mean():.2f} | "
                 f"{fold_std.mean():.2f} |{last} {len(runs)} |")
  return "\n".join(lines)


def selection_table(workdir: pathlib.Path, losses: list[str], seeds: list[int]) -> str:
  """Each loss's selected models against its last epoch's, on the same images (Holm over the losses)."""
  runs = {loss: ([workdir / f"{loss}_seed{seed}" / "summary" / "predictions.csv" for seed in seeds],
                 [workdir / f"{loss}_seed{seed}" / "last_step" / "predictions.csv" for seed in seeds])
          for loss in losses}
  if not all(path.exists() for pair in runs.values() for paths in pair for path in paths):
    return ""
  results = []
  for loss, (chosen, last) in runs.items():
    _, chosen_errors, groups = paired_comparison.seed_mean_errors(chosen)
    _, last_errors, _ = paired_comparison.seed_mean_errors(last)
    results.append(paired_comparison.compare(chosen_errors, last_errors, groups))
  adjusted = paired_comparison.holm([r.p_value for r in results])
  return paired_comparison.markdown_table([(f"{loss}: selected", "last epoch", r, float(h))
                                           for loss, r, h in zip(runs, results, adjusted)])


def paired_table(workdir: pathlib.Path, losses: list[str], seeds: list[int]) -> str:
  """Every pair of losses compared on the same images, subjects as the unit of chance (amr_jax.evaluation.paired_comparison)."""
  runs = {loss: [workdir / f"{loss}_seed{seed}" / "summary" / "predictions.csv" for seed in seeds] for loss in losses}
  if len(runs) < 2 or not all(path.exists() for paths in runs.values() for path in paths):
    return ""
  return paired_comparison.markdown_table(paired_comparison.compare_runs(runs))


def main(argv=None) -> None:
  args = parse_args(argv)
  workdir = pathlib.Path(args.workdir)
  seeds = [int(s) for s in args.seeds.split(",")]
  results: dict[str, list[dict]] = {}
  for loss in args.losses.split(","):
    for seed in seeds:
      config = run_config(args, loss, seed)
      if args.backbone == "frozen":
        summary = frozen_backbone.run(config, workdir / "features", workdir / f"{loss}_seed{seed}")
      else:
        summary = experiment.train_and_evaluate(config, workdir / f"{loss}_seed{seed}")
      results.setdefault(loss, []).append(summary)
  if args.backbone == "frozen":  # the folds' features are cached by now, so this costs nothing
    for seed in seeds:
      config = run_config(args, args.losses.split(",")[0], seed)
      data = frozen_backbone.dataset_features(config, workdir / "features")
      results.setdefault(BASELINE, []).append(frozen_backbone.mean_age_baseline(config, data))
  table = summarise(results)
  pairs = paired_table(workdir, args.losses.split(","), seeds)
  selected = selection_table(workdir, args.losses.split(","), seeds)
  settings = {k: v for k, v in vars(args).items() if k not in ("workdir",)}
  text = (f"FG-NET, losses side by side: `python -m benchmarks.fgnet_losses "
          f"{' '.join(sys.argv[1:]) if argv is None else ' '.join(argv)}`\n\nSettings: {json.dumps(settings)}\n\n"
          f"{table}\n" + (f"\nPaired differences: {PAIRED_NOTE}\n\n{pairs}\n" if pairs else "")
          + (f"\nWhat validation selection changes, per loss (the same paired test):\n\n{selected}\n"
             if selected else ""))
  (workdir / "losses.md").write_text(text)
  reports.plot_cumulative_score(workdir / "cumulative_score.png",
                                {loss: np.mean([r["cs"] for r in runs], axis=0) for loss, runs in results.items()},
                                title=f"FG-NET {args.protocol}, {args.model} {args.image_size} px"
                                      + (", frozen backbone" if args.backbone == "frozen" else ""))
  print(text)


if __name__ == "__main__":
  try:
    main()
  except errors.RunError as error:  # a config, data or workdir mistake: one line, as run_train.py says it
    sys.exit(f"error: {error}")
