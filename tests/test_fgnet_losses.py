"""benchmarks/fgnet_losses.py in its default mode, fine-tuning the whole model: the command the README gives for a GPU."""

import json

import numpy as np

from amr_jax.evaluation import paired_comparison, reports
from benchmarks import fgnet_losses


def test_finetune_comparison_writes_table_pairs_and_resumes(fgnet_dirs, tmp_path):
  manual, data_dir = fgnet_dirs
  argv = [f"--workdir={tmp_path}", f"--manual_dir={manual}", f"--data_dir={data_dir}", "--model=tiny_age_net",
          "--pretrained=", "--image_size=64", "--num_epochs=1", "--num_folds=2", "--seeds=0",
          "--losses=amr,cross_entropy", "--set=batch_size=4", "--set=eval_batch_size=8",
          "--set=checkpoint_every_steps=100", "--set=log_every_steps=1"]
  fgnet_losses.main(argv)
  table = (tmp_path / "losses.md").read_text()
  summaries = {}
  for loss in ("amr", "cross_entropy"):
    run = tmp_path / f"{loss}_seed0"
    summaries[loss] = json.loads((run / "summary" / "metrics.json").read_text())
    assert summaries[loss]["count"] == 16 and summaries[loss]["num_folds"] == 2
    assert f"| {loss} | {summaries[loss]['mae']:.2f} ± 0.00 | {summaries[loss]['cs'][5]:.3f} |" in table
    config = json.loads((run / "config.json").read_text())
    # The recipe at 1 epoch: every milestone scaled to epoch 1, the rest of the command applied.
    assert (config["num_epochs"], config["milestone_epochs"], config["image_size"]) == (1, [1], 64)
    assert (config["protocol"], config["num_folds"], config["seed"]) == ("kfold", 2, 0)
  # The paired row is amr_jax.evaluation.paired_comparison over the two runs' predictions.
  row = next(line for line in table.splitlines() if line.startswith("| amr vs cross_entropy |"))
  files = {loss: [tmp_path / f"{loss}_seed0" / "summary" / "predictions.csv"] for loss in summaries}
  (_, _, result, _), = paired_comparison.compare_runs(files)
  assert result.exact and result.num_groups == 4
  assert row.startswith(f"| amr vs cross_entropy | {result.mae_difference:+.2f} | ")
  np.testing.assert_allclose(result.mae_difference, summaries["amr"]["mae"] - summaries["cross_entropy"]["mae"],
                             atol=1e-3)  # predictions.csv keeps 4 decimals
  predictions = reports.read_predictions_csv(files["amr"][0])
  assert sorted(predictions["file_name"]) == sorted(set(predictions["file_name"]))  # each image tested once
  # Running the command again resumes finished runs: no new checkpoint, the last ones re-evaluated to the same report.
  checkpoints = sorted(p.relative_to(tmp_path) for p in tmp_path.glob("*_seed0/folds/*/checkpoints/*"))
  assert len(checkpoints) == 4  # 2 losses x 2 folds, the last step each
  metrics_text = (tmp_path / "amr_seed0" / "summary" / "metrics.json").read_text()
  fgnet_losses.main(argv)
  assert sorted(p.relative_to(tmp_path) for p in tmp_path.glob("*_seed0/folds/*/checkpoints/*")) == checkpoints
  assert (tmp_path / "amr_seed0" / "summary" / "metrics.json").read_text() == metrics_text
  assert (tmp_path / "losses.md").read_text() == table
