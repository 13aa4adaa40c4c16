"""The losses against independent NumPy code, hand-computed cases, properties and transforms."""

import functools

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import numpy_reference as ref
from amr_jax import losses

RTOL = 2e-5


def _random_case(seed, batch, num_classes, *, scale=3.0, start_age=0, real_labels=False):
  """Random logits and ages; a negative ``scale`` rounds the logits to integers, so many tie exactly."""
  rng = np.random.default_rng(seed)
  logits = (rng.standard_normal((batch, num_classes)) * abs(scale)).astype(np.float32)
  if scale < 0:
    logits = np.round(logits)
  labels = rng.integers(start_age, start_age + num_classes, size=batch)
  if real_labels:
    labels = labels + rng.uniform(-0.49, 0.49, size=batch)
    labels = np.clip(labels, start_age, start_age + num_classes - 1).astype(np.float32)
  return logits, labels


def _assert_grads_close(actual, expected, rel=2e-5):
  np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * np.abs(expected).max())


# (batch, num_classes, start_age, scale, real_labels)
NUMPY_CASES = [
    (1, 70, 0, 3.0, False),       # batch size 1
    (8, 2, 0, 1.0, False),        # two classes
    (16, 70, 0, 3.0, True),       # FG-NET classes, real-valued labels
    (12, 101, 0, 30.0, False),    # very confident logits
    (9, 61, 16, 3.0, False),      # start_age 16 (ages 16..76)
    (5, 85, 7, 5.0, True),        # odd start age, real labels
    (16, 30, 0, -2.0, False),     # logits rounded to integers: many exact ties, with the true class too
]


@pytest.mark.parametrize("batch,num_classes,start_age,scale,real_labels", NUMPY_CASES)
@pytest.mark.parametrize("form", ["reference", "paper"])
def test_adaptive_amr_matches_numpy(batch, num_classes, start_age, scale, real_labels, form):
  logits, labels = _random_case(batch + num_classes, batch, num_classes, scale=scale,
                                start_age=start_age, real_labels=real_labels)
  kw = dict(start_age=start_age, residue_form=form)
  want_loss, want_grad, info = ref.amr(logits, labels, form=form, start_age=start_age)
  terms = jax.jit(functools.partial(losses.adaptive_mean_residue_terms, **kw))(logits, labels)
  np.testing.assert_allclose(terms["loss"], want_loss, rtol=RTOL)
  np.testing.assert_allclose(terms["residue"], [i["residue"] for i in info], rtol=RTOL, atol=1e-6)
  np.testing.assert_array_equal(terms["top_k"], [i["top_k"] for i in info])
  grad = jax.jit(jax.grad(lambda z: losses.adaptive_mean_residue_loss(z, labels, **kw).sum()))(logits)
  _assert_grads_close(grad, want_grad)


@pytest.mark.parametrize("batch,num_classes,start_age,scale,real_labels", NUMPY_CASES)
@pytest.mark.parametrize("k", [1, 3])
def test_fixed_k_matches_numpy(batch, num_classes, start_age, scale, real_labels, k):
  k = min(k, num_classes)
  logits, labels = _random_case(batch * 7 + num_classes, batch, num_classes, scale=scale,
                                start_age=start_age, real_labels=real_labels)
  want_loss, want_grad, _ = ref.mean_residue(logits, labels, k=k, start_age=start_age)
  loss_fn = functools.partial(losses.mean_residue_loss, k=k, start_age=start_age)
  np.testing.assert_allclose(jax.jit(loss_fn)(logits, labels), want_loss, rtol=RTOL)
  _assert_grads_close(jax.jit(jax.grad(lambda z: loss_fn(z, labels).sum()))(logits), want_grad)


@pytest.mark.parametrize("batch,num_classes,start_age,scale,real_labels", NUMPY_CASES)
def test_mean_variance_matches_numpy(batch, num_classes, start_age, scale, real_labels):
  logits, labels = _random_case(batch * 3 + num_classes, batch, num_classes, scale=scale,
                                start_age=start_age, real_labels=real_labels)
  want_loss, want_grad, _ = ref.mean_variance(logits, labels, start_age=start_age)
  loss_fn = functools.partial(losses.mean_variance_loss, start_age=start_age)
  np.testing.assert_allclose(jax.jit(loss_fn)(logits, labels), want_loss, rtol=RTOL)
  _assert_grads_close(jax.jit(jax.grad(lambda z: loss_fn(z, labels).sum()))(logits), want_grad)


@pytest.mark.parametrize("batch,num_classes,start_age,scale,real_labels", NUMPY_CASES)
@pytest.mark.parametrize("sigma_kind", ["scalar", "zero", "per_example"])
@pytest.mark.parametrize("kl_reduction", ["sum", "mean"])
def test_dldl_v2_matches_numpy(batch, num_classes, start_age, scale, real_labels, sigma_kind, kl_reduction):
  logits, labels = _random_case(batch * 5 + num_classes, batch, num_classes, scale=scale,
                                start_age=start_age, real_labels=real_labels)
  sigma = {"scalar": 2.0, "zero": 0.0,
           "per_example": np.linspace(0.0, 6.0, batch).astype(np.float32)}[sigma_kind]
  want_loss, want_grad, info = ref.dldl_v2(logits, labels, sigma=sigma, start_age=start_age,
                                           kl_reduction=kl_reduction)
  loss_fn = functools.partial(losses.dldl_v2_loss, start_age=start_age, kl_reduction=kl_reduction)
  np.testing.assert_allclose(jax.jit(loss_fn)(logits, labels, sigma=sigma), want_loss, rtol=RTOL, atol=1e-6)
  grad = jax.jit(jax.grad(lambda z: loss_fn(z, labels, sigma=sigma).sum()))(logits)
  _assert_grads_close(grad, want_grad)
  # DLDL (KL only) is the KL term of DLDL-v2 with kl_reduction="sum".
  if kl_reduction == "sum":
    dldl = jax.jit(functools.partial(losses.dldl_loss, start_age=start_age))  # op by op, each shape compiles each op
    np.testing.assert_allclose(dldl(logits, labels, sigma=sigma), [i["kl"] for i in info], rtol=RTOL, atol=1e-6)


def test_dldl_with_zero_sigma_is_cross_entropy():
  logits, labels = _random_case(0, 6, 40, start_age=10)
  np.testing.assert_allclose(losses.dldl_loss(logits, labels, sigma=0.0, start_age=10),
                             losses.cross_entropy_loss(logits, labels, start_age=10), rtol=1e-6)


def test_cross_entropy_and_expected_age_match_numpy():
  logits, labels = _random_case(1, 10, 30, start_age=20)
  want_ce = [-ref.log_softmax(z)[y - 20] for z, y in zip(logits, labels)]
  np.testing.assert_allclose(jax.jit(functools.partial(losses.cross_entropy_loss, start_age=20))(logits, labels),
                             want_ce, rtol=1e-6)
  want_age = [ref.softmax(z) @ (20 + np.arange(30)) for z in logits]
  np.testing.assert_allclose(losses.expected_age(logits, start_age=20), want_age, rtol=1e-6)


def test_gaussian_label_distribution_matches_numpy():
  labels = np.array([0.0, 3.4, 9.0, 20.0])  # 20 is outside the 10 classes
  sigma = np.array([1.0, 2.5, 0.0, 2.0])
  got = losses.gaussian_label_distribution(labels, 10, sigma)
  want = [ref.gaussian_target(y, 10, s) for y, s in zip(labels, sigma)]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.sum(got, axis=-1), 1.0, rtol=1e-6)


# ---------------------------------------------------------------- hand-computed cases


def test_adaptive_amr_hand_computed_with_exact_tie():
  # p = [0.1, 0.4, 0.4, 0.1], true class 1: the tie with class 2 puts both in T, K = 2.
  probs = np.array([0.1, 0.4, 0.4, 0.1])
  logits = np.log(probs)[None].astype(np.float32)
  eps = 1e-3
  terms = losses.adaptive_mean_residue_terms(logits, np.array([1]))
  mean_age = 0 * 0.1 + 1 * 0.4 + 2 * 0.4 + 3 * 0.1  # 1.5
  residue = 2 * (-eps * np.log(eps)) + 2 * (-(0.1 + eps) * np.log(0.1 + eps))
  np.testing.assert_array_equal(terms["top_k"], [2])
  np.testing.assert_allclose(terms["cross_entropy"], [-np.log(0.4)], rtol=1e-6)
  np.testing.assert_allclose(terms["mean"], [0.5 * (mean_age - 1) ** 2], rtol=1e-5)
  np.testing.assert_allclose(terms["residue"], [residue], rtol=1e-5)
  np.testing.assert_allclose(terms["loss"], [-np.log(0.4) + 0.2 * 0.125 + 0.05 * residue], rtol=1e-5)
  # Label 0 (least probable class, tied with class 3): every class is in T.
  np.testing.assert_array_equal(losses.adaptive_mean_residue_terms(logits, np.array([0]))["top_k"], [4])
  # The paper's form drops the constant: only the two classes outside T count.
  paper = losses.adaptive_mean_residue_terms(logits, np.array([1]), residue_form="paper")
  np.testing.assert_allclose(paper["residue"], [-2 * 0.1 * np.log(0.1)], rtol=1e-5)


def test_fixed_k_breaks_ties_towards_lower_class():
  logits = np.log(np.array([[0.3, 0.3, 0.3, 0.1]])).astype(np.float32)
  eps = 1e-3
  # k = 2 keeps classes 0 and 1; the residue sums over classes 2 and 3 only.
  want = -(0.3 + eps) * np.log(0.3 + eps) - (0.1 + eps) * np.log(0.1 + eps)
  got = losses.mean_residue_terms(logits, np.array([2]), k=2)["residue"]
  np.testing.assert_allclose(got, [want], rtol=1e-5)


def test_mean_variance_hand_computed():
  logits = np.log(np.array([[0.5, 0.0, 0.5]]) + 1e-30).astype(np.float32)
  terms = losses.mean_variance_terms(logits, np.array([2]), start_age=10)  # ages 10, 11, 12; label 2 -> class 0
  # mean 11, variance 1; label age 2 -> class clamped to 0 (age 10), mean term uses 2.
  np.testing.assert_allclose(terms["variance"], [1.0], rtol=1e-5)
  np.testing.assert_allclose(terms["mean"], [0.5 * (11 - 2) ** 2], rtol=1e-5)
  np.testing.assert_allclose(terms["cross_entropy"], [np.log(2)], rtol=1e-5)


def test_label_class_rounds_and_clamps():
  got = losses.label_class(np.array([16.0, 16.4, 16.6, 17.5, 18.5, 3.0, 99.0]), 10, start_age=16)
  np.testing.assert_array_equal(got, [0, 0, 1, 2, 2, 0, 9])  # half to even: 17.5 -> 18, 18.5 -> 18


def test_out_of_range_labels_clamp_class_but_keep_age():
  logits, _ = _random_case(3, 2, 20, start_age=10)
  inside = np.array([10, 29])
  outside = np.array([4.0, 35.0])
  t_in = losses.adaptive_mean_residue_terms(logits, inside, start_age=10)
  t_out = losses.adaptive_mean_residue_terms(logits, outside, start_age=10)
  np.testing.assert_allclose(t_out["cross_entropy"], t_in["cross_entropy"])  # same (end) class
  np.testing.assert_array_equal(t_out["top_k"], t_in["top_k"])
  m = losses.expected_age(logits, start_age=10)
  np.testing.assert_allclose(t_out["mean"], 0.5 * (m - outside) ** 2, rtol=1e-5)  # unclamped age
  for fn in (losses.dldl_v2_loss, losses.mean_variance_loss, losses.mean_residue_loss):
    assert np.all(np.isfinite(fn(logits, np.array([-500.0, 1e6]), start_age=10)))


# ---------------------------------------------------------------- properties

ALL_LOSSES = {
    "cross_entropy": losses.cross_entropy_loss,
    "amr": losses.adaptive_mean_residue_loss,
    "amr_paper": functools.partial(losses.adaptive_mean_residue_loss, residue_form="paper"),
    "mean_residue": losses.mean_residue_loss,
    "mean_variance": losses.mean_variance_loss,
    "dldl": losses.dldl_loss,
    "dldl_v2": losses.dldl_v2_loss,
    "dldl_v2_sigma0": functools.partial(losses.dldl_v2_loss, sigma=0.0),
}


@functools.cache
def _value_and_grad(name):
  return jax.jit(jax.value_and_grad(lambda z, y: ALL_LOSSES[name](z, y).mean()))


@hypothesis.given(
    name=st.sampled_from(sorted(ALL_LOSSES)),
    dtype=st.sampled_from([np.float32, jnp.bfloat16]),
    logits=hnp.arrays(np.float32, (3, 12), elements=st.floats(-1e4, 1e4, width=32)),
    labels=hnp.arrays(np.int32, (3,), elements=st.integers(0, 11)),
)
def test_values_and_gradients_are_finite(name, dtype, logits, labels):
  loss, grad = _value_and_grad(name)(jnp.asarray(logits, dtype), labels)
  assert loss.dtype == jnp.float32 and grad.dtype == dtype
  assert np.isfinite(loss), loss
  assert np.all(np.isfinite(np.asarray(grad, np.float32))), grad


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_one_class_certain_predictions_are_finite(name, dtype):
  logits = jnp.asarray(np.where(np.eye(4, 12, 2, dtype=bool), 1e4, -1e4), dtype)
  for labels in ([2, 3, 4, 5], [0, 11, 5, 7]):  # right and wrong classes
    loss, grad = _value_and_grad(name)(logits, np.array(labels))
    assert np.isfinite(loss) and np.all(np.isfinite(np.asarray(grad, np.float32)))


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_bfloat16_close_to_float32(name):
  logits, labels = _random_case(11, 8, 30)
  full = ALL_LOSSES[name](logits, labels)
  half = ALL_LOSSES[name](jnp.asarray(logits, jnp.bfloat16), labels)
  assert half.dtype == jnp.float32
  # bfloat16 keeps 8 bits: logits of size ~10 move by ~0.03.
  np.testing.assert_allclose(half, full, rtol=0.05, atol=0.1)


SMOOTH_LOSSES = ["cross_entropy", "amr", "amr_paper", "mean_residue", "mean_variance", "dldl", "dldl_v2_sigma0"]


@pytest.mark.parametrize("name", SMOOTH_LOSSES)
def test_check_grads_float64(name):
  # Away from ties the top-K selection is locally constant, so every loss here is smooth.
  logits, labels = _random_case(5, 3, 9)
  with jax.enable_x64(True):
    logits = jnp.asarray(logits, jnp.float64)
    fn = lambda z: ALL_LOSSES[name](z, labels)  # noqa: E731
    assert fn(logits).dtype == jnp.float64
    check_grads(fn, (logits,), order=2, modes=["fwd", "rev"], eps=1e-4, atol=1e-5, rtol=1e-5)


def test_gradient_with_respect_to_real_labels():
  logits, labels = _random_case(8, 4, 20, real_labels=True)
  with jax.enable_x64(True):
    labels = jnp.asarray(labels, jnp.float64)
    logits = jnp.asarray(logits, jnp.float64)
    grad = jax.grad(lambda y: losses.mean_variance_loss(logits, y, lambda_mean=1.0).sum())(labels)
    np.testing.assert_allclose(grad, -(losses.expected_age(logits) - labels), rtol=1e-10)


# ---------------------------------------------------------------- transforms


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_vmap_matches_batched_call(name):
  logits, labels = _random_case(21, 6, 15)
  batched = ALL_LOSSES[name](logits, labels)
  per_example = jax.vmap(ALL_LOSSES[name])(logits, labels)  # each call sees [C] and a scalar label
  np.testing.assert_allclose(per_example, batched, rtol=1e-6)
  stacked = jax.jit(jax.vmap(ALL_LOSSES[name]))(logits.reshape(2, 3, 15), labels.reshape(2, 3))
  np.testing.assert_allclose(stacked.reshape(-1), batched, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_pmap_matches_single_device(name, cpu_devices):
  n = len(cpu_devices)
  logits, labels = _random_case(31, 8, 15)
  step = jax.pmap(jax.value_and_grad(lambda z, y: jax.lax.pmean(ALL_LOSSES[name](z, y).mean(), "batch")),
                  axis_name="batch", devices=cpu_devices)
  loss, grad = step(logits.reshape(n, -1, 15), labels.reshape(n, -1))
  want_loss, want_grad = _value_and_grad(name)(logits, labels)
  np.testing.assert_allclose(loss, np.full(n, want_loss), rtol=1e-5)
  np.testing.assert_allclose(grad.reshape(8, 15) / n, want_grad, rtol=1e-4, atol=1e-7)


def test_terms_and_loss_agree_and_terms_are_per_example():
  # Two compiled programs of one formula: in float64, so that XLA's freedom to reorder (fast-math) stays at 1e-16.
  logits, labels = _random_case(41, 5, 20)
  for terms_fn, loss_fn in [
      (losses.adaptive_mean_residue_terms, losses.adaptive_mean_residue_loss),
      (losses.mean_residue_terms, losses.mean_residue_loss),
      (losses.mean_variance_terms, losses.mean_variance_loss),
      (losses.dldl_terms, losses.dldl_loss),
      (losses.dldl_v2_terms, losses.dldl_v2_loss),
  ]:
    with jax.enable_x64(True):
      terms = jax.jit(terms_fn)(logits.astype(np.float64), labels)
      loss = jax.jit(loss_fn)(logits.astype(np.float64), labels)
    assert all(v.shape == (5,) for v in terms.values()), terms_fn.__name__
    assert loss.dtype == np.float64
    np.testing.assert_allclose(terms["loss"], loss, rtol=1e-12)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("call,match", [
    (lambda: losses.adaptive_mean_residue_loss(np.zeros((4, 10), np.int32), np.zeros(4)), "logits must be a floating"),
    (lambda: losses.adaptive_mean_residue_loss(np.float32(1.0), np.zeros(())), r"logits must have shape \[..., num_classes\]"),
    (lambda: losses.mean_variance_loss(np.zeros((4, 10)), np.zeros((4, 1))), r"labels must have shape \(4,\)"),
    (lambda: losses.cross_entropy_loss(np.zeros((4, 10)), np.zeros(3)), r"labels must have shape \(4,\)"),
    (lambda: losses.dldl_loss(np.zeros((4, 10)), np.zeros(4, bool)), "labels must hold integer or real values"),
    (lambda: losses.dldl_v2_loss(np.zeros((4, 10)), np.zeros(4), sigma=np.ones(3)), r"sigma must be a scalar or have shape \(4,\)"),
    (lambda: losses.mean_residue_loss(np.zeros((4, 10)), np.zeros(4), k=0), r"k must be an integer in \[1, num_classes=10\]"),
    (lambda: losses.mean_residue_loss(np.zeros((4, 10)), np.zeros(4), k=11), "k must be an integer"),
    (lambda: losses.adaptive_mean_residue_loss(np.zeros((4, 10)), np.zeros(4), residue_form="entropy"), "residue_form must be"),
    (lambda: losses.dldl_v2_loss(np.zeros((4, 10)), np.zeros(4), kl_reduction="batchmean"), "kl_reduction must be"),
])
def test_bad_arguments_raise_at_trace_time(call, match):
  with pytest.raises(ValueError, match=match):
    call()


_Z, _Y = np.zeros((4, 10), np.float32), np.zeros(4)
_ONE_CLASS = np.zeros((4, 1), np.float32)
_ONE_CLASS_MATCH = r"logits must have at least 2 classes \(last axis num_classes >= 2\); got 1 \(shape \(4, 1\)\)"


@pytest.mark.parametrize("call,match", [
    # eps <= 0: the residue's (q + eps) ln(q + eps) is ln 0 (or the log of a negative number) where q = 0.
    (lambda: losses.adaptive_mean_residue_loss(_Z, _Y, eps=0), r"eps must be a number > 0 .*; got 0\."),
    (lambda: losses.adaptive_mean_residue_terms(_Z, _Y, eps=-1e-3), r"eps must be a number > 0 .*; got -0\.001\."),
    (lambda: losses.adaptive_mean_residue_loss(_Z, _Y, eps=0.0, residue_form="paper"), r"eps must be a number > 0"),
    (lambda: losses.mean_residue_loss(_Z, _Y, eps=0.0), r"eps must be a number > 0 .*; got 0\.0\."),
    (lambda: losses.mean_residue_terms(_Z, _Y, eps=-1.0), r"eps must be a number > 0 .*; got -1\.0\."),
    (lambda: losses.mean_residue_loss(_Z, _Y, eps=float("nan")), r"eps must be a number > 0 .*; got nan\."),
    # A negative (or NaN) sigma, as a Python number or a concrete array.
    (lambda: losses.dldl_v2_loss(_Z, _Y, sigma=-2), r"sigma must be >= 0 \(a standard deviation .*\); got -2\."),
    (lambda: losses.dldl_v2_terms(_Z, _Y, sigma=-0.5), r"sigma must be >= 0 .*; got -0\.5\."),
    (lambda: losses.dldl_loss(_Z, _Y, sigma=np.float32(-1)), r"sigma must be >= 0 .*; got -1\.0\."),
    (lambda: losses.dldl_terms(_Z, _Y, sigma=np.array([1.0, 2.0, -3.0, -4.0])),
     r"sigma must be >= 0 .*; got -3\.0 at index 2 \(2 of 4 values\)\."),
    (lambda: losses.dldl_loss(_Z, _Y, sigma=jnp.array([1.0, np.nan, 2.0, 0.0])),
     r"sigma must be >= 0 .*; got nan at index 1 \(1 of 4 values\)\."),
    (lambda: losses.gaussian_label_distribution(_Y, 10, -1.0), r"sigma must be >= 0 .*; got -1\.0\."),
    # A sigma closed over by a jitted function is a constant, so it is still checked while tracing.
    (lambda: jax.jit(lambda z, y: losses.dldl_v2_loss(z, y, sigma=-2.0))(_Z, _Y),
     r"sigma must be >= 0 .*; got -2\.0\."),
    # Fewer than 2 classes: every loss would be a constant with a zero gradient.
    (lambda: losses.cross_entropy_loss(_ONE_CLASS, _Y), _ONE_CLASS_MATCH),
    (lambda: losses.adaptive_mean_residue_loss(_ONE_CLASS, _Y), _ONE_CLASS_MATCH),
    (lambda: losses.adaptive_mean_residue_terms(_ONE_CLASS, _Y), _ONE_CLASS_MATCH),
    (lambda: losses.mean_residue_loss(_ONE_CLASS, _Y, k=1), _ONE_CLASS_MATCH),
    (lambda: losses.mean_variance_loss(_ONE_CLASS, _Y), _ONE_CLASS_MATCH),
    (lambda: losses.dldl_loss(_ONE_CLASS, _Y), _ONE_CLASS_MATCH),
    (lambda: losses.dldl_v2_loss(_ONE_CLASS, _Y), _ONE_CLASS_MATCH),
    (lambda: losses.dldl_v2_terms(_ONE_CLASS, _Y), _ONE_CLASS_MATCH),
    (lambda: losses.expected_age(_ONE_CLASS), _ONE_CLASS_MATCH),
    (lambda: losses.dldl_v2_loss(np.zeros((4, 0), np.float32), _Y), r"at least 2 classes .*; got 0 \(shape \(4, 0\)\)"),
    (lambda: losses.gaussian_label_distribution(_Y, 1, 2.0), r"num_classes must be an integer >= 2; got 1\."),
    (lambda: losses.label_class(_Y, 0), r"num_classes must be an integer >= 2; got 0\."),
])
def test_meaningless_values_are_refused(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_traced_sigma_is_not_refused_under_jit():
  logits, labels = _random_case(12, 4, 20, real_labels=True)
  sigma = np.array([0.0, 0.5, 2.0, 7.0], np.float32)  # zero is a one-hot, not a refusal
  for fn in (losses.dldl_loss, losses.dldl_v2_loss):
    traced = jax.jit(fn)  # keyword arguments of a jitted function are traced, so sigma is a tracer here
    np.testing.assert_allclose(traced(logits, labels, sigma=sigma), fn(logits, labels, sigma=sigma), rtol=1e-6)
    np.testing.assert_allclose(traced(logits, labels, sigma=2.0), fn(logits, labels, sigma=2.0), rtol=1e-6)
  per_sigma = jax.vmap(lambda s: losses.gaussian_label_distribution(labels, 20, s))(sigma)
  np.testing.assert_allclose(per_sigma[2], losses.gaussian_label_distribution(labels, 20, 2.0), rtol=1e-6)


def test_traced_negative_sigma_acts_as_zero_as_documented():
  # Not checkable under jit; this pins down what dldl_loss's docstring promises instead.
  logits, labels = _random_case(13, 3, 20)
  fn = jax.jit(lambda z, y, s: losses.dldl_loss(z, y, sigma=s))
  np.testing.assert_allclose(fn(logits, labels, jnp.array([-2.0, -0.1, -1e9])),
                             losses.cross_entropy_loss(logits, labels), rtol=1e-6)
  sigma_grad = jax.grad(lambda s: fn(logits, labels, s).sum())(jnp.array([-2.0, -0.1, -1e9]))
  np.testing.assert_array_equal(sigma_grad, 0.0)
  assert np.all(np.isnan(fn(logits, labels, jnp.full(3, np.nan))))


def test_shape_errors_raise_under_jit():
  with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
    jax.jit(losses.adaptive_mean_residue_loss)(jnp.zeros((2, 5)), jnp.zeros((5,)))


def test_gaussian_label_distribution_checks_sigma_shape():
  with pytest.raises(ValueError, match=r"sigma must be a scalar or have shape \(3,\)"):
    losses.gaussian_label_distribution(np.zeros(3), 10, np.ones(2))


def test_traced_start_age_works_under_jit():
  logits, labels = _random_case(2, 4, 20, start_age=30)
  fn = jax.jit(lambda z, y, s: losses.adaptive_mean_residue_loss(z, y, start_age=s))
  np.testing.assert_allclose(fn(logits, labels, 30.0), losses.adaptive_mean_residue_loss(logits, labels, start_age=30),
                             rtol=1e-6)


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_float32_stays_float32_when_x64_is_enabled(name):
  logits, labels = _random_case(4, 3, 10)
  with jax.enable_x64(True):
    loss, grad = jax.value_and_grad(lambda z: ALL_LOSSES[name](z, labels).mean())(jnp.asarray(logits))
    assert loss.dtype == jnp.float32 and grad.dtype == jnp.float32


# --------------------------------------------------------------------------
# The label guard and the several-models idiom.

def test_label_range_check_refuses_exactly_the_labels_whose_class_is_clamped():
  # C = 70: class round(label) must be 0..69. 69.5 rounds (half to even) to 70, -0.6 to -1; -0.5 to -0, 69.4 to 69.
  losses.check_label_range(np.array([0, 69, 69.4, -0.5, 34.5]), 70)
  with pytest.raises(losses.LabelRangeError, match=r"2 of 5 labels are outside the 70 classes of ages 0..69 "
                     r"\(start_age, num_classes\), e.g. label 69.5 at flat index 2") as error:
    losses.check_label_range(np.array([0, 69, 69.5, -0.6, 3]), 70)
  assert (error.value.count, error.value.index, error.value.label) == (2, 2, 69.5)
  with pytest.raises(ValueError, match="classes of ages 16..85"):
    losses.check_label_range([[20.0, 15.4]], 70, start_age=16)  # 15.4 - 16 rounds to -1
  grid = np.arange(-3.0, 74.0, 0.25)
  for label in grid:  # refused if and only if label_class clamps it
    clamped = int(losses.label_class(label, 70)) != np.round(label)
    try:
      losses.check_label_range([label], 70)
      refused = False
    except losses.LabelRangeError:
      refused = True
    assert refused == clamped, label


def test_label_range_check_inside_jit_reports_through_checkify():
  from jax.experimental import checkify

  def step(logits, labels):
    losses.check_label_range(labels, 70, start_age=1)
    return losses.cross_entropy_loss(logits, labels, start_age=1).mean()

  checked = jax.jit(checkify.checkify(step))
  logits = jnp.zeros((3, 70))
  error, value = checked(logits, jnp.array([3.0, 80.0, 5.0]))
  with pytest.raises(checkify.JaxRuntimeError, match=r"label 80.0 is outside the 70 classes of ages 1..70"):
    error.throw()
  error, value = checked(logits, jnp.array([3.0, 70.0, 5.0]))
  assert error.get() is None
  np.testing.assert_allclose(value, np.log(70), rtol=1e-6)


def test_several_models_logits_with_one_batch_of_labels_vmap_as_documented():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(3, 5, 70)).astype(np.float32)  # [models, batch, C]
  labels = rng.uniform(16, 80, size=5).astype(np.float32)
  loss = functools.partial(losses.adaptive_mean_residue_loss, start_age=16)
  together = jax.vmap(loss, in_axes=(0, None))(logits, labels)
  assert together.shape == (3, 5)
  for model in range(3):
    # The same float32 sums over 70 classes, maybe in another order: 70 x 6e-8 apart at most.
    np.testing.assert_allclose(together[model], loss(logits[model], labels), rtol=1e-5)
