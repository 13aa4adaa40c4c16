"""The losses against the vectors produced by the original PyTorch code (../shared/reference)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amr_jax import losses

CASES = ["fgnet_70cls_N4", "clap_101cls_N3", "peaked_70cls_N2"]
VALUE_RTOL = 1e-5
GRAD_TOL = 1e-5  # times the largest gradient entry


@pytest.fixture(scope="module")
def vectors(shared_dir):
  return json.loads((shared_dir / "reference" / "amr_reference_vectors.json").read_text())


def _inputs(case):
  assert case["start_age"] == 0 and case["lambda1"] == 0.2 and case["lambda2"] == 0.05
  return jnp.asarray(np.array(case["logits"], np.float32)), jnp.asarray(np.array(case["labels"]))


def _assert_grad_close(actual, expected):
  expected = np.asarray(expected)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=GRAD_TOL * np.abs(expected).max())


def test_reference_file_has_every_case(vectors):
  assert sorted(vectors) == sorted(CASES)


@pytest.mark.parametrize("name", CASES)
def test_adaptive_amr_terms_and_total(vectors, name):
  case = vectors[name]
  logits, labels = _inputs(case)
  terms = jax.jit(losses.adaptive_mean_residue_terms)(logits, labels)
  np.testing.assert_allclose(terms["cross_entropy"].mean(), case["ce"], rtol=VALUE_RTOL)
  np.testing.assert_allclose(0.2 * terms["mean"].mean(), case["amr_mean_loss_weighted"], rtol=VALUE_RTOL)
  np.testing.assert_allclose(0.05 * terms["residue"].mean(), case["amr_residue_loss_weighted"], rtol=VALUE_RTOL)
  np.testing.assert_array_equal(terms["top_k"], case["per_sample_K"])
  np.testing.assert_allclose(terms["top_k"].mean(), case["batch_average_K"])
  np.testing.assert_allclose(terms["loss"].mean(), case["total"], rtol=VALUE_RTOL)
  loss = jax.jit(losses.adaptive_mean_residue_loss)(logits, labels)
  np.testing.assert_allclose(loss.mean(), case["total"], rtol=VALUE_RTOL)


@pytest.mark.parametrize("name", CASES)
def test_adaptive_amr_gradients(vectors, name):
  case = vectors[name]
  logits, labels = _inputs(case)
  total = jax.jit(jax.grad(lambda z: losses.adaptive_mean_residue_loss(z, labels).mean()))(logits)
  _assert_grad_close(total, case["grad_total_wrt_logits"])
  residue = jax.jit(jax.grad(lambda z: 0.05 * losses.adaptive_mean_residue_terms(z, labels)["residue"].mean()))(logits)
  _assert_grad_close(residue, case["grad_residue_only_wrt_logits"])


@pytest.mark.parametrize("name", CASES)
def test_fixed_k_residue(vectors, name):
  case = vectors[name]
  logits, labels = _inputs(case)
  terms = jax.jit(losses.mean_residue_terms)(logits, labels)  # k=3 by default
  np.testing.assert_allclose(0.05 * terms["residue"].mean(), case["fixedK3_residue_weighted"], rtol=VALUE_RTOL)


@pytest.mark.parametrize("name", CASES)
def test_mean_variance_terms_and_gradient(vectors, name):
  case = vectors[name]
  logits, labels = _inputs(case)
  terms = jax.jit(losses.mean_variance_terms)(logits, labels)
  np.testing.assert_allclose(0.2 * terms["mean"].mean(), case["mv_mean_loss_weighted"], rtol=VALUE_RTOL)
  np.testing.assert_allclose(0.05 * terms["variance"].mean(), case["mv_variance_loss_weighted"], rtol=VALUE_RTOL)
  np.testing.assert_allclose(terms["cross_entropy"].mean(), case["ce"], rtol=VALUE_RTOL)

  def mean_and_variance(z):
    t = losses.mean_variance_terms(z, labels)
    return (0.2 * t["mean"] + 0.05 * t["variance"]).mean()

  _assert_grad_close(jax.jit(jax.grad(mean_and_variance))(logits), case["mv_grad_total"])
