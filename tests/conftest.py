"""Test set-up: four host CPU devices (for pmap tests, also on an accelerator machine), one compilation cache per run, a hypothesis profile."""

import atexit
import os
import pathlib
import shutil
import tempfile

# Must happen before JAX initialises its backend.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

# Under pytest-xdist each worker runs XLA on one thread: two workers on two cores, each also spreading its
# convolutions over both, ran the suite about 10% slower (8 min 5 s against 7 min 24 s, one run each).
if os.environ.get("PYTEST_XDIST_WORKER") and "xla_cpu_multi_thread_eigen" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_cpu_multi_thread_eigen=false"

# One XLA compilation cache for the whole run, its subprocesses included: tests that build the same program
# (the same step in another test, the same run as a subprocess) compile it once. Removed at the end of the run.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="amr_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

# PyPI's PyTorch for Python 3.12 is the CUDA build, which brings Triton; PyTorch imports it on first use of
# torch.compile's machinery (torch.optim does). Triton loaded after TensorFlow (tests/test_faces.py compares with
# the mtcnn package's TensorFlow pipeline) kills the process with a segmentation fault (Triton 3.7.1, TensorFlow
# 2.21); loaded first, both work.
try:
  import triton  # noqa: E402, F401
except ImportError:
  pass

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
def cpu_devices():
  """The four host CPU devices asked for above, also where JAX's default backend is a GPU or TPU with one device:
  tests of an N-devices-equal-one identity run on them explicitly."""
  import jax

  devices = jax.devices("cpu")
  assert len(devices) == 4, f"XLA_FLAGS={os.environ.get('XLA_FLAGS')!r} should give four CPU devices"
  return devices


@pytest.fixture(scope="session")
def fgnet_dirs(tmp_path_factory):
  """``(manual_dir, data_dir)`` of a 16-image, 4-subject synthetic FG-NET (tests/training_setup.py), built once."""
  import training_setup
  from amr_jax.data import tfds_builders

  manual = training_setup.make_synthetic_fgnet(tmp_path_factory.mktemp("fgnet_manual"))
  data_dir = tmp_path_factory.mktemp("tfds")
  tfds_builders.build("fgnet", manual_dir=manual, data_dir=data_dir)
  return manual, data_dir

