"""Training in stages (DLDL-v2's KL, then KL + L1) and each image's own label-distribution sigma."""

import functools
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import optax.tree_utils
import pytest

from amr_jax import config_checks, errors, experiment, losses
from amr_jax.data import augment, training_data
from amr_jax.evaluation import reports
from amr_jax.training import checkpoints, metric_writers, stages, step_functions, train_state
import training_setup

ROOT = training_setup.ROOT
KL = {"name": "kl", "loss": "dldl", "loss_kwargs": {"sigma": 2.0}, "num_train_steps": 4}
KL_L1 = {"name": "kl+l1", "loss": "dldl_v2", "loss_kwargs": {"sigma": 2.0, "lambda_l1": 1.0}, "num_train_steps": 3,
         "learning_rate": 5e-4}


def _two_stage_config(fgnet_dirs):
  manual, data_dir = fgnet_dirs
  # Fold 3 trains on 12 images: 3 steps of 4 per epoch, so the learning rate drops at step 3 of each stage.
  return training_setup.config("fgnet_dldlv2", "3", stages=(KL, KL_L1), milestone_epochs=(1,),
                               checkpoint_every_steps=1, max_checkpoints_to_keep=10,
                               **{"data.manual_dir": str(manual), "data.data_dir": str(data_dir)})


@pytest.fixture(scope="module")
def two_stage_run(fgnet_dirs, tmp_path_factory):
  config = _two_stage_config(fgnet_dirs)
  workdir = tmp_path_factory.mktemp("stages") / "run"
  experiment.train_and_evaluate(config, workdir)
  return config, workdir


def _template(config):
  return jax.device_get(train_state.initial_train_state(config, train_state.model(config),
                                                        train_state.optimizer(config)))


def test_a_stage_sets_only_its_fields_and_names_a_field_it_cannot_set():
  config = training_setup.config("fgnet_dldlv2", stages=(KL, KL_L1))
  first, second = stages.stages_of(config)
  assert (first.name, first.config.loss, first.config.loss_kwargs.to_dict()) == ("kl", "dldl", {"sigma": 2.0})
  assert (second.config.loss, second.config.learning_rate, second.config.num_train_steps) == ("dldl_v2", 5e-4, 3)
  assert first.config.learning_rate == config.learning_rate and first.config.model == config.model
  assert not first.config.stages and not second.config.stages
  (only,) = stages.stages_of(training_setup.config("fgnet_dldlv2"))
  assert only.config.loss == "dldl_v2" and stages.label([only], 0) == ""
  with pytest.raises(errors.ConfigError, match=r"config.stages\[1\] sets \['batch_size'\], which a stage cannot"):
    stages.stages_of(training_setup.config("fgnet_dldlv2", stages=(KL, {"batch_size": 8})))
  with pytest.raises(errors.ConfigError, match=r"config.stages\[0\].num_epochs='many' does not fit"):
    stages.stages_of(training_setup.config("fgnet_dldlv2", stages=({"num_epochs": "many"},)))
  assert stages.stage_ends([4, 3]) == [4, 7]
  assert [stages.stage_of(step, [4, 7]) for step in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_a_bad_stage_value_is_refused_before_training_naming_the_stage(fgnet_dirs, tmp_path):
  config = _two_stage_config(fgnet_dirs)
  config.stages = (KL, {**KL_L1, "learning_rate": -1.0})
  with pytest.raises(errors.ConfigError, match=r"config.stages\[1\] \(kl\+l1\): config.learning_rate must be"):
    experiment.train_and_evaluate(config, tmp_path / "run")
  config.stages = (KL, {**KL_L1, "loss_kwargs": {"sigma": 2.0, "lambda_mean": 1.0}})
  with pytest.raises(errors.ConfigError, match=r"config.loss_kwargs .* do not fit loss 'dldl_v2'"):
    experiment.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_each_stage_logs_its_own_loss_terms_and_follows_its_own_schedule(two_stage_run):
  _, workdir = two_stage_run
  logged = {entry["step"]: entry for entry in metric_writers.read_jsonl(workdir / "metrics.jsonl")}
  assert sorted(logged) == list(range(1, 8))
  assert all("train/kl" in logged[step] and "train/l1" not in logged[step] for step in range(1, 5))
  assert all({"train/kl", "train/l1"} <= set(logged[step]) for step in range(5, 8))
  rates = [logged[step]["train/learning_rate"] for step in range(1, 8)]
  # Stage 1: 1e-3, dropped x0.1 at its epoch 1 (its 4th step); stage 2 starts its own schedule at 5e-4.
  # (1e-3 x 0.1 is one float32 rounding away from float32(1e-4).)
  np.testing.assert_allclose(rates, np.float32([1e-3, 1e-3, 1e-3, 1e-4, 5e-4, 5e-4, 5e-4]),
                             rtol=2 * np.finfo(np.float32).eps)
  assert checkpoints.Checkpoints(workdir / "checkpoints").all_steps() == list(range(1, 8))


def test_the_second_stage_starts_from_the_first_stages_weights_with_a_fresh_optimizer(two_stage_run):
  config, workdir = two_stage_run
  store = checkpoints.Checkpoints(workdir / "checkpoints")
  template = _template(config)
  end_of_first, first_of_second = store.restore(template, 4), store.restore(template, 5)

  def counts(state):
    return {int(x) for x in jax.tree.leaves(state.opt_state) if np.issubdtype(np.asarray(x).dtype, np.integer)}
  assert counts(end_of_first) == {4} and counts(first_of_second) == {1}

  # AdamW's first step from a fresh state: mu = (1 - b1) g. Recover g from step 5's mu, apply a fresh AdamW at the
  # stage's rate to step 4's weights, and get step 5's weights. Each value passes through a few float32 roundings
  # (mu, g, the update, the subtraction): a few ulps of lr (the Adam update is at most ~lr) and of the weight.
  tx = train_state.optimizer(config)
  (mu,) = [m for m in optax.tree_utils.tree_get_all_with_path(first_of_second.opt_state, "mu")]
  gradients = jax.tree.map(lambda m: np.asarray(m, np.float64) / 0.1, mu[1])
  fresh = tx.init(end_of_first.params)
  fresh = fresh._replace(hyperparams={**fresh.hyperparams, "learning_rate": jnp.float32(5e-4)})
  updates, _ = tx.update(jax.tree.map(jnp.float32, gradients), fresh, end_of_first.params)
  expected = optax.apply_updates(end_of_first.params, updates)

  def close(want, got, start):
    bound = 8 * np.finfo(np.float32).eps * (5e-4 + np.abs(np.asarray(start)))
    assert np.all(np.abs(np.asarray(want, np.float64) - np.asarray(got, np.float64)) <= bound)
  jax.tree.map(close, expected, first_of_second.params, end_of_first.params)
  # and not from a continued optimizer: the stage-1 moments would give another step
  continued, _ = tx.update(jax.tree.map(jnp.float32, gradients), end_of_first.opt_state, end_of_first.params)
  assert not all(jax.tree.leaves(jax.tree.map(np.allclose, optax.apply_updates(end_of_first.params, continued),
                                              first_of_second.params)))


@pytest.mark.parametrize("kept", [4, 5], ids=["at the boundary", "inside the second stage"])
def test_a_run_resumed_across_the_stage_boundary_ends_as_the_uninterrupted_run(two_stage_run, tmp_path, kept):
  config, workdir = two_stage_run
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  for step in range(kept + 1, 8):
    shutil.rmtree(copy / "checkpoints" / str(step))
  experiment.train_and_evaluate(config, copy)
  template = _template(config)
  resumed = checkpoints.Checkpoints(copy / "checkpoints").restore(template, 7)
  original = checkpoints.Checkpoints(workdir / "checkpoints").restore(template, 7)
  for part in ("params", "opt_state", "batch_stats"):
    jax.tree.map(np.testing.assert_array_equal, getattr(resumed, part), getattr(original, part))


def test_a_run_in_stages_refuses_a_resume_that_moves_the_boundary(two_stage_run, tmp_path):
  config, workdir = two_stage_run
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  longer = config.copy_and_resolve_references()
  longer.num_epochs = 5
  with pytest.raises(errors.WorkdirError, match="would move the boundary between its stages"):
    experiment.train_and_evaluate(longer, copy)


def test_each_images_sigma_reaches_the_loss():
  """A hand-made batch: the step's KL is the KL to gaussian_label_distribution with each image's sigma."""
  config = training_setup.config("clap2016_dldlv2", loss_kwargs={"sigma": 2.0, "lambda_l1": 1.0})
  model = train_state.model(config, axis_name=None)
  state = train_state.initial_train_state(config, model, train_state.optimizer(config))
  rng = np.random.default_rng(0)
  ages = np.float32([3.25, 20.0, 47.5, 80.0])
  sigma = np.float32([1e-10, 1.5, 4.0, 9.0])  # 1e-10: the floor of a spread of 0, a one-hot target
  batch = {"image": rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8), "age": ages, "sigma": sigma,
           "position": np.arange(4)}
  step = jax.jit(functools.partial(step_functions.train_step, loss_fn=train_state.loss_fn(config),
                                   augmentation=augment.Augmentation(), seed=config.seed, global_batch=4,
                                   axis_name=None))
  _, metrics = step(state, batch, jnp.float32(1e-3))

  images = augment.augment_batch(augment.example_keys(config.seed, 0, batch["position"]), batch["image"],
                                 augment.Augmentation())
  logits, _ = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, images, train=True,
                             mutable=["batch_stats"])
  log_p = np.asarray(jax.nn.log_softmax(logits), np.float64)
  target = np.asarray(losses.gaussian_label_distribution(ages, config.num_classes, sigma), np.float64)
  np.testing.assert_allclose(target[0], np.eye(config.num_classes)[3], atol=0)  # age 3.25: the one-hot of 3
  terms = target * (np.log(np.where(target > 0, target, 1.0)) - log_p)
  kl = terms.sum(-1)
  # float32 sums of num_classes terms: each rounding at most eps of the running sum of |terms|.
  bound = 4 * config.num_classes * np.finfo(np.float32).eps * np.abs(terms).sum(-1).mean()
  assert abs(float(metrics["kl"]) - kl.mean()) <= bound
  constant = np.asarray(losses.gaussian_label_distribution(ages, config.num_classes, 2.0), np.float64)
  constant_kl = (constant * (np.log(np.where(constant > 0, constant, 1.0)) - log_p)).sum(-1).mean()
  assert abs(float(metrics["kl"]) - constant_kl) > 100 * bound  # not the config's constant sigma


def test_the_training_arrays_carry_each_images_spread_floored_as_the_dldl_v2_code():
  config = training_setup.config("clap2016_dldlv2")
  source = {"image": np.zeros((3, 1, 1, 3), np.uint8), "age": np.float32([10, 20, 30]),
            "age_std": np.float32([0.0, 2.5, 1e-12])}
  arrays = training_data.training_arrays(config, source)
  np.testing.assert_array_equal(arrays["sigma"], np.float32([1e-10, 2.5, 1e-10]))
  config.sigma_field = ""
  assert set(training_data.training_arrays(config, source)) == {"image", "age"}


@pytest.mark.parametrize("changes, message", [
    ({"data.name": "fgnet", "data.crop": "whole", "protocol": "lopo"}, "fgnet has no per-image age spread"),
    ({"sigma_field": "real_age"}, "clap2016 has only age_std"),
    ({"stages": ({"loss": "cross_entropy", "loss_kwargs": {}}, {})},
     "a label-distribution loss .* the stage 1 loss is 'cross_entropy'"),
])
def test_a_sigma_field_the_data_or_the_loss_cannot_use_is_refused(changes, message):
  config = training_setup.config("clap2016_dldlv2", **changes)
  with pytest.raises(errors.ConfigError, match=f"config.sigma_field=.*{message}"):
    config_checks.check(config)


def test_the_dldl_v2_normalisation_is_the_codes_per_channel_constants():
  config = training_setup.config("clap2016_dldlv2")
  model = train_state.model(config)
  mean, std = np.array(train_state.INPUT_NORMALIZATIONS["dldl_v2"])
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  image = np.random.default_rng(1).uniform(size=(1, 64, 64, 3)).astype(np.float32)
  plain = train_state.model(ml_collections.ConfigDict({**config.to_dict(), "input_normalization": ""}))
  # The normalising model on an image equals the plain one on the image normalised by hand.
  np.testing.assert_allclose(jax.jit(model.apply)(variables, image),
                             jax.jit(plain.apply)(variables, (image - mean) / std), rtol=1e-5, atol=1e-5)
  config.input_normalization = "imagenet"
  with pytest.raises(errors.ConfigError, match="config.input_normalization must be '' .* or one of dldl_v2"):
    train_state.model(config)


def test_the_dldl_v2_config_trains_both_stages_with_each_images_sigma_on_clap2016(tmp_path, capsys):
  config = training_setup.config("clap2016_dldlv2", num_train_steps=2, eval_every_epochs=1, **{
      "data.manual_dir": str(ROOT / "datasets" / "clap2016" / "dummy_data"), "data.data_dir": str(tmp_path / "tfds")})
  assert [stage.name for stage in stages.stages_of(config)] == ["kl", "kl+l1"]
  result = experiment.train_and_evaluate(config, tmp_path / "run")
  out = capsys.readouterr().out
  assert "4 steps of 4 (" in out and "in 2 stages of 2, 2" in out
  assert "stage 2/2 (kl+l1) starts at step 2 from the previous stage's weights" in out
  logged = metric_writers.read_jsonl(tmp_path / "run" / "metrics.jsonl")
  train_steps = [entry["step"] for entry in logged if "train/loss" in entry]
  assert train_steps == [1, 2, 3, 4]
  assert 0 <= result["eps_error"] <= 1 and np.isfinite(result["mae"])
  assert result["count"] == len(reports.read_predictions_csv(tmp_path / "run" / "test" / "predictions.csv")["age"])
  assert (tmp_path / "run" / "validation" / "metrics.json").is_file()
  assert 2 in checkpoints.Checkpoints(tmp_path / "run" / "checkpoints").all_steps()
