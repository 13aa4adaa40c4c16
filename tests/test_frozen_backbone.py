"""benchmarks/fgnet_losses.py --backbone=frozen: features as the head sees them, per-fold heads, the report."""

import json

import jax
import numpy as np
import pytest

import training_setup
from amr_jax.data import augment
from amr_jax.evaluation import reports
from amr_jax.training import train_state
from benchmarks import fgnet_losses, frozen_backbone


# Identities in float64 (dtype="float64" under jax.enable_x64): a head's logit sums 128 products and a
# backbone's features ~10^4, each rounding at 1e-16; a wrong layer or a fold that saw another's data is off
# by percents.
FLOAT64_RTOL = 1e-10


def test_head_inputs_are_what_the_head_layer_receives():
  with jax.enable_x64(True):
    config = training_setup.config("fgnet_amr", dtype="float64")
    model = train_state.model(config, axis_name=None)
    variables = train_state.initial_variables(config, model)
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    features = frozen_backbone.head_inputs(model, variables, images, batch_size=2)  # 5 = 2 + 2 + 1 padded
    logits = model.apply(variables, augment.to_float(images), train=False)
  head = variables["params"]["fc"]
  assert features.shape == (5, head["kernel"].shape[0]) and features.dtype == np.float64
  np.testing.assert_allclose(features @ np.asarray(head["kernel"]) + np.asarray(head["bias"]), logits,
                             rtol=FLOAT64_RTOL, atol=FLOAT64_RTOL * np.abs(logits).max())


def test_folds_train_independently(fgnet_dirs, tmp_path):
  manual, data_dir = fgnet_dirs
  config = training_setup.config("fgnet_amr", protocol="kfold", num_folds=2, num_train_steps=-1, num_epochs=3,
                                 **{"data.manual_dir": str(manual), "data.data_dir": str(data_dir)})
  data = frozen_backbone.dataset_features(config, tmp_path)
  _, splits = frozen_backbone.splits(config, data["subject_id"])
  assert [len(s.train) for s in splits] == [8, 8]
  config.dtype = "float64"  # the heads only: the features above are the float32 ones every run uses
  with jax.enable_x64(True):
    _, both, values, _ = frozen_backbone.train_heads(config, data, [s.train for s in splits])
    _, alone, _, _ = frozen_backbone.train_heads(config, data, [splits[0].train])
  assert values.shape == (2, 3 * 8 // config.batch_size) and both["kernel"].dtype == np.float64
  jax.tree.map(lambda b, a: np.testing.assert_allclose(b[0], a[0], rtol=FLOAT64_RTOL,
                                                       atol=FLOAT64_RTOL * np.abs(a[0]).max()), both, alone)
  # and the two folds' heads did train differently
  assert not np.allclose(both["kernel"][0], both["kernel"][1])


def test_a_selecting_run_keeps_each_folds_epoch_of_lowest_validation_mae(fgnet_dirs, tmp_path):
  """Against runs of 1..4 epochs: each fold's selected head is the one whose validation MAE is the lowest."""
  manual, data_dir = fgnet_dirs
  config = training_setup.config("fgnet_amr", protocol="kfold", num_folds=2, num_train_steps=-1, num_epochs=4,
                                 num_validation_subjects=1, model_selection="validation_mae", eval_every_epochs=1,
                                 **{"data.manual_dir": str(manual), "data.data_dir": str(data_dir)})
  data = frozen_backbone.dataset_features(config, tmp_path)
  _, splits = frozen_backbone.splits(config, data["subject_id"])
  trains, validations = [s.train for s in splits], [s.validation for s in splits]
  assert [len(v) for v in validations] == [4, 4]
  config.dtype = "float64"
  with jax.enable_x64(True):
    _, last, _, selected = frozen_backbone.train_heads(config, data, trains, validations)
    shorter = []
    for epochs in range(1, 5):
      plain = config.copy_and_resolve_references()
      plain.update({"num_epochs": epochs, "model_selection": "last"})
      shorter.append(frozen_backbone.train_heads(plain, data, trains)[1])
  features = np.asarray(data["features"], np.float64)

  def validation_mae(params, fold):
    logits = features[validations[fold]] @ np.asarray(params["kernel"][fold]) + np.asarray(params["bias"][fold])
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.mean(np.abs(probs @ np.arange(config.num_classes) - data["age"][validations[fold]]))

  for fold in range(2):
    scores = [validation_mae(params, fold) for params in shorter]
    best = int(np.argmin(scores))
    assert selected["epoch"][fold] == best + 1
    np.testing.assert_allclose(selected["score"][fold], scores[best], rtol=FLOAT64_RTOL)
    for name in ("kernel", "bias"):
      np.testing.assert_allclose(selected["params"][name][fold], shorter[best][name][fold], rtol=FLOAT64_RTOL,
                                 atol=FLOAT64_RTOL * np.abs(shorter[best][name][fold]).max())
      np.testing.assert_allclose(last[name][fold], shorter[-1][name][fold], rtol=FLOAT64_RTOL,
                                 atol=FLOAT64_RTOL * np.abs(shorter[-1][name][fold]).max())


def test_frozen_lopo_comparison_writes_table_and_reports(fgnet_dirs, tmp_path):
  manual, data_dir = fgnet_dirs
  argv = [f"--workdir={tmp_path}", f"--manual_dir={manual}", f"--data_dir={data_dir}", "--backbone=frozen",
          "--protocol=lopo", "--model=tiny_age_net", "--pretrained=", "--image_size=64", "--num_epochs=2",
          "--seeds=0", "--losses=amr,cross_entropy", "--set=batch_size=4"]
  fgnet_losses.main(argv)
  table = (tmp_path / "losses.md").read_text()
  assert "| amr |" in table and "| cross_entropy |" in table and "--backbone=frozen" in table
  assert (tmp_path / "cumulative_score.png").stat().st_size > 0
  cache = tmp_path / "features" / "tiny_age_net_random-seed0_64px_aligned.npz"
  written = cache.stat().st_mtime_ns
  with np.load(cache) as data:
    ages, subjects = data["age"], data["subject_id"]
  baseline = np.mean(np.concatenate([np.abs(ages[subjects == s] - ages[subjects != s].mean())
                                     for s in np.unique(subjects)]))
  assert f"| {fgnet_losses.BASELINE} | {baseline:.2f} ± 0.00 |" in table
  summary = json.loads((tmp_path / "amr_seed0" / "summary" / "metrics.json").read_text())
  assert summary["count"] == 16 and summary["num_folds"] == 4
  # The pair compared subject by subject: 4 subjects, so the sign-flip test is exact.
  other = json.loads((tmp_path / "cross_entropy_seed0" / "summary" / "metrics.json").read_text())
  row = next(line for line in table.splitlines() if line.startswith("| amr vs cross_entropy |"))
  assert f"| {summary['mae'] - other['mae']:+.2f} |" in row
  better, worse = (int(n) for n in row.split("|")[-2].split("/"))
  assert better + worse == 4
  per_fold = reports.read_predictions_csv(tmp_path / "amr_seed0" / "summary" / "per_fold.csv")
  assert list(per_fold["fold"]) == ["subject 1", "subject 2", "subject 3", "subject 4"]
  # Run again in a new workdir sharing the features: they are reused, and the result repeats exactly.
  (tmp_path / "again").mkdir()
  (tmp_path / "features").rename(tmp_path / "again" / "features")
  fgnet_losses.main([f"--workdir={tmp_path / 'again'}"] + argv[1:-2] + ["--losses=amr", "--set=batch_size=4"])
  assert (tmp_path / "again" / "features" / cache.name).stat().st_mtime_ns == written
  again = json.loads((tmp_path / "again" / "amr_seed0" / "summary" / "metrics.json").read_text())
  assert again["mae"] == summary["mae"]
  # The first workdir resumes (nothing retrained: its report stays as written), and refuses other settings.
  report = tmp_path / "amr_seed0" / "summary" / "metrics.json"
  report_written = report.stat().st_mtime_ns
  fgnet_losses.main(argv)
  assert report.stat().st_mtime_ns == report_written
  with pytest.raises(ValueError, match="another config"):
    fgnet_losses.main(argv[:-1] + ["--set=batch_size=2"])


def test_a_selecting_comparison_reports_the_last_epoch_beside_the_selected_one(fgnet_dirs, tmp_path):
  manual, data_dir = fgnet_dirs
  argv = [f"--workdir={tmp_path}", f"--manual_dir={manual}", f"--data_dir={data_dir}", "--backbone=frozen",
          "--num_folds=2", "--model=tiny_age_net", "--pretrained=", "--image_size=64", "--num_epochs=3",
          "--seeds=0", "--losses=amr,dldl_v2", "--set=batch_size=4", "--set=model_selection=validation_mae",
          "--set=num_validation_subjects=1", "--set=eval_every_epochs=1"]
  fgnet_losses.main(argv)
  table = (tmp_path / "losses.md").read_text()
  summary = json.loads((tmp_path / "amr_seed0" / "summary" / "metrics.json").read_text())
  last = json.loads((tmp_path / "amr_seed0" / "last_step" / "metrics.json").read_text())
  assert summary["model_selection"] == "validation_mae" and summary["last_step_test"]["mae"] == last["mae"]
  row = next(line for line in table.splitlines() if line.startswith("| amr |"))
  assert f"| {summary['mae']:.2f} ± 0.00 |" in row and f"| {last['mae']:.2f} ± 0.00 |" in row
  pair = next(line for line in table.splitlines() if line.startswith("| amr: selected vs last epoch |"))
  assert f"| {summary['mae'] - last['mae']:+.2f} |" in pair
  epochs = json.loads((tmp_path / "amr_seed0" / "train_loss.json").read_text())["selected_epochs"]
  assert len(epochs) == 2 and all(1 <= e <= 3 for e in epochs)


def test_two_backbones_are_compared_loss_by_loss_on_the_same_images(fgnet_dirs, tmp_path):
  from benchmarks import backbone_pairs
  manual, data_dir = fgnet_dirs
  for size in (64, 72):  # two "backbones": the same tiny network on other inputs
    fgnet_losses.main([f"--workdir={tmp_path / str(size)}", f"--manual_dir={manual}", f"--data_dir={data_dir}",
                       "--backbone=frozen", "--num_folds=2", "--model=tiny_age_net", "--pretrained=",
                       f"--image_size={size}", "--num_epochs=2", "--seeds=0", "--losses=amr,dldl_v2",
                       "--set=batch_size=4"])
  out = tmp_path / "pairs.md"
  backbone_pairs.main([f"--a={tmp_path / '72'}", "--a_name=at72", f"--b={tmp_path / '64'}", "--b_name=at64",
                       "--losses=amr,dldl_v2", "--seeds=0", f"--out={out}"])
  text = out.read_text()
  for loss in ("amr", "dldl_v2"):
    mae = {size: json.loads((tmp_path / str(size) / f"{loss}_seed0" / "summary" / "metrics.json").read_text())["mae"]
           for size in (64, 72)}
    row = next(line for line in text.splitlines() if line.startswith(f"| {loss}: at72 vs at64 |"))
    assert f"| {mae[72] - mae[64]:+.2f} |" in row
  with pytest.raises(SystemExit, match="missing: finish the fgnet_losses.py run"):
    backbone_pairs.main([f"--a={tmp_path / '72'}", "--a_name=x", f"--b={tmp_path / '64'}", "--b_name=y",
                         "--losses=cross_entropy", "--seeds=0", f"--out={out}"])
