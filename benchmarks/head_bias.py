"""The head's starting bias, zeros against the training-age prior, on the FG-NET comparison of the losses.

Every (loss, seed) run of ``fgnet_losses.py`` (``--backbone=frozen`` by default here) is made twice, with
``config.head_bias="zeros"`` and ``"age_prior"`` (``amr_jax.models.head_init``), on the same features (or images), folds,
seeds and batches; the runs of one loss differ only in the head's starting bias. Writes ``--workdir/head_bias.md``:
per loss, the pooled MAE of each (mean and std over seeds), the mean training loss over the first 10 steps, and the
paired difference (prior - zeros) on the same images with subjects as the unit of chance, Holm-adjusted over the
losses (``amr_jax.evaluation.paired_comparison``).

  python -m benchmarks.head_bias --manual_dir=../shared/data/fgnet --workdir=/tmp/head_bias \\
      --image_size=112 --num_epochs=100 --seeds=0,1

Every other flag is ``fgnet_losses.py``'s; ``--backbone=finetune`` trains whole models (the first 10 steps' loss is
then the first logged one, with ``log_every_steps`` 10).
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

from amr_jax import errors, experiment
from amr_jax.evaluation import paired_comparison
from amr_jax.training import metric_writers
from benchmarks import fgnet_losses, frozen_backbone

HEAD_BIASES = ("zeros", "age_prior")


def run_all(args, workdir: pathlib.Path) -> dict[tuple[str, str], list[pathlib.Path]]:
  """Trains (or reads back) every run; returns the run folders of each (head bias, loss), one per seed."""
  folders = {}
  seeds = [int(s) for s in args.seeds.split(",")]
  for head_bias in HEAD_BIASES:
    for loss in args.losses.split(","):
      for seed in seeds:
        config = fgnet_losses.run_config(args, loss, seed)
        config.head_bias = head_bias
        run_dir = workdir / head_bias / f"{loss}_seed{seed}"
        if args.backbone == "frozen":
          frozen_backbone.run(config, workdir / "features", run_dir)
        else:
          experiment.train_and_evaluate(config, run_dir)
        folders.setdefault((head_bias, loss), []).append(run_dir)
  return folders


def first_loss(run_dir: pathlib.Path) -> float:
  """The mean training loss of a run's first 10 steps, over its folds."""
  if (run_dir / "train_loss.json").exists():  # a frozen-backbone run
    return json.loads((run_dir / "train_loss.json").read_text())["first_10_steps"]
  logs = sorted(run_dir.glob("folds/*/metrics.jsonl"))
  return float(np.mean([metric_writers.read_jsonl(path)[0]["train/loss"] for path in logs]))


def table(args, folders: dict[tuple[str, str], list[pathlib.Path]]) -> str:
  losses = args.losses.split(",")
  # One pair per loss (a = the prior, b = zeros); Holm's adjustment is then over the losses.
  pairs = [paired_comparison.compare_runs({head_bias: [d / "summary" / "predictions.csv"
                                                       for d in folders[head_bias, loss]]
                                           for head_bias in reversed(HEAD_BIASES)})[0][2] for loss in losses]
  adjusted = paired_comparison.holm([c.p_value for c in pairs])
  lines = ["| loss | MAE, zeros | MAE, age prior | loss over the first 10 steps, zeros / prior | prior − zeros "
           "(paired) | 95% interval | p (sign flip) | Holm p | subjects prior better / zeros better |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for loss, c, holm_p in zip(losses, pairs, adjusted):
    mae = [np.array([json.loads((d / "summary" / "metrics.json").read_text())["mae"] for d in folders[hb, loss]])
           for hb in HEAD_BIASES]
    first = [np.mean([first_loss(d) for d in folders[hb, loss]]) for hb in HEAD_BIASES]
    lines.append(f"| {loss} | {mae[0].mean():.2f} ± {mae[0].std():.2f} | {mae[1].mean():.2f} ± {mae[1].std():.2f} | "
                 f"{first[0]:.2f} / {first[1]:.2f} | {c.mae_difference:+.3f} | [{c.interval[0]:+.3f}, "
                 f"{c.interval[1]:+.3f}] | {paired_comparison.format_p_value(c.p_value)} | "
                 f"{paired_comparison.format_p_value(holm_p)} | {c.groups_a_better} / {c.groups_b_better} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = fgnet_losses.parse_args(["--backbone=frozen"] + argv, prog="python -m benchmarks.head_bias")
  if any(item.partition("=")[0] == "head_bias" for item in args.set):
    raise SystemExit("--set head_bias: head_bias.py runs both starts itself; leave it out.")
  workdir = pathlib.Path(args.workdir)
  folders = run_all(args, workdir)
  text = (f"FG-NET, the head's starting bias: `python -m benchmarks.head_bias {' '.join(argv)}`\n\n"
          f"Settings: {json.dumps({k: v for k, v in vars(args).items() if k != 'workdir'})}\n\n"
          f"Each image's absolute error averaged over the seeds; a negative difference means the age prior is better; "
          f"the interval resamples subjects, the p-value is a two-sided sign-flip test over subjects, Holm-adjusted "
          f"over the losses.\n\n{table(args, folders)}\n")
  (workdir / "head_bias.md").write_text(text)
  print(text)


if __name__ == "__main__":
  try:
    main()
  except errors.RunError as error:  # a config, data or workdir mistake: one line
    sys.exit(f"error: {error}")
