"""Two backbones, loss by loss, on the same FG-NET images: the paired comparison of two fgnet_losses.py workdirs.

Each workdir is a finished ``benchmarks/fgnet_losses.py`` run (same protocol, losses and seeds; another
``--model``). For every loss, the two backbones' absolute errors (averaged over the seeds) are compared image by
image with subjects as the unit of chance (``amr_jax.evaluation.paired_comparison``: a sign-flip test and a bootstrap
interval), Holm-adjusted over the losses. Writes the table to ``--out`` and prints it:

  python -m benchmarks.backbone_pairs --a=/tmp/fgnet_frozen_lite2 --a_name=efficientnet_lite2 \\
      --b=/tmp/fgnet_frozen --b_name=efficientnet_lite0 --seeds=0,1 --out=/tmp/backbones.md
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from amr_jax.evaluation import paired_comparison
from benchmarks.fgnet_losses import CONFIGS, PAIRED_NOTE


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.backbone_pairs", description=__doc__.split("\n")[0])
  for side in ("a", "b"):
    parser.add_argument(f"--{side}", required=True, help="a finished fgnet_losses.py --workdir")
    parser.add_argument(f"--{side}_name", required=True, help="what the table calls it (its backbone)")
  parser.add_argument("--losses", default=",".join(CONFIGS))
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--out", required=True, help="the Markdown file to write")
  return parser.parse_args(argv)


def predictions(workdir: pathlib.Path, loss: str, seeds: list[int]) -> list[pathlib.Path]:
  paths = [workdir / f"{loss}_seed{seed}" / "summary" / "predictions.csv" for seed in seeds]
  missing = [str(p) for p in paths if not p.exists()]
  if missing:
    raise SystemExit(f"error: {', '.join(missing)} missing: finish the fgnet_losses.py run in {workdir} first.")
  return paths


def table(args) -> str:
  seeds = [int(s) for s in args.seeds.split(",")]
  a, b = pathlib.Path(args.a), pathlib.Path(args.b)
  rows, results = [], []
  for loss in args.losses.split(","):
    names, errors_a, groups = paired_comparison.seed_mean_errors(predictions(a, loss, seeds))
    other_names, errors_b, _ = paired_comparison.seed_mean_errors(predictions(b, loss, seeds))
    if list(names) != list(other_names):
      raise SystemExit(f"error: {a} and {b} tested other images for {loss}; compare runs of one protocol.")
    rows.append(f"{loss}: {args.a_name}")
    results.append(paired_comparison.compare(errors_a, errors_b, groups))
  adjusted = paired_comparison.holm([r.p_value for r in results])
  return paired_comparison.markdown_table([(row, args.b_name, r, float(h))
                                           for row, r, h in zip(rows, results, adjusted)])


def main(argv=None) -> None:
  args = parse_args(argv)
  command = " ".join(sys.argv[1:] if argv is None else argv)
  text = (f"FG-NET, two backbones loss by loss: `python -m benchmarks.backbone_pairs {command}`\n\n"
          f"Paired differences ({args.a_name} − {args.b_name}): {PAIRED_NOTE.replace('over the pairs', 'over the losses')}"
          f"\n\n{table(args)}\n")
  pathlib.Path(args.out).write_text(text)
  print(text)


if __name__ == "__main__":
  main()
