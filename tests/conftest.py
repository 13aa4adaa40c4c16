"""Test set-up: four host CPU devices (for pmap tests) and a hypothesis profile."""

import os
import pathlib

# Must happen before JAX initialises its backend.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

import hypothesis  # noqa: E402
import pytest  # noqa: E402

# Compilation makes timings meaningless, and CI must not depend on a saved example database.
hypothesis.settings.register_profile("amr_jax", deadline=None, database=None, max_examples=40,
                                     derandomize=True, print_blob=True)
hypothesis.settings.load_profile("amr_jax")

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir():
  """The project's ../shared folder; tests that need it skip only when it is absent."""
  if not SHARED.is_dir():
    pytest.skip(f"{SHARED} is absent")
  return SHARED
