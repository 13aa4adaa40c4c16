"""XLA:CPU's YNNPACK fusions are off once amr_jax is imported, so bfloat16 convolution networks stay finite there."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amr_jax import models, xla_flags

FLAG = xla_flags.YNN_FUSION_FLAG
HAS_YNN = (xla_flags.jaxlib_version() or (0,))[:2] >= xla_flags.FIRST_JAXLIB_WITH_YNN_FUSION


@pytest.mark.parametrize("before, version, after", [
    ("", (0, 12, 0, 1), f"{FLAG}="),
    ("--xla_force_host_platform_device_count=4", (0, 11, 2), f"--xla_force_host_platform_device_count=4 {FLAG}="),
    (f"{FLAG}=individual_dot", (0, 12, 0, 1), f"{FLAG}=individual_dot"),  # the user's own choice wins
    ("--xla_cpu_multi_thread_eigen=false", (0, 10, 2), "--xla_cpu_multi_thread_eigen=false"),  # no such flag there
    ("", None, ""),  # no jaxlib
])
def test_the_flag_is_added_only_where_jaxlib_has_it_and_the_user_did_not_set_it(before, version, after):
  assert xla_flags.with_ynn_fusion_off(before, version) == after


def test_jaxlib_version_reads_the_installed_release():
  import jaxlib

  assert ".".join(map(str, xla_flags.jaxlib_version())) == jaxlib.__version__.split("+")[0]


@pytest.mark.skipif(not HAS_YNN, reason="this jaxlib has no YNNPACK fusions to turn off")
def test_importing_amr_jax_turned_the_fusions_off_in_this_process():
  assert f"{FLAG}=" in os.environ["XLA_FLAGS"].split()


def _two_convolutions(x, k1, k2):
  """The smallest graph the fusions got wrong: relu(conv(relu(conv(x)))) summed, each conv padded by 1."""
  def conv(y, k):
    return jax.lax.conv_general_dilated(y, k.astype(y.dtype), (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = jax.nn.relu(conv(x, k1))
  return jax.nn.relu(conv(y, k2)).astype(jnp.float32).sum(axis=(1, 2))


def test_two_bfloat16_convolutions_compile_without_the_fusion_and_match_float32():
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.uniform(keys[0], (2, 16, 16, 3))
  k1 = jax.random.normal(keys[1], (3, 3, 3, 32)) * 0.1
  k2 = jax.random.normal(keys[2], (3, 3, 32, 32)) * 0.1
  compiled = jax.jit(_two_convolutions).lower(x.astype(jnp.bfloat16), k1, k2).compile()
  assert "__ynn_fusion" not in compiled.as_text()
  half = np.asarray(compiled(x.astype(jnp.bfloat16), k1, k2))
  full = np.asarray(jax.jit(_two_convolutions)(x, k1, k2))
  assert np.isfinite(half).all()
  # bfloat16 keeps 8 significant bits: each of the ~300 products of a sum is off by up to 2^-8 of its size, the
  # errors of independent roundings mostly cancel; 5% of the largest output bounds them with room.
  np.testing.assert_allclose(half, full, atol=0.05 * np.abs(full).max())


def test_thin_age_net_in_bfloat16_is_finite_in_eval_mode_under_jit():
  """The model the first H200 session found NaN on the CPU (all logits, eval mode, jitted)."""
  module32 = models.create_model("thin_age_net", 10)
  module16 = models.create_model("thin_age_net", 10, dtype=jnp.bfloat16)
  variables = jax.jit(functools.partial(module32.init, train=False))(jax.random.key(0), jnp.ones((1, 64, 64, 3)))
  images = jax.random.uniform(jax.random.key(2), (2, 64, 64, 3))
  logits = jax.jit(functools.partial(module16.apply, train=False))(variables, images)
  assert np.isfinite(np.asarray(logits, np.float32)).all()


@pytest.mark.skipif(not HAS_YNN or jax.default_backend() != "cpu",
                    reason="warned only where the CPU is JAX's default backend and jaxlib has the fusions")
def test_a_backend_started_before_the_import_is_warned_about():
  script = ("import warnings; warnings.simplefilter('error')\n"
            "import jax; jax.numpy.ones(1).block_until_ready()\n"
            "import amr_jax\n")
  env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode != 0
  assert "RuntimeWarning: JAX started its backend before amr_jax was imported" in result.stderr
  # Imported first, it sets the flag and says nothing.
  script = ("import warnings; warnings.simplefilter('error')\n"
            "import amr_jax, os\n"
            "import jax; jax.numpy.ones(1).block_until_ready()\n"
            f"assert '{FLAG}=' in os.environ['XLA_FLAGS'].split()\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode == 0, result.stderr
