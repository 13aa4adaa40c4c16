"""config.head_bias="age_prior": the head's starting bias from the training ages (amr_jax.models.head_init)."""

import json
import re

import jax
import numpy as np
import pytest

from amr_jax import errors, experiment, workdir_layout
from amr_jax.data import training_data
from amr_jax.models import head_init
from amr_jax.training import fold_layout, fold_loop, train_state
from benchmarks import frozen_backbone
import training_setup

# float64 identities: a softmax of 70 log-probabilities, each rounded at 1e-16 relative.
FLOAT64_RTOL = 1e-12


def test_without_smoothing_the_prior_is_the_histogram_of_the_rounded_classes():
  prior = head_init.age_prior([3, 3, 5], 8, sigma=0.0, uniform_share=0.0)
  np.testing.assert_allclose(prior, [0, 0, 0, 2 / 3, 0, 1 / 3, 0, 0], rtol=FLOAT64_RTOL, atol=1e-15)
  # class k is age start_age + k, and an age goes to its nearest class: 20.4 - 18 = 2.4 -> class 2
  np.testing.assert_array_equal(head_init.age_prior([20.4], 5, start_age=18, sigma=0.0, uniform_share=0.0),
                                [0, 0, 1, 0, 0])


def test_the_prior_is_the_mean_gaussian_target_mixed_with_a_uniform_share():
  ages = np.array([10.0, 12.5])
  classes = np.arange(21.0)
  # each age's Gaussian over the classes, normalised, as DLDL's target; then averaged; then 10% uniform
  gaussians = np.exp(-(classes[None] - ages[:, None]) ** 2 / (2 * 2.0 ** 2))
  expected = 0.9 * (gaussians / gaussians.sum(axis=1, keepdims=True)).mean(axis=0) + 0.1 / 21
  prior = head_init.age_prior(ages, 21, sigma=2.0, uniform_share=0.1)
  assert prior.dtype == np.float64 and prior.shape == (21,)
  # gaussian_label_distribution computes in float32 here (no 64-bit JAX): 1e-6 of each class's share
  np.testing.assert_allclose(prior, expected, rtol=1e-6)
  assert abs(prior.sum() - 1) < 1e-12


def test_the_bias_is_centred_and_its_softmax_is_the_prior():
  ages = np.random.default_rng(0).uniform(10, 40, 200)  # 5 sigmas inside 0..69: no Gaussian mass cut off
  prior = head_init.age_prior(ages, 70)
  bias = head_init.prior_bias(ages, 70)
  assert abs(bias.mean()) < FLOAT64_RTOL * np.abs(bias).max()
  with jax.enable_x64(True):
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(bias)), prior, rtol=FLOAT64_RTOL)
  # The prior's expected age is the training mean, pulled to mid-range by the 1% uniform share: a Gaussian sampled
  # at whole years has the mean of the continuous one up to exp(-2 pi^2 sigma^2) ~ 1e-34; float32 targets, 1e-6.
  np.testing.assert_allclose(prior @ np.arange(70), 0.99 * ages.mean() + 0.01 * 34.5, rtol=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda: head_init.age_prior([], 70), "age_prior needs at least one training age"),
    (lambda: head_init.age_prior([3.0, np.nan], 70), "age_prior: the ages must be finite; got nan"),
    (lambda: head_init.age_prior([3.0], 70, sigma=-1.0),
     "age_prior: sigma must be a number of years (label units) >= 0; got -1.0"),
    (lambda: head_init.age_prior([3.0], 70, uniform_share=1.5), "uniform_share must be in [0, 1]; got 1.5"),
    (lambda: head_init.prior_bias([3.0], 70, sigma=0.0, uniform_share=0.0), "a class has probability 0"),
])
def test_bad_arguments_are_refused_naming_them(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


def test_with_head_bias_replaces_only_the_bias_in_its_dtype():
  params = {"_conv_stem": {"kernel": np.ones((3, 3, 3, 8), np.float32)},
            "_fc": {"kernel": np.ones((8, 4), np.float32), "bias": np.zeros(4, np.float32)}}
  new = head_init.with_head_bias(params, np.array([1.0, 2.0, 3.0, 4.0]))
  assert new["_fc"]["bias"].dtype == np.float32 and new["_fc"]["bias"].tolist() == [1, 2, 3, 4]
  assert new["_fc"]["kernel"] is params["_fc"]["kernel"] and new["_conv_stem"] is params["_conv_stem"]
  assert params["_fc"]["bias"].tolist() == [0, 0, 0, 0]  # the given params are left as they were
  with pytest.raises(ValueError, match=re.escape("the head's bias has shape (4,); got a bias of shape (3,)")):
    head_init.with_head_bias(params, np.zeros(3))
  with pytest.raises(ValueError, match="the model's head layer must be one of"):
    head_init.with_head_bias({"dense": {}}, np.zeros(3))


def _data(fgnet_dirs, **changes):
  manual, data_dir = fgnet_dirs
  return {"data.manual_dir": str(manual), "data.data_dir": str(data_dir), **changes}


def test_the_trainer_starts_a_fold_at_its_training_ages_prior_and_a_resume_at_its_checkpoint(fgnet_dirs, tmp_path):
  config = training_setup.config("fgnet_amr", "3", head_bias="age_prior", **_data(fgnet_dirs))
  dataset = training_data.load_arrays(config.data, config.image_size, training_data.prepare(config.data))
  fold = training_data.fold_splits(config, dataset, 3)
  model = train_state.model(config)
  initial = train_state.initial_train_state(config, model, train_state.optimizer(config))
  layout = fold_layout.FoldLayout(False)
  start = fold_loop.open_fold(config, tmp_path / "fresh", fold, initial, layout).state
  expected = head_init.prior_bias(fold.train["age"], config.num_classes)
  # the bias is the fold's prior (in the parameters' float32); every other parameter is the model's initialisation
  np.testing.assert_allclose(start.params["fc"]["bias"], expected.astype(np.float32), rtol=0, atol=0)
  others = jax.tree.map(np.array_equal, {**start.params, "fc": start.params["fc"]["kernel"]},
                        {**jax.device_get(initial.params), "fc": jax.device_get(initial.params)["fc"]["kernel"]})
  assert all(jax.tree.leaves(others))

  experiment.train_and_evaluate(config, tmp_path / "run")
  resumed = fold_loop.open_fold(config, tmp_path / "run", fold, initial, layout)
  assert resumed.step == 2
  trained = resumed.store.restore(jax.device_get(initial))
  np.testing.assert_array_equal(resumed.state.params["fc"]["bias"], trained.params["fc"]["bias"])
  assert not np.array_equal(resumed.state.params["fc"]["bias"], start.params["fc"]["bias"])


def test_the_frozen_heads_start_each_fold_from_its_own_prior():
  config = training_setup.config("fgnet_amr", head_bias="age_prior")
  ages = np.array([5.0, 7.0, 30.0, 31.0])
  folds = [np.array([0, 1]), np.array([2, 3])]
  biases = frozen_backbone.initial_biases(config, np.zeros(70, np.float32), ages, folds)
  np.testing.assert_array_equal(biases[1], head_init.prior_bias(ages[2:], 70))
  assert np.argmax(biases[0]) == 6 and np.argmax(biases[1]) in (30, 31)
  config.head_bias = "zeros"
  np.testing.assert_array_equal(frozen_backbone.initial_biases(config, np.full(70, 0.5), ages, folds),
                                np.full((2, 70), 0.5))


def test_a_workdir_from_before_the_field_resumes_as_zeros_and_refuses_the_prior(tmp_path):
  config = training_setup.config("fgnet_amr", "3", head_bias="zeros")
  stored = workdir_layout.as_json_dict(config)
  del stored["head_bias"]  # a config.json written before config.head_bias existed
  del stored["augmentation"]["downscale_range"]  # ... and before augmentation.downscale_range
  assert workdir_layout.differences(stored, config, workdir_layout.RESUME_FIELDS) == ([], {})
  config.head_bias = "age_prior"
  refused, _ = workdir_layout.differences(stored, config, workdir_layout.RESUME_FIELDS)
  assert refused == ["config.head_bias: 'zeros' in the workdir, 'age_prior' now"]


def test_an_unknown_head_bias_is_refused_naming_the_field():
  from amr_jax import config_checks
  config = training_setup.config("fgnet_amr", "3", head_bias="prior")
  with pytest.raises(errors.ConfigError, match=re.escape("config.head_bias must be one of zeros, age_prior; "
                                                         "got 'prior'")):
    config_checks.check_fields(config, num_devices=1)


def test_the_head_bias_benchmark_pairs_the_two_starts_of_each_loss(fgnet_dirs, tmp_path):
  from benchmarks import head_bias

  manual, data_dir = fgnet_dirs
  head_bias.main([f"--workdir={tmp_path}", f"--manual_dir={manual}", f"--data_dir={data_dir}", "--protocol=lopo",
                  "--model=tiny_age_net", "--pretrained=", "--image_size=64", "--num_epochs=2", "--seeds=0",
                  "--losses=amr,cross_entropy", "--set=batch_size=4"])
  table = (tmp_path / "head_bias.md").read_text()
  for loss in ("amr", "cross_entropy"):
    zeros, prior = (json.loads((tmp_path / start / f"{loss}_seed0" / "summary" / "metrics.json").read_text())["mae"]
                    for start in ("zeros", "age_prior"))
    assert zeros != prior  # the two starts trained differently
    cells = next(line for line in table.splitlines() if line.startswith(f"| {loss} |")).split("|")[1:-1]
    assert cells[1].strip() == f"{zeros:.2f} ± 0.00" and cells[2].strip() == f"{prior:.2f} ± 0.00"
    assert float(cells[4]) == pytest.approx(prior - zeros, abs=5e-4)  # one seed: the paired difference of MAEs
    better, worse = (int(n) for n in cells[-1].split("/"))
    assert better + worse <= 4  # 4 subjects; a tie counts for neither
    for start in ("zeros", "age_prior"):
      stored = json.loads((tmp_path / start / f"{loss}_seed0" / "config.json").read_text())
      assert stored["head_bias"] == start
