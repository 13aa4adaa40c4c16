"""Optimizers against torch.optim step by step; schedules at their boundaries."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from amr_jax.training import optim

import torch  # test-only (requirements-test.txt)


def _loss_and_target(seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  target = {"w": rng.normal(size=(3, 4)).astype(dtype), "b": rng.normal(size=(4,)).astype(dtype)}
  start = {"w": rng.normal(size=(3, 4)).astype(dtype), "b": rng.normal(size=(4,)).astype(dtype)}
  return start, target


def _torch_run(name, start, target, steps, lr_at, **kwargs):
  params = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in start.items()}
  clip = kwargs.pop("gradient_clip_norm", None)
  if name == "adamw":
    optimizer = torch.optim.AdamW(params.values(), lr=lr_at(0), weight_decay=kwargs["weight_decay"])
  elif name == "adam":
    optimizer = torch.optim.Adam(params.values(), lr=lr_at(0), weight_decay=kwargs["weight_decay"])
  else:
    optimizer = torch.optim.SGD(params.values(), lr=lr_at(0), momentum=kwargs["momentum"],
                                weight_decay=kwargs["weight_decay"])
  for step in range(steps):
    for group in optimizer.param_groups:
      group["lr"] = lr_at(step)
    optimizer.zero_grad()
    loss = sum(((params[k] - torch.tensor(target[k])) ** 4).sum() * 3.0 for k in params)
    loss.backward()
    if clip:
      torch.nn.utils.clip_grad_norm_(list(params.values()), clip)
    optimizer.step()
  return {k: v.detach().numpy() for k, v in params.items()}


def _jax_run(name, start, target, steps, schedule, **kwargs):
  transform = optim.create_optimizer(name, schedule, **kwargs)
  params = jax.tree.map(jnp.asarray, start)
  state = transform.init(params)
  loss = lambda p: sum(jnp.sum((p[k] - target[k]) ** 4) * 3.0 for k in p)

  @jax.jit
  def step(params, state):
    updates, state = transform.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return params


@pytest.mark.parametrize("name,kwargs", [
    ("adamw", dict(weight_decay=0.01)),
    ("adamw", dict(weight_decay=0.01, gradient_clip_norm=5.0)),
    ("adam", dict(weight_decay=1e-3)),
    ("sgd", dict(weight_decay=1e-4, momentum=0.9, gradient_clip_norm=5.0)),
    ("sgd", dict(weight_decay=0.0, momentum=0.0)),
])
def test_matches_torch_optim_over_steps_with_a_schedule(name, kwargs):
  # Both sides in float64: 12 steps of a handful of operations each round at 1e-16, so 1e-10 leaves rounding
  # no say, while a wrong formula (bias correction, decoupled decay, clipping order) is off by percents.
  start, target = _loss_and_target(dtype=np.float64)
  schedule = optim.learning_rate_schedule("multistep", base_learning_rate=1e-2, steps_per_epoch=3, num_epochs=4,
                                          milestone_epochs=(2, 3))
  with jax.enable_x64(True):
    ours = _jax_run(name, start, target, 12, schedule, **kwargs)
    theirs = _torch_run(name, start, target, 12, lambda s: float(schedule(s)), **dict(kwargs))
  assert ours["w"].dtype == np.float64 and theirs["w"].dtype == np.float64
  moved = max(np.abs(theirs[k] - start[k]).max() for k in start)
  assert moved > 1e-3  # the comparison is not between two unchanged starts
  for k in start:
    np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-10, atol=1e-12)


def test_clipping_is_active_in_that_comparison():
  start, target = _loss_and_target()
  unclipped = _jax_run("sgd", start, target, 3, 1e-2, momentum=0.9)
  clipped = _jax_run("sgd", start, target, 3, 1e-2, momentum=0.9, gradient_clip_norm=5.0)
  assert not np.allclose(unclipped["w"], clipped["w"])


def test_multistep_drops_at_the_first_step_of_each_milestone_epoch():
  schedule = optim.learning_rate_schedule("multistep", base_learning_rate=1e-3, steps_per_epoch=10,
                                          num_epochs=100, milestone_epochs=(15, 30, 45, 60, 75, 90))
  assert float(schedule(149)) == pytest.approx(1e-3)
  assert float(schedule(150)) == pytest.approx(1e-4)  # epoch 15 (0-based) already at the lower rate
  assert float(schedule(299)) == pytest.approx(1e-4) and float(schedule(300)) == pytest.approx(1e-5)
  assert float(schedule(999)) == pytest.approx(1e-9)


def test_cosine_warms_up_linearly_then_decays_to_zero():
  schedule = optim.learning_rate_schedule("cosine", base_learning_rate=0.1, steps_per_epoch=10, num_epochs=10,
                                          warmup_epochs=1)
  assert float(schedule(0)) == 0.0 and float(schedule(5)) == pytest.approx(0.05)
  assert float(schedule(10)) == pytest.approx(0.1)
  assert float(schedule(55)) == pytest.approx(0.05, rel=1e-5)  # half-way through the decay
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)


def test_bad_names_and_values_are_explained():
  with pytest.raises(ValueError, match="unknown schedule 'step'.*multistep"):
    optim.learning_rate_schedule("step", base_learning_rate=0.1, steps_per_epoch=1, num_epochs=1)
  with pytest.raises(ValueError, match="milestone_epochs must be increasing"):
    optim.learning_rate_schedule("multistep", base_learning_rate=0.1, steps_per_epoch=1, num_epochs=9,
                                 milestone_epochs=(5, 3))
  with pytest.raises(ValueError, match="warmup_epochs=20"):
    optim.learning_rate_schedule("cosine", base_learning_rate=0.1, steps_per_epoch=1, num_epochs=10,
                                 warmup_epochs=20)
  with pytest.raises(ValueError, match="unknown optimizer 'lamb'.*adamw"):
    optim.create_optimizer("lamb", 0.1)
