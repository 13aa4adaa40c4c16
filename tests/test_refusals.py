"""Runs that refuse to do the wrong thing: a workdir knows its run, data matches its source, every mistake is one line.

Each refusal is checked with the message a user reads; the cases that must keep working (a resume that extends
the run, ``run_eval.py --workdir=W`` alone) are checked beside them.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from amr_jax import config_checks, errors, experiment, workdir_layout
from amr_jax.data import tfds_builders
from amr_jax.training import metric_writers
import training_setup

ROOT = training_setup.ROOT


def _data(fgnet_dirs, **changes):
  manual, data_dir = fgnet_dirs
  return {"data.manual_dir": str(manual), "data.data_dir": str(data_dir), **changes}


@pytest.fixture(scope="module")
def finished_run(fgnet_dirs, tmp_path_factory):
  """A finished 2-step cross-entropy run of fold 3 (a step other tests compile too): ``(config, workdir, metrics)``."""
  workdir = tmp_path_factory.mktemp("ce") / "run"
  config = training_setup.config("fgnet_ce", "3", **_data(fgnet_dirs))
  return config, workdir, experiment.train_and_evaluate(config, workdir)


def _copy(run, tmp_path) -> pathlib.Path:
  copy = tmp_path / "copy"
  shutil.copytree(run, copy)
  return copy


# ---------------------------------------------------------------- a workdir knows its run

def test_a_workdir_of_another_config_is_refused_naming_each_field_and_left_as_it_was(finished_run, fgnet_dirs, tmp_path):
  _, run, _ = finished_run
  copy = _copy(run, tmp_path)
  stored = (copy / "config.json").read_bytes()
  other = training_setup.config("fgnet_mv", "3", **_data(fgnet_dirs))
  with pytest.raises(errors.WorkdirError) as error:
    experiment.train_and_evaluate(other, copy)
  message = str(error.value)
  assert f"{copy} holds a run of another config ({copy / 'config.json'})" in message
  assert "config.loss: 'cross_entropy' in the workdir, 'mean_variance' now" in message
  assert "config.name: 'fgnet_ce' in the workdir, 'fgnet_mv' now" in message
  assert "config.loss_kwargs.lambda_mean: '<absent>' in the workdir, 0.2 now" in message
  assert "Use a new --workdir" in message
  assert (copy / "config.json").read_bytes() == stored
  assert metric_writers.read_jsonl(copy / "metrics.jsonl") == metric_writers.read_jsonl(run / "metrics.jsonl")


def test_a_resume_may_extend_num_epochs_and_says_what_it_changed_in_config_json(finished_run, fgnet_dirs, tmp_path, capsys):
  config, run, _ = finished_run
  copy = _copy(run, tmp_path)
  # 2 epochs of 3 steps (12 training images, batch 4) instead of the 2 steps it ran.
  longer = training_setup.config("fgnet_ce", "3", **_data(fgnet_dirs, num_train_steps=-1, num_epochs=2))
  capsys.readouterr()
  experiment.train_and_evaluate(longer, copy)
  out = capsys.readouterr().out
  assert f"{copy / 'config.json'}: config.num_epochs: 100 -> 2" in out
  assert f"{copy / 'config.json'}: config.num_train_steps: 2 -> -1" in out
  assert "resumed from" in out and "step 6/6" in out
  assert json.loads((copy / "config.json").read_text())["num_epochs"] == 2
  assert [r["step"] for r in metric_writers.read_jsonl(copy / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_the_cosine_schedule_refuses_a_change_of_num_epochs(fgnet_dirs, tmp_path):
  config = training_setup.config("fgnet_amr", "3", **_data(fgnet_dirs, schedule="cosine", num_epochs=3))
  stored = workdir_layout.as_json_dict(config)
  longer = training_setup.config("fgnet_amr", "3", **_data(fgnet_dirs, schedule="cosine", num_epochs=6))
  refused, _ = workdir_layout.differences(stored, longer, workdir_layout.RESUME_FIELDS)
  assert refused == []  # allowed in general...
  (tmp_path / "config.json").write_text(json.dumps(stored))
  with pytest.raises(errors.WorkdirError, match=r"config.num_epochs: 3 in the workdir, 6 now \(the cosine schedule"):
    workdir_layout.check(tmp_path, longer, evaluate_only=False)  # ...but not under a cosine schedule


def test_a_config_that_fails_its_checks_leaves_config_json_untouched(finished_run, fgnet_dirs, tmp_path):
  _, run, _ = finished_run
  copy = _copy(run, tmp_path)
  stored = (copy / "config.json").read_bytes()
  too_big = training_setup.config("fgnet_ce", "3", **_data(fgnet_dirs, batch_size=2000, eval_batch_size=2000))
  with pytest.raises(errors.WorkdirError, match=r"config.batch_size: 4 in the workdir, 2000 now"):
    experiment.train_and_evaluate(too_big, copy)
  assert (copy / "config.json").read_bytes() == stored
  fresh = tmp_path / "fresh"
  with pytest.raises(errors.ConfigError, match=r"config.batch_size=2000 is larger than the training set \(12 "):
    experiment.train_and_evaluate(too_big, fresh)  # found only once the data is read, yet before config.json is written
  assert not (fresh / "config.json").exists()


def test_a_resume_that_fails_on_its_checkpoint_leaves_config_json_untouched(finished_run, fgnet_dirs, tmp_path):
  _, run, _ = finished_run
  copy = _copy(run, tmp_path)
  stored = (copy / "config.json").read_bytes()
  data = [p for p in (copy / "checkpoints" / "2").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert data, "no array data file (in a folder d/) in the checkpoint: Orbax's layout changed"
  for path in data:
    path.write_bytes(path.read_bytes()[:5])
  longer = training_setup.config("fgnet_ce", "3", **_data(fgnet_dirs, num_train_steps=4))
  with pytest.raises(errors.RunError, match="cannot be read"):
    experiment.train_and_evaluate(longer, copy)
  assert (copy / "config.json").read_bytes() == stored  # num_train_steps is still 2: no step ran at 4


def test_evaluation_reads_the_run_and_refuses_any_other_config(finished_run, fgnet_dirs, tmp_path):
  config, run, result = finished_run
  copy = _copy(run, tmp_path)
  stored = workdir_layout.load(copy)
  assert experiment.train_and_evaluate(stored, copy, evaluate_only=True)["mae"] == pytest.approx(result["mae"], abs=1e-5)
  flipped = workdir_layout.load(copy)
  flipped.test_time_flip = True
  assert experiment.train_and_evaluate(flipped, copy, evaluate_only=True)["count"] == result["count"]
  for field, value in (("image_size", 96), ("name", "fgnet_amr"), ("num_train_steps", 3)):
    changed = workdir_layout.load(copy)
    changed[field] = value
    with pytest.raises(errors.WorkdirError, match=rf"config.{field}: .* in the workdir, .* now.*python run_eval.py "
                       rf"--workdir={re.escape(str(copy))}, with only these fields set"):
      experiment.train_and_evaluate(changed, copy, evaluate_only=True)


def test_one_fold_of_an_all_folds_workdir_goes_to_its_fold_folder(fgnet_dirs, tmp_path):
  kfold = {"protocol": "kfold", "num_folds": 2}
  all_folds = training_setup.config("fgnet_ce", None, **_data(fgnet_dirs, num_train_steps=1, **kfold))
  experiment.train_and_evaluate(all_folds, tmp_path / "kfold")
  one = training_setup.config("fgnet_ce", "1", **_data(fgnet_dirs, num_train_steps=2, **kfold))
  experiment.train_and_evaluate(one, tmp_path / "kfold")
  steps = [r["step"] for r in metric_writers.read_jsonl(tmp_path / "kfold" / "folds" / "fold_1" / "metrics.jsonl")]
  assert steps == [1, 2]
  assert not (tmp_path / "kfold" / "checkpoints").exists()
  assert json.loads((tmp_path / "kfold" / "config.json").read_text())["fold"] == -1
  with pytest.raises(errors.WorkdirError, match=r"config.fold: 1 in the workdir, 0 now \(a workdir of one fold"):
    experiment.train_and_evaluate(training_setup.config("fgnet_ce", "0", **_data(fgnet_dirs, num_train_steps=2, **kfold)),
                                  tmp_path / "kfold" / "folds" / "fold_1")  # not a workdir of its own: refused as one


# ---------------------------------------------------------------- data that matches what it claims

def test_labels_that_would_be_clamped_are_refused_naming_an_image(fgnet_dirs, tmp_path):
  ages = sorted(int(p.stem[4:6]) for p in (fgnet_dirs[0] / "FGNET" / "images").glob("*.JPG"))
  config = training_setup.config("fgnet_ce", "3", **_data(fgnet_dirs, num_classes=ages[-1]))
  oldest = sorted(p.name for p in (fgnet_dirs[0] / "FGNET" / "images").glob(f"???A{ages[-1]:02d}.JPG"))
  with pytest.raises(errors.DataError, match=(
      rf"fgnet: {len(oldest)} image\(s\) have ages outside the {ages[-1]} classes of ages 0..{ages[-1] - 1} .*e.g. {oldest[0]} "
      rf"with age {ages[-1]}; their labels would be clamped. To train on them, raise config.num_classes to "
      rf"{ages[-1] + 1}")):
    experiment.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run" / "config.json").exists()
  shifted = training_setup.config("fgnet_ce", "3", **_data(fgnet_dirs, start_age=ages[0] + 1))
  with pytest.raises(errors.DataError, match="lower config.start_age"):
    experiment.train_and_evaluate(shifted, tmp_path / "run")


def test_a_build_from_another_changed_or_missing_source_is_refused_unless_the_manual_dir_is_left_empty(tmp_path):
  first = training_setup.make_synthetic_fgnet(tmp_path / "first")
  other = training_setup.make_synthetic_fgnet(tmp_path / "other", subjects=3)
  data_dir = tmp_path / "tfds"
  tfds_builders.build("fgnet", manual_dir=first, data_dir=data_dir)
  record = json.loads((data_dir / "fgnet" / "1.0.0" / tfds_builders.SOURCE_FILE).read_text())
  assert record["manual_dir"] == str(first.resolve()) and record["files"] == 32
  config = training_setup.config("fgnet_ce", "3", **{"data.manual_dir": str(other), "data.data_dir": str(data_dir)})
  with pytest.raises(errors.DataError, match=(
      rf"fgnet/1.0.0 was built from {re.escape(str(first.resolve()))} \(32 files, \d+ bytes\); the manual directory "
      rf"{re.escape(str(other.resolve()))} \(24 files, \d+ bytes\) is another source.*leaving config.data.manual_dir "
      "empty")):
    experiment.train_and_evaluate(config, tmp_path / "run")
  next(iter((first / "FGNET" / "images").glob("001*.JPG"))).unlink()
  with pytest.raises(errors.DataError, match=r"\(31 files, \d+ bytes\) has changed since"):
    tfds_builders.build("fgnet", manual_dir=first, data_dir=data_dir)
  shutil.copytree(data_dir, tmp_path / "tfds_copy")
  mistyped = training_setup.config("fgnet_ce", "3", **{"data.manual_dir": str(tmp_path / "frist"),
                                                       "data.data_dir": str(tmp_path / "tfds_copy")})
  copied = sorted(tmp_path.joinpath("tfds_copy").rglob("*"))
  with pytest.raises(errors.ConfigError, match=(  # refused before any data is read, and nothing is downloaded
      rf"config.data.manual_dir={re.escape(str(tmp_path / 'frist'))} does not exist; give the folder that holds the "
      "raw fgnet files .*or leave it empty to use the build in config.data.data_dir as it is")):
    experiment.train_and_evaluate(mistyped, tmp_path / "run")
  assert sorted(tmp_path.joinpath("tfds_copy").rglob("*")) == copied
  (tmp_path / "empty").mkdir()
  (tmp_path / "FGNET.zip").write_bytes(b"PK")
  for manual_dir, message in ((tmp_path / "empty", "is empty; give the folder"),
                              (tmp_path / "FGNET.zip", "is a file; give the folder it lies in "
                                                       rf"\(config.data.manual_dir={re.escape(str(tmp_path))}\)")):
    mistaken = training_setup.config("fgnet_ce", "3", **{"data.manual_dir": str(manual_dir),
                                                         "data.data_dir": str(tmp_path / "tfds_copy")})
    with pytest.raises(errors.ConfigError, match=f"config.data.manual_dir={re.escape(str(manual_dir))} {message}"):
      experiment.train_and_evaluate(mistaken, tmp_path / "run")
  with pytest.raises(errors.DataError, match=f"manual_dir {re.escape(str(tmp_path / 'FGNET.zip'))} is a file"):
    tfds_builders.build("fgnet", manual_dir=tmp_path / "FGNET.zip", data_dir=tmp_path / "tfds_new")
  with pytest.raises(errors.DataError, match=f"data_dir {re.escape(str(tmp_path / 'FGNET.zip'))} is a file"):
    tfds_builders.build("fgnet", manual_dir=first, data_dir=tmp_path / "FGNET.zip")
  as_built = training_setup.config("fgnet_ce", "3", num_train_steps=1,
                                   **{"data.manual_dir": "", "data.data_dir": str(tmp_path / "tfds_copy")})
  assert experiment.train_and_evaluate(as_built, tmp_path / "run")["count"] == 4


# ---------------------------------------------------------------- arguments checked where they are read

@pytest.mark.parametrize("field, value, message", [
    ("num_train_steps", 0, "config.num_train_steps must be -1 (num_epochs x steps per epoch) or a positive"),
    ("num_train_steps", -5, "config.num_train_steps must be -1"),
    ("num_classes", 1, "config.num_classes must be an integer >= 2"),
    ("learning_rate", -1.0, "config.learning_rate must be a number in (0, inf); got -1.0"),
    ("learning_rate", float("nan"), "config.learning_rate must be a number in (0, inf); got nan"),
    ("weight_decay", -0.1, "config.weight_decay must be a number in [0, inf)"),
    ("momentum", 1.0, "config.momentum must be a number in [0, 1)"),
    ("decay_factor", 0.0, "config.decay_factor must be a number in (0, 1]"),
    ("num_epochs", 0, "config.num_epochs must be a positive integer"),
    ("eval_every_epochs", -1, "config.eval_every_epochs must be an integer >= 0"),
    ("milestone_epochs", (30, 15), "config.milestone_epochs must be increasing whole epochs >= 1; got (30, 15)"),
    ("optimizer", "lamb", "config.optimizer must be one of adamw, sgd, adam"),
    ("schedule", "linear", "config.schedule must be one of multistep, cosine, constant"),
    ("fold", -3, "config.fold must be a fold number or -1"),
    ("image_size", 32, "config.image_size must be at least 64"),
])
def test_every_numeric_field_is_checked_naming_it(field, value, message):
  config = training_setup.config("fgnet_amr", "3", **{field: value})
  with pytest.raises(errors.ConfigError, match=re.escape(message)):
    config_checks.check_fields(config, num_devices=1)


def test_field_checks_come_before_the_data_is_read(tmp_path):
  config = training_setup.config("fgnet_amr", "3", learning_rate=-1.0,
                                 **{"data.manual_dir": str(tmp_path / "none"), "data.data_dir": str(tmp_path)})
  with pytest.raises(errors.ConfigError, match="config.learning_rate"):  # not the missing data
    experiment.train_and_evaluate(config, tmp_path / "run")


@pytest.mark.parametrize("changes, message", [
    ({"model": "resnet18", "pretrained": "imagenet"}, r"config.pretrained='imagenet' has weights for models "
                                                      r"efficientnet_lite0, .* only \(got model 'resnet18'\)"),
    ({"model": "resnet18", "pretrained": "~/no_such_resnet18.pth"},
     r"config.pretrained='~/no_such_resnet18.pth': no such file \(expected a torchvision resnet18 state_dict"),
    ({"model": "tiny_age_net", "pretrained": "weights.pth"}, r"a weights file is read for resnet18/34/50 only"),
])
def test_a_bad_pretrained_is_refused_before_the_data_is_read(changes, message, tmp_path):
  config = training_setup.config("fgnet_amr", "3", **changes,
                                 **{"data.manual_dir": str(tmp_path / "none"), "data.data_dir": str(tmp_path)})
  with pytest.raises(errors.ConfigError, match=message):  # not the missing data
    experiment.train_and_evaluate(config, tmp_path / "run")


@pytest.mark.parametrize("field, value, message", [
    ("loss_kwargs", {"lambda_mean": 0.2, "lambda_residue": 0.05, "eps": 0.0}, "config.loss_kwargs .* eps"),
    ("augmentation.brightness", -0.5, r"config.augmentation.brightness must be >= 0"),
])
def test_loss_and_augmentation_arguments_are_refused_naming_the_config_field(field, value, message, fgnet_dirs,
                                                                              tmp_path):
  config = training_setup.config("fgnet_amr", "3", **_data(fgnet_dirs, **{field: value}))
  with pytest.raises(errors.ConfigError, match=message):
    experiment.train_and_evaluate(config, tmp_path / "run")


# ---------------------------------------------------------------- one line per refusal, from the command line

def _run(script, *args, env=None, timeout=300):
  return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, **(env or {})})


def _one_error_line(result) -> str:
  assert result.returncode == 1, result.stdout + result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("error: "), result.stderr
  return lines[0]


@pytest.mark.parametrize("args, expected", [
    (["configs/fgnet_amr.py:17", "--config.model=tiny_age_net"],
     "error: the config file is a flag: did you mean --config=configs/fgnet_amr.py:17?"),
    (["--config=configs/fgnet_amr.py:17", "--config.batchsize=3"],
     "error: --config.batchsize: the config has no field 'batchsize'; did you mean 'batch_size'?"),
    (["--config=configs/fgnet_amr.py:17", "--config.data.manul_dir=x"],
     "error: --config.data.manul_dir: the config has no field 'manul_dir'; did you mean 'manual_dir'?"),
    (["--config=configs/fgnet_amr.py:17", "--config.foo=3"], "error: --config.foo: the config has no field 'foo'"),
    (["--config=configs/fgnet_amr.py:abc"], "the config argument must be a fold number (e.g. configs/fgnet_amr.py:17)"),
    (["--config=configs/nope.py"], "error: --config=configs/nope.py: no such file (found configs/clap2016_amr.py"),
    ([], "error: give the run's config: --config=configs/<name>.py[:FOLD]"),
    (["--config=configs/fgnet_amr.py:17", "--workdir=README.md"], "is a file, not a folder"),
    (["--config=configs/fgnet_amr.py:17", "--workdir=/proc/amr_jax_run"], "/proc/amr_jax_run cannot be created"),
    (["--config=configs/fgnet_amr.py:17", "--config.num_train_steps=0"], "error: config.num_train_steps must be -1"),
])
def test_run_train_refuses_in_one_line(args, expected, tmp_path):
  line = _one_error_line(_run("run_train.py", *args, env={"HOME": str(tmp_path)}))
  assert expected in line


def test_a_config_file_that_is_not_python_is_refused_naming_its_line(tmp_path):
  config = tmp_path / "my_config.py"
  config.write_text("from configs import fgnet_amr\n\ndef get_config(arg=None:\n  return fgnet_amr.get_config(arg)\n")
  line = _one_error_line(_run("run_train.py", f"--config={config}", env={"HOME": str(tmp_path)}))
  assert line.startswith(f"error: --config={config}: not valid Python at line 3, column "), line


_FULL_DISK_ACTION = """
import errno, sys
from amr_jax import cli

def train_and_evaluate(config, workdir):  # the disk fills up as the first report is written
  raise OSError(errno.ENOSPC, "No space left on device", f"{workdir}/test/predictions.csv")

cli.run(train_and_evaluate, "The workdir.")
"""


def test_a_write_the_machine_refuses_is_one_line_naming_the_file_and_saying_what_is_kept(tmp_path):
  workdir = tmp_path / "run"
  line = _one_error_line(subprocess.run(
      [sys.executable, "-c", _FULL_DISK_ACTION, "--config=configs/fgnet_amr.py:17", f"--workdir={workdir}"], cwd=ROOT,
      capture_output=True, text=True, timeout=300))
  assert line == (f"error: {workdir}/test/predictions.csv: could not be written (No space left on device). "
                  "Checkpoints already saved are kept, and every report is whole or as it was; free space there (or "
                  "make it writable), then run the same command again. (AMR_JAX_TRACEBACK=1 shows the traceback)")


def test_the_traceback_of_a_refusal_is_shown_with_the_variable_the_message_names(tmp_path):
  args = ["--config=configs/fgnet_amr.py:17", "--config.num_train_steps=0", f"--workdir={tmp_path / 'run'}"]
  line = _one_error_line(_run("run_train.py", *args))
  assert line.endswith("(AMR_JAX_TRACEBACK=1 shows the traceback)")
  shown = _run("run_train.py", *args, env={"AMR_JAX_TRACEBACK": "1"})
  assert shown.returncode == 1 and "Traceback (most recent call last)" in shown.stderr
  assert "amr_jax.errors.ConfigError: config.num_train_steps must be -1" in shown.stderr


def test_help_exits_0_with_usage_and_every_config_field_with_its_comment(finished_run):
  from configs import base

  result = _run("run_train.py", "--help")
  assert result.returncode == 0 and result.stderr == "", result.stderr
  text = result.stdout
  assert text.startswith("Trains and evaluates age estimators: ``python run_train.py --config=")
  fields = [line.split("=", 1)[0].strip()[len("--config."):] for line in text.splitlines()
            if line.startswith("  --config.")]

  def leaves(tree, prefix=""):
    for key, value in tree.items():
      yield from leaves(value, f"{prefix}{key}.") if isinstance(value, dict) and value else [f"{prefix}{key}"]

  assert sorted(fields) == sorted(leaves(base.get_config().to_dict()))  # every field, once
  assert "  --config.data.manual_dir=''\n      Where the raw archive or extracted folder lies (TFDS manual_dir)" in text
  assert "  --config.augmentation.downscale_range=(1.0, 1.0)\n      DLDL-v2's shrink-and-enlarge" in text
  own = _run("run_train.py", "--config=configs/fgnet_ce.py:17", "-h")
  assert own.returncode == 0 and "  --config.name='fgnet_ce'" in own.stdout and "  --config.fold=17\n" in own.stdout
  config, run, _ = finished_run
  stored = _run("run_eval.py", f"--workdir={run}", "--help")
  assert stored.returncode == 0 and f"the values of the run in {run}" in stored.stdout
  assert f"  --config.num_train_steps={config.num_train_steps}\n" in stored.stdout
  predict = _run("run_predict.py", "--help")
  assert predict.returncode == 0 and "  --annotate: A folder for copies of the photographs" in predict.stdout


def test_run_eval_needs_only_the_workdir_and_refuses_training_overrides(finished_run, tmp_path):
  config, run, result = finished_run
  copy = _copy(run, tmp_path)
  (copy / "test" / "metrics.json").unlink()
  evaluated = _run("run_eval.py", f"--workdir={copy}", "--config.eval_batch_size=4")
  assert evaluated.returncode == 0, evaluated.stderr
  assert json.loads((copy / "test" / "metrics.json").read_text())["mae"] == pytest.approx(result["mae"], abs=1e-4)
  line = _one_error_line(_run("run_eval.py", f"--workdir={copy}", "--config.image_size=96"))
  assert "config.image_size: 64 in the workdir, 96 now" in line
  line = _one_error_line(_run("run_eval.py", f"--workdir={tmp_path / 'nothing'}"))
  assert f"{tmp_path / 'nothing'} holds no config.json: it is not the workdir of a run" in line
  line = _one_error_line(_run("run_eval.py"))
  assert "give the run to evaluate: --workdir=W" in line
