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


@pytest.fixture(scope="session")
def fgnet_dirs(tmp_path_factory):
  """``(manual_dir, data_dir)`` of a 16-image, 4-subject synthetic FG-NET (tests/training_setup.py), built once."""
  import training_setup
  from amr_jax import tfds_builders

  manual = training_setup.make_synthetic_fgnet(tmp_path_factory.mktemp("fgnet_manual"))
  data_dir = tmp_path_factory.mktemp("tfds")
  tfds_builders.build("fgnet", manual_dir=manual, data_dir=data_dir)
  return manual, data_dir
