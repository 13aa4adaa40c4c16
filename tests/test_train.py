"""Training in one process: every config runs, pmap equals one device, runs resume, and errors say what to do."""

import functools
import json
import pathlib
import re
import shutil
import subprocess
import sys

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amr_jax import experiment
from amr_jax.data import decoding, input_pipeline, tfds_builders
from amr_jax.evaluation import evaluate, reports
from amr_jax.training import checkpoints, fold_evaluation, fold_loop, metric_writers, step_functions, train_state
import training_setup

ROOT = training_setup.ROOT
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem not in ("__init__", "base", "clap2016_base"))


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """A missing manual directory must not reach the internet from a test."""
  for name in ("fgnet", "clap2016"):
    module = sys.modules[tfds_builders.builder_class(name).__module__]
    monkeypatch.setattr(module, "DOWNLOAD_URL", "http://127.0.0.1:1/archive.zip")


def _data(fgnet_dirs):
  manual, data_dir = fgnet_dirs
  return {"data.manual_dir": str(manual), "data.data_dir": str(data_dir)}


def test_every_experiment_config_loads_with_the_documented_fields():
  assert {"fgnet_amr", "fgnet_mv", "fgnet_dldlv2", "fgnet_ce", "clap2016_amr", "clap2016_mv", "clap2016_dldlv2",
          "clap2016_ce"} <= set(CONFIGS)
  for name in CONFIGS:
    config = training_setup.config(name)
    for field in ("model", "loss", "image_size", "batch_size", "num_epochs", "num_train_steps", "learning_rate",
                  "optimizer", "seed", "fold", "checkpoint_every_steps"):
      assert field in config, (name, field)
    for field in ("name", "manual_dir", "data_dir", "crop"):
      assert field in config.data, (name, field)
    assert config.name == name
    assert config.loss in train_state.LOSSES


def test_fgnet_config_argument_is_the_fold():
  from configs import base, fgnet_amr
  assert fgnet_amr.get_config("17").fold == 17
  assert fgnet_amr.get_config().fold == -1
  with pytest.raises(ValueError, match="fold number"):
    base.parse_fold("seventeen")


def test_fgnet_defaults_are_the_amr_recipe_with_the_offline_backbone():
  from configs import fgnet_amr
  config = fgnet_amr.get_config()
  assert (config.optimizer, config.learning_rate, config.weight_decay, config.batch_size, config.num_epochs) == (
      "adamw", 1e-3, 0.01, 64, 100)
  assert tuple(config.milestone_epochs) == (15, 30, 45, 60, 75, 90)
  assert (config.model, config.pretrained, config.num_classes) == ("efficientnet_lite0", "imagenet", 70)


# clap2016_dldlv2 (two stages) runs end to end in tests/test_stages.py, scut_fbp5500_dldlv2 (its own data) in
# tests/test_scut_fbp5500_training.py.
@pytest.mark.parametrize("name", [name for name in CONFIGS if name not in ("clap2016_dldlv2", "scut_fbp5500_dldlv2")])
def test_one_step_smoke_run_of_every_config(name, fgnet_dirs, tmp_path):
  if name.startswith("fgnet"):
    overrides = _data(fgnet_dirs)
    arg = "3"
  else:
    overrides = {"data.manual_dir": str(ROOT / "datasets" / "clap2016" / "dummy_data"),
                 "data.data_dir": str(tmp_path / "tfds"), "eval_every_epochs": 1}
    arg = None
  config = training_setup.config(name, arg, num_train_steps=1, **overrides)
  result = experiment.train_and_evaluate(config, tmp_path / "run")
  assert result["count"] == len(reports.read_predictions_csv(tmp_path / "run" / "test" / "predictions.csv")["age"])
  assert np.isfinite(result["mae"])
  if name.startswith("clap2016"):
    assert 0 <= result["eps_error"] <= 1  # CLAP2016 reports the epsilon-error
    assert (tmp_path / "run" / "validation" / "metrics.json").is_file()
  logged = [entry for entry in metric_writers.read_jsonl(tmp_path / "run" / "metrics.jsonl") if "train/loss" in entry]
  assert logged[-1]["step"] == 1 and np.isfinite(logged[-1]["train/loss"])
  assert json.loads((tmp_path / "run" / "config.json").read_text())["loss"] == config.loss


def _pmapped_updates(config, num_devices, arrays, num_steps=2):
  """Parameters after ``num_steps`` training steps on the first ``num_devices`` host CPU devices."""
  model = train_state.model(config)
  tx = train_state.optimizer(config)
  state = train_state.initial_train_state(config, model, tx)
  step = jax.pmap(functools.partial(step_functions.train_step, loss_fn=train_state.loss_fn(config),
                                    augmentation=train_state.augmentation(config), seed=config.seed,
                                    global_batch=config.batch_size),
                  axis_name="batch", devices=jax.devices("cpu")[:num_devices])
  replicated = evaluate.replicate(state, devices=jax.devices("cpu")[:num_devices])
  batches = input_pipeline.train_batches(arrays, global_batch=config.batch_size, seed=0, num_devices=num_devices)
  for i in range(num_steps):
    lr = flax.jax_utils.replicate(jnp.float32(1e-3 / (i + 1)), devices=jax.devices("cpu")[:num_devices])
    replicated, metrics = step(replicated, next(batches), lr)
  return jax.device_get(evaluate.unreplicate(replicated)), jax.device_get(evaluate.unreplicate(metrics))


def test_pmap_step_on_2_and_4_devices_equals_one_device():
  """Gradients, loss and BatchNorm statistics are averaged over devices: same update as one device.

  In float64, so that only a wrong average, never float rounding, can decide the verdict.
  """
  # Cross-entropy and SGD keep the update a smooth function of the gradient: AMR's top-K set can flip on a tie,
  # and Adam's g / sqrt(g^2) turns the rounding noise of a zero gradient into a full step.
  # The default augmentation (flip, shift) is on: the same draws on any device count, keyed by position.
  with jax.enable_x64(True):
    config = training_setup.config("fgnet_ce", "3", batch_size=8, optimizer="sgd", dtype="float64")
    rng = np.random.default_rng(0)
    arrays = {"image": rng.integers(0, 256, (16, 64, 64, 3), dtype=np.uint8),
              "age": rng.integers(0, 70, 16).astype(np.float64)}
    fresh = jax.device_get(train_state.initial_train_state(config, train_state.model(config),
                                                            train_state.optimizer(config)))
    assert {leaf.dtype for leaf in jax.tree.leaves(fresh.params)} == {np.dtype(np.float64)}
    one, one_metrics = _pmapped_updates(config, 1, arrays)
    assert one_metrics["loss"].dtype == np.float64
    one_update = jax.tree.map(np.subtract, one.params, fresh.params)
    assert min(float(np.abs(u).max()) for u in jax.tree.leaves(one_update)) > 0  # every parameter moved
    for n in (2, 4):
      many, many_metrics = _pmapped_updates(config, n, arrays)
      assert int(many.step) == 2
      training_setup.assert_same_training_result(many, one, fresh)
      np.testing.assert_allclose(many_metrics["loss"], one_metrics["loss"], rtol=training_setup.IDENTITY_TOLERANCE)


def test_float64_runs_need_64_bit_jax(fgnet_dirs, tmp_path):
  config = training_setup.config("fgnet_amr", "3", dtype="float64", **_data(fgnet_dirs))
  with pytest.raises(ValueError, match="config.dtype='float64' needs 64-bit JAX: set JAX_ENABLE_X64=1"):
    experiment.train_and_evaluate(config, tmp_path / "run")


@pytest.fixture(scope="module")
def finished_run(fgnet_dirs, tmp_path_factory):
  """A finished 6-step single-fold run with checkpoints at 3 and 6."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  config = training_setup.config("fgnet_amr", "3", num_train_steps=6, checkpoint_every_steps=3, **_data(fgnet_dirs))
  result = experiment.train_and_evaluate(config, workdir)
  return config, workdir, result


def test_a_run_leaves_checkpoints_logs_and_reports(finished_run):
  _, workdir, result = finished_run
  assert checkpoints.Checkpoints(workdir / "checkpoints").all_steps() == [3, 6]
  logged = metric_writers.read_jsonl(workdir / "metrics.jsonl")
  assert [entry["step"] for entry in logged] == [1, 2, 3, 4, 5, 6]
  assert {"train/loss", "train/cross_entropy", "train/mean", "train/residue", "train/learning_rate"} <= set(logged[0])
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  predictions = reports.read_predictions_csv(workdir / "test" / "predictions.csv")
  assert list(predictions["file_name"]) == sorted(predictions["file_name"])  # the held-out subject 3, every image
  assert all(name.startswith("003A") for name in predictions["file_name"]) and len(predictions["file_name"]) == 4
  np.testing.assert_allclose(np.mean(np.abs(predictions["predicted_age"] - predictions["age"])), result["mae"],
                             atol=1e-4)
  for png in ("cumulative_score.png", "predicted_vs_true.png", "error_by_age_group.png"):
    assert (workdir / "test" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_restarting_a_finished_run_trains_nothing_and_evaluation_matches(finished_run, tmp_path, capsys):
  config, workdir, result = finished_run
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  again = experiment.train_and_evaluate(config, copy)
  assert "resumed from" in capsys.readouterr().out
  assert again["mae"] == pytest.approx(result["mae"], abs=1e-5)
  assert len(metric_writers.read_jsonl(copy / "metrics.jsonl")) == 6  # no step was trained again
  (copy / "test" / "metrics.json").unlink()
  evaluated = experiment.evaluate_workdir(config, copy)
  assert evaluated["mae"] == pytest.approx(result["mae"], abs=1e-5)
  assert (copy / "test" / "metrics.json").is_file()


def test_resume_from_an_intermediate_checkpoint_equals_the_uninterrupted_run(finished_run, tmp_path):
  config, workdir, _ = finished_run
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  shutil.rmtree(copy / "checkpoints" / "6")  # as if killed between steps 3 and 6
  experiment.train_and_evaluate(config, copy)
  store = checkpoints.Checkpoints(copy / "checkpoints")
  template = jax.device_get(train_state.initial_train_state(config, train_state.model(config),
                                                             train_state.optimizer(config)))
  resumed = store.restore(template, 6)
  original = checkpoints.Checkpoints(workdir / "checkpoints").restore(template, 6)
  jax.tree.map(np.testing.assert_array_equal, resumed.params, original.params)
  jax.tree.map(np.testing.assert_array_equal, resumed.opt_state, original.opt_state)
  jax.tree.map(np.testing.assert_array_equal, resumed.batch_stats, original.batch_stats)


def test_corrupt_checkpoint_error_says_which_and_what_to_do(finished_run, tmp_path):
  config, workdir, _ = finished_run
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  for path in (copy / "checkpoints" / "6").rglob("*"):
    if path.is_file():
      path.write_bytes(b"\x00garbage")
  with pytest.raises(checkpoints.CheckpointError, match=r"checkpoints/6 cannot be read.*delete .*checkpoints/6 "
                     r"to resume from the previous checkpoint \(step 3\)"):
    experiment.train_and_evaluate(config, copy)


def test_incompatible_checkpoint_error_names_the_difference(finished_run, tmp_path):
  config, workdir, _ = finished_run
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  other = training_setup.config("fgnet_amr", "3", num_classes=80, num_train_steps=6,
                                **{k: config.data[k.split(".")[1]] for k in ("data.manual_dir", "data.data_dir")})
  # Its config.json would refuse the other config by name (tests/test_refusals.py); without it, the checkpoint does.
  (copy / "config.json").unlink()
  with pytest.raises(checkpoints.CheckpointError, match=r"does not fit.*fc/kernel: shape \(128, 70\) in the "
                     r"checkpoint, \(128, 80\) in this run.*new --workdir"):
    experiment.train_and_evaluate(other, copy)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(fgnet_dirs, tmp_path):
  config = training_setup.config("fgnet_amr", "3", num_train_steps=6, checkpoint_every_steps=1, learning_rate=1e9,
                                 **_data(fgnet_dirs))
  with pytest.raises(fold_loop.NonFiniteLossError, match=r"loss is (nan|inf) at step (\d+).*last good checkpoint is "
                     r"step \d+") as error:
    experiment.train_and_evaluate(config, tmp_path / "run")
  bad_step = int(error.value.args[0].split(" at step ")[1].split(" ")[0])
  assert checkpoints.Checkpoints(tmp_path / "run" / "checkpoints").latest_step() == bad_step - 1


def test_all_lopo_folds_pool_every_image_and_resume_done_folds(fgnet_dirs, tmp_path, capsys):
  config = training_setup.config("fgnet_amr", None, num_train_steps=1, **_data(fgnet_dirs))
  summary = experiment.train_and_evaluate(config, tmp_path / "lopo")
  assert summary["count"] == 16 and summary["num_folds"] == 4
  pooled = reports.read_predictions_csv(tmp_path / "lopo" / "summary" / "predictions.csv")
  assert sorted(pooled["file_name"]) == sorted(p.name for p in (fgnet_dirs[0] / "FGNET" / "images").iterdir())
  np.testing.assert_allclose(summary["mae"], np.mean(pooled["abs_error"]), atol=1e-4)
  per_fold = reports.read_predictions_csv(tmp_path / "lopo" / "summary" / "per_fold.csv")
  assert list(per_fold["fold"]) == ["subject 1", "subject 2", "subject 3", "subject 4"]
  np.testing.assert_allclose(summary["mean_fold_mae"], per_fold["mae"].mean(), atol=1e-4)
  assert (tmp_path / "lopo" / "folds" / "subject_002" / "test" / "predictions.csv").is_file()
  capsys.readouterr()
  again = experiment.train_and_evaluate(config, tmp_path / "lopo")
  assert capsys.readouterr().out.count("resumed from") == 4
  assert again["mae"] == pytest.approx(summary["mae"], abs=1e-5)


def test_grouped_k_fold_protocol(fgnet_dirs, tmp_path):
  config = training_setup.config("fgnet_ce", None, protocol="kfold", num_folds=2, num_train_steps=1,
                                 **_data(fgnet_dirs))
  summary = experiment.train_and_evaluate(config, tmp_path / "kfold")
  assert summary["count"] == 16 and summary["num_folds"] == 2


def test_training_reads_what_the_plain_tfds_build_command_writes(fgnet_dirs, tmp_path):
  manual, _ = fgnet_dirs
  data_dir = tmp_path / "tfds"
  tfds_cli = pathlib.Path(sys.executable).with_name("tfds")
  built = subprocess.run([str(tfds_cli), "build", "datasets/fgnet", f"--manual_dir={manual}", f"--data_dir={data_dir}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert built.returncode == 0, built.stderr[-3000:]
  config = training_setup.config("fgnet_ce", "3", num_train_steps=1, **{"data.manual_dir": str(manual),
                                                                         "data.data_dir": str(data_dir)})
  result = experiment.train_and_evaluate(config, tmp_path / "run")
  assert result["count"] == 4 and np.isfinite(result["mae"])


def test_a_data_dir_built_in_another_format_is_refused_with_the_command_that_rebuilds_it(fgnet_dirs, tmp_path):
  manual, _ = fgnet_dirs
  data_dir = tmp_path / "tfds"
  training_setup.build_in_tfrecord("fgnet", manual, data_dir)
  config = training_setup.config("fgnet_ce", "3", **{"data.manual_dir": str(manual), "data.data_dir": str(data_dir)})
  folder = data_dir / "fgnet" / "1.0.0"
  with pytest.raises(ValueError, match=re.escape(
      f"{folder} holds a tfrecord build of fgnet; amr_jax reads array_record. Delete that folder and rebuild it "
      f"with `tfds build datasets/fgnet --manual_dir={manual} --data_dir={data_dir}`")):
    experiment.train_and_evaluate(config, tmp_path / "run")
  assert list(folder.glob("fgnet-train.tfrecord-*"))  # left as it was
  with pytest.raises(ValueError, match=re.escape(f"{folder} holds a tfrecord build of fgnet")):
    decoding.load_fgnet_arrays(str(folder))


def test_missing_dataset_error_names_the_manual_dir(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "notes.txt").write_text("not FG-NET")
  config = training_setup.config("fgnet_amr", "3", **{"data.manual_dir": str(manual),
                                                      "data.data_dir": str(tmp_path / "tfds")})
  with pytest.raises(FileNotFoundError, match=f"manual directory {manual} holds no usable copy"):
    experiment.train_and_evaluate(config, tmp_path / "run")


@pytest.mark.parametrize("field, value, message", [
    ("loss", "l2", "config.loss must be one of"),
    ("model", "vgg", "config.model must be one of"),
    ("batch_size", 6, "divisible by the number of devices"),
    ("data.crop", "face", "config.data.crop for fgnet must be one of whole, aligned"),
    ("protocol", "splits", "config.protocol for fgnet"),
    ("fold", 99, "config.fold=99 is not a fold"),
    ("loss_kwargs", {"lambda_variance": 0.1}, "do not fit loss 'amr'"),
    ("pretrained", "imagenet", "efficientnet_lite2 only"),
    ("dtype", "float16", "config.dtype must be one of"),
])
def test_bad_config_values_name_the_field(field, value, message, fgnet_dirs, tmp_path):
  config = training_setup.config("fgnet_amr", "3", **_data(fgnet_dirs), **{field: value})
  with pytest.raises(ValueError, match=message):
    experiment.train_and_evaluate(config, tmp_path / "run")


def test_bfloat16_folds_at_once_train_and_predict_finite_ages_with_float32_parameters(fgnet_dirs, tmp_path):
  """The run that predicted NaN for every test image on the CPU with jaxlib 0.11-0.12: bfloat16, all folds at once."""
  config = training_setup.config("fgnet_amr", None, dtype="bfloat16", parallel_folds=4, **_data(fgnet_dirs))
  result = experiment.train_and_evaluate(config, tmp_path / "run")
  assert result["num_folds"] == 4 and np.isfinite(result["mae"])
  template = jax.device_get(train_state.initial_train_state(config, train_state.model(config),
                                                             train_state.optimizer(config)))
  for fold in range(1, 5):
    fold_dir = tmp_path / "run" / "folds" / f"subject_{fold:03d}"
    state = checkpoints.Checkpoints(fold_dir / "checkpoints").restore(template)
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {np.dtype(np.float32)}
    assert np.isfinite(metric_writers.read_jsonl(fold_dir / "metrics.jsonl")[-1]["train/loss"])
    predictions = reports.read_predictions_csv(fold_dir / "test" / "predictions.csv")
    assert len(predictions["predicted_age"]) == 4 and np.isfinite(predictions["predicted_age"]).all()


def test_a_non_finite_prediction_is_refused_naming_fold_step_and_count_and_keeps_the_checkpoints(
    fgnet_dirs, tmp_path, monkeypatch):
  real_predict = evaluate.predict

  def half_nan(*args, **kwargs):  # a model that diverged on some images
    predictions = real_predict(*args, **kwargs)
    predictions["predicted_age"][: len(predictions["predicted_age"]) // 2] = np.nan
    return predictions

  monkeypatch.setattr(evaluate, "predict", half_nan)
  config = training_setup.config("fgnet_amr", "3", **_data(fgnet_dirs))
  with pytest.raises(fold_evaluation.NonFinitePredictionError) as refusal:
    experiment.train_and_evaluate(config, tmp_path / "run")
  message = str(refusal.value)
  assert "\n" not in message
  assert re.match(r"subject 3: the model of step 2 predicts a non-finite age for 2 of 4 test images, so no test "
                  r"report was written; the checkpoints in \S+ are kept", message), message
  assert checkpoints.Checkpoints(tmp_path / "run" / "checkpoints").latest_step() == 2
  assert not (tmp_path / "run" / "test" / "predictions.csv").exists()
