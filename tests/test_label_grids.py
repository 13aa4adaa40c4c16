"""Label grids of any start and step: class j is the label start + step * j.

Three kinds of proof, all in float64: a hand-worked three-class case; the independent NumPy losses
(tests/numpy_reference.py) on a 0.1 grid; and the identities the algebra gives between a 0.1-step grid and the
1-step grid with every label (start, sigma) ten times larger, term by term.
"""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import numpy_reference as ref
from amr_jax import losses

# Class j is the score 1 + 0.1 j, j = 0..40: SCUT-FBP5500's grid (scores 1..5), as DLDL-v2's code makes it.
FINE = dict(label_start=1.0, label_step=0.1)
NUM_CLASSES = 41


def _inputs(seed, batch=16, num_classes=NUM_CLASSES):
  """float64 logits, integer-grid labels (in classes: 10..50 on a start of 10) that are never a half-way point."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 3, (batch, num_classes))
  classes = rng.integers(0, num_classes, batch)
  offsets = rng.uniform(-0.45, 0.45, batch)  # rounds to its class on both grids
  return logits, classes + offsets, rng.uniform(0.3, 3.0, batch)


def _x64(fn):
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.enable_x64(True):
      return fn(*args, **kwargs)
  return wrapped


# --------------------------------------------------------------------------
# A hand-worked case: three classes at 1.0, 1.5 and 2.0 (step 0.5), probabilities 1/4, 1/2, 1/4, label 1.7.


@_x64
def test_hand_worked_three_classes_half_step():
  logits = jnp.log(jnp.array([[0.25, 0.5, 0.25]], jnp.float64))
  label = jnp.array([1.7])
  grid = dict(label_start=1.0, label_step=0.5)
  # Expectation 1.0/4 + 1.5/2 + 2.0/4 = 1.5; variance (0.5^2)/4 + 0 + (0.5^2)/4 = 0.125.
  assert float(losses.expected_age(logits, **grid)[0]) == pytest.approx(1.5, abs=1e-15)
  # Class of 1.7: round((1.7 - 1.0) / 0.5) = round(1.4) = 1, the label 1.5: cross-entropy -ln(1/2).
  assert int(losses.label_class(label, 3, **grid)[0]) == 1
  terms = losses.mean_variance_terms(logits, label, **grid)
  assert float(terms["cross_entropy"][0]) == pytest.approx(math.log(2), abs=1e-15)
  assert float(terms["mean"][0]) == pytest.approx(0.5 * 0.2**2, abs=1e-15)
  assert float(terms["variance"][0]) == pytest.approx(0.125, abs=1e-15)
  # Gaussian target, sigma 0.5: exp(-(a - 1.7)^2 / 0.5) at a = 1.0, 1.5, 2.0, i.e. exp(-0.98), exp(-0.08), exp(-0.18).
  weights = np.exp([-0.98, -0.08, -0.18])
  target = np.asarray(losses.gaussian_label_distribution(label, 3, 0.5, **grid))[0]
  np.testing.assert_allclose(target, weights / weights.sum(), rtol=1e-14)
  dldl = losses.dldl_v2_terms(logits, label, sigma=0.5, **grid)
  kl = float(np.sum(target * (np.log(target) - np.log([0.25, 0.5, 0.25]))))
  assert float(dldl["kl"][0]) == pytest.approx(kl, abs=1e-14)
  assert float(dldl["l1"][0]) == pytest.approx(0.2, abs=1e-14)
  # Adaptive top-K: only class 1 is at least as probable as the true class 1.
  assert int(losses.adaptive_mean_residue_terms(logits, label, **grid)["top_k"][0]) == 1


# --------------------------------------------------------------------------
# Against the independent NumPy losses on the 0.1 grid: values and gradients.


@_x64
@pytest.mark.parametrize("name", ["amr", "amr_paper", "mean_residue", "mean_variance", "dldl_v2", "dldl_v2_mean"])
def test_fine_grid_matches_numpy_reference(name):
  logits, classes, sigma = _inputs(1)
  labels = 1.0 + 0.1 * classes
  sigma = 0.1 * sigma
  grid = dict(start_age=1.0, step=0.1)
  cases = {
      "amr": (losses.adaptive_mean_residue_loss, {}, ref.amr, {}),
      "amr_paper": (losses.adaptive_mean_residue_loss, {"residue_form": "paper"}, ref.amr, {"form": "paper"}),
      "mean_residue": (losses.mean_residue_loss, {"k": 4}, ref.mean_residue, {"k": 4}),
      "mean_variance": (losses.mean_variance_loss, {}, ref.mean_variance, {}),
      "dldl_v2": (losses.dldl_v2_loss, {"sigma": sigma}, ref.dldl_v2, {"sigma": sigma}),
      "dldl_v2_mean": (losses.dldl_v2_loss, {"sigma": sigma, "kl_reduction": "mean"}, ref.dldl_v2,
                       {"sigma": sigma, "kl_reduction": "mean"}),
  }
  fn, kwargs, reference, reference_kwargs = cases[name]
  expected, expected_grad, _ = reference(logits, labels, **grid, **reference_kwargs)
  loss = functools.partial(fn, **FINE, **kwargs)
  values = loss(jnp.asarray(logits), jnp.asarray(labels))
  grad = jax.grad(lambda z: jnp.sum(loss(z, jnp.asarray(labels))))(jnp.asarray(logits))
  np.testing.assert_allclose(np.asarray(values), expected, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------
# The 0.1 grid against the 1-step grid with labels, start and sigma ten times larger (ages 10..50 as scores 1..5).
# Every probability and class is the same, so the cross-entropy, the residue, the KL and the top-K are equal; the
# expectation, the L1 and sigma scale by 1/10; the mean term and the variance, squares, by 1/100.

SCALE = {"cross_entropy": 1, "residue": 1, "kl": 1, "top_k": 1, "mean": 0.01, "variance": 0.01, "l1": 0.1}


def _both_grids(terms_fn, seed=2, **kwargs):
  logits, classes, sigma = _inputs(seed)
  coarse_labels, fine_labels = 10.0 + classes, 1.0 + 0.1 * classes
  coarse_kwargs = {key: value for key, value in kwargs.items()}
  fine_kwargs = dict(kwargs)
  if "sigma" in kwargs:
    coarse_kwargs["sigma"], fine_kwargs["sigma"] = 10 * sigma, sigma
  coarse = terms_fn(jnp.asarray(logits), jnp.asarray(coarse_labels), start_age=10, **coarse_kwargs)
  fine = terms_fn(jnp.asarray(logits), jnp.asarray(fine_labels), **FINE, **fine_kwargs)
  return logits, coarse, fine


@_x64
@pytest.mark.parametrize("terms_fn, kwargs", [
    (losses.adaptive_mean_residue_terms, {}),
    (losses.adaptive_mean_residue_terms, {"residue_form": "paper"}),
    (losses.mean_residue_terms, {"k": 5}),
    (losses.mean_variance_terms, {}),
    (losses.dldl_terms, {"sigma": None}),
    (losses.dldl_v2_terms, {"sigma": None}),
], ids=["amr", "amr_paper", "mean_residue", "mean_variance", "dldl", "dldl_v2"])
def test_tenth_step_grid_is_the_integer_grid_scaled(terms_fn, kwargs):
  _, coarse, fine = _both_grids(terms_fn, **kwargs)
  for name in set(coarse) - {"loss"}:
    if name == "top_k":
      np.testing.assert_array_equal(np.asarray(fine[name]), np.asarray(coarse[name]))
    else:
      np.testing.assert_allclose(np.asarray(fine[name]), SCALE[name] * np.asarray(coarse[name]), rtol=1e-12,
                                 atol=1e-13, err_msg=name)


@_x64
def test_tenth_step_grid_expectation_and_target_are_scaled():
  logits, classes, sigma = _inputs(3)
  coarse = losses.expected_age(jnp.asarray(logits), start_age=10)
  fine = losses.expected_age(jnp.asarray(logits), **FINE)
  np.testing.assert_allclose(np.asarray(fine), np.asarray(coarse) / 10, rtol=1e-14)
  np.testing.assert_array_equal(np.asarray(losses.label_class(1.0 + 0.1 * classes, NUM_CLASSES, **FINE)),
                                np.asarray(losses.label_class(10.0 + classes, NUM_CLASSES, start_age=10)))
  for s in (sigma, 0.0):  # sigma 0 is the one-hot on both grids
    np.testing.assert_allclose(
        np.asarray(losses.gaussian_label_distribution(1.0 + 0.1 * classes, NUM_CLASSES, s / 10, **FINE)),
        np.asarray(losses.gaussian_label_distribution(10.0 + classes, NUM_CLASSES, s, start_age=10)), atol=1e-15)


@_x64
def test_weights_rescaled_by_the_algebra_give_the_same_loss_and_gradient():
  """AMR with lambda_mean x 100 on the 0.1 grid is the integer grid's AMR: same loss, same gradient."""
  logits, classes, _ = _inputs(4)

  def loss(z, labels, **kwargs):
    return jnp.sum(losses.adaptive_mean_residue_loss(z, labels, **kwargs))

  coarse = jax.value_and_grad(loss)(jnp.asarray(logits), jnp.asarray(10.0 + classes), start_age=10)
  fine = jax.value_and_grad(loss)(jnp.asarray(logits), jnp.asarray(1.0 + 0.1 * classes), lambda_mean=0.2 * 100,
                                  **FINE)
  np.testing.assert_allclose(float(fine[0]), float(coarse[0]), rtol=1e-12)
  np.testing.assert_allclose(np.asarray(fine[1]), np.asarray(coarse[1]), rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------
# Integer ages: the step of 1 is the default, and the two names of the start are one argument.


def test_start_age_and_label_start_are_one_argument():
  logits, classes, _ = _inputs(5, num_classes=70)
  logits, labels = jnp.asarray(logits, jnp.float32), jnp.asarray(16.0 + classes)
  by_age = losses.adaptive_mean_residue_loss(logits, labels, start_age=16)
  by_label = losses.adaptive_mean_residue_loss(logits, labels, label_start=16, label_step=1)
  np.testing.assert_array_equal(np.asarray(by_age), np.asarray(by_label))
  with pytest.raises(ValueError, match="give start_age or label_start"):
    losses.cross_entropy_loss(logits, classes, start_age=0, label_start=0)


@pytest.mark.parametrize("step", [0, -0.1, float("nan"), float("inf"), True, "0.1", np.array([0.1, 0.2])])
def test_bad_label_steps_are_refused(step):
  with pytest.raises(ValueError, match="label_step must be a finite number > 0"):
    losses.dldl_v2_loss(np.zeros((2, 5)), np.zeros(2), label_step=step)


def test_a_traced_label_step_is_refused():
  with pytest.raises(ValueError, match="label_step must be a number known at trace time"):
    jax.jit(lambda step: losses.expected_age(jnp.zeros((2, 5)), label_step=step))(0.1)


# --------------------------------------------------------------------------
# The label check on a grid.


def test_label_range_on_a_tenth_step_grid():
  # 5.04 rounds to class 40 (the score 5.0) and is kept; 5.06 would be class 41 and 0.94 class -1.
  losses.check_label_range(np.array([1.0, 2.35, 5.04]), NUM_CLASSES, **FINE)
  with pytest.raises(losses.LabelRangeError, match=r"2 of 3 labels are outside the 41 classes of labels 1..5 in steps "
                     r"of 0.1 \(label_start, label_step, num_classes\), e.g. label 5.06 at flat index 0"):
    losses.check_label_range(np.array([5.06, 3.0, 0.94]), NUM_CLASSES, **FINE)


def test_label_range_on_a_grid_inside_jit():
  checked = jax.jit(checkify.checkify(lambda labels: losses.check_label_range(labels, NUM_CLASSES, **FINE)))
  checked(jnp.array([1.0, 5.0]))[0].throw()
  error, _ = checked(jnp.array([1.0, 5.25]))  # exact in float32
  with pytest.raises(checkify.JaxRuntimeError, match=r"label 5.25 is outside the 41 classes of labels 1..5 in steps"):
    error.throw()


# --------------------------------------------------------------------------
# Beyond the losses: the head's starting prior and the evaluation's read-out use the same grid.


@_x64
def test_the_head_prior_on_a_tenth_step_grid_is_the_integer_grids():
  from amr_jax.models import head_init

  _, classes, _ = _inputs(6)
  coarse = head_init.age_prior(10.0 + classes, NUM_CLASSES, start_age=10)  # sigma: two classes, 2 years
  fine = head_init.age_prior(1.0 + 0.1 * classes, NUM_CLASSES, start_age=1.0, label_step=0.1)  # 0.2
  np.testing.assert_allclose(fine, coarse, rtol=1e-12)


@_x64
def test_the_evaluation_reads_mean_spread_and_mode_on_the_grid():
  from amr_jax.evaluation import evaluate

  probs = jnp.asarray([[0.25, 0.5, 0.25], [0.0, 0.2, 0.8]], jnp.float64)
  mean, std = evaluate.distribution_mean_and_std(probs, 1.0, 0.5)  # labels 1.0, 1.5, 2.0
  np.testing.assert_allclose(np.asarray(mean), [1.5, 1.9], rtol=1e-15)
  # Spreads: sqrt(0.125); sqrt(0.2 * 0.4^2 + 0.8 * 0.1^2) = 0.2.
  np.testing.assert_allclose(np.asarray(std), [math.sqrt(0.125), 0.2], rtol=1e-14)


@pytest.mark.parametrize("step", [0, -1, float("nan"), float("inf")])
def test_a_config_with_a_bad_label_step_is_refused_naming_the_field(step):
  import training_setup
  from amr_jax import config_checks, errors

  with pytest.raises(errors.ConfigError, match=r"config.label_step must be a finite number > 0"):
    config_checks.check_fields(training_setup.config("fgnet_amr", None, label_step=step), num_devices=1)


@pytest.mark.parametrize("field, value, message", [
    ("cs_step", 0, "config.cs_step must be a finite number > 0"), ("cs_step", float("inf"), "config.cs_step"),
    ("label_name", "", "config.label_name must be a non-empty string"),
    ("label_unit", " ", "config.label_unit must be a non-empty string")])
def test_a_config_with_a_bad_report_scale_is_refused_naming_the_field(field, value, message):
  import training_setup
  from amr_jax import config_checks, errors

  with pytest.raises(errors.ConfigError, match=message):
    config_checks.check_fields(training_setup.config("fgnet_amr", None, **{field: value}), num_devices=1)


def test_the_report_scale_changes_on_resume_and_a_workdir_from_before_it_reads_as_years(tmp_path):
  import training_setup
  from amr_jax import workdir_layout
  from amr_jax.evaluation import reports

  config = training_setup.config("scut_fbp5500_dldlv2", "0")
  assert reports.LabelScale.of(config) == reports.LabelScale("score", "points", 0.1)
  stored = workdir_layout.as_json_dict(training_setup.config("fgnet_amr", "3"))
  for field in ("label_name", "label_unit", "cs_step"):
    del stored[field]  # a config.json written before the fields existed
  ages = training_setup.config("fgnet_amr", "3")
  assert workdir_layout.differences(stored, ages, workdir_layout.RESUME_FIELDS) == ([], {})
  ages.cs_step, ages.label_unit = 0.5, "half-years"
  for allowed in (workdir_layout.RESUME_FIELDS, workdir_layout.EVAL_FIELDS):
    assert workdir_layout.differences(stored, ages, allowed) == (
        [], {"cs_step": (1.0, 0.5), "label_unit": ("years", "half-years")})
  (tmp_path / workdir_layout.CONFIG_FILE).write_text(json.dumps(stored))
  assert reports.LabelScale.of(workdir_layout.load(tmp_path)) == reports.AGES
