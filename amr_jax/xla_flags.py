"""XLA:CPU's YNNPACK fusions turned off: with jaxlib 0.11 and 0.12 they make bfloat16 convolution networks NaN.

jaxlib 0.11 added YNNPACK fusions to XLA:CPU: a convolution, the element-wise work after it (a cast, BatchNorm,
ReLU), further convolutions and a closing reduction are compiled into one ``__ynn_fusion``. When a fused bfloat16
convolution reads an input computed inside the same fusion with padding around it, the result is NaN, and the
share of NaN changes from run to run, as if the fusion read memory it never wrote: ThinAgeNet's and ResNet-18's
logits are all NaN in eval mode (measured with jaxlib 0.12.0.1; float32, and the same graph without ``jit``,
compute correctly). The smallest case is ``sum(relu(conv(relu(conv(x)))))`` in bfloat16 with 32 channels, in
``tests/test_xla_flags.py``.

The fix is XLA's own switch, ``--xla_cpu_experimental_ynn_fusion_type=`` (an empty list of fusion types): XLA:CPU
then compiles these graphs without YNNPACK's fusions, as jaxlib 0.10 did, and the bfloat16 results are finite and
within bfloat16's rounding of float32's. Importing ``amr_jax`` adds it to ``XLA_FLAGS`` before JAX starts its CPU
backend; the flag is a CPU option that GPU and TPU backends ignore. ``benchmarks/cpu_fusion.py`` measures what it costs: see the README's speed section.

Left alone: an ``XLA_FLAGS`` that already sets the flag (a user's own choice wins), and a jaxlib older than 0.11,
which has no such flag (XLA stops at an unknown flag). When JAX's backend started before ``amr_jax`` was imported,
the flag can no longer take effect: a warning says so and how to fix it.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
import warnings

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
FIRST_JAXLIB_WITH_YNN_FUSION = (0, 11)


def jaxlib_version() -> tuple[int, ...] | None:
  """The installed jaxlib's version as numbers (``0.12.0.1`` -> ``(0, 12, 0, 1)``), or None without jaxlib."""
  try:
    text = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return None
  return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:4])


def with_ynn_fusion_off(xla_flags: str, version: tuple[int, ...] | None) -> str:
  """``xla_flags`` with the YNNPACK fusions turned off, where jaxlib ``version`` has them and the flags leave them
  unset; otherwise ``xla_flags`` unchanged."""
  if version is None or version[:2] < FIRST_JAXLIB_WITH_YNN_FUSION or YNN_FUSION_FLAG in xla_flags:
    return xla_flags
  return f"{xla_flags} {YNN_FUSION_FLAG}=".strip()


def _cpu_backend_started() -> bool:
  """Whether JAX already started its backends, with the CPU as the default one (too late for the flag to count)."""
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge
    started = bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # a JAX without this private helper: assume not started
    return False
  return started and sys.modules["jax"].default_backend() == "cpu"


def turn_off_cpu_ynn_fusion() -> bool:
  """Adds the flag to ``os.environ["XLA_FLAGS"]`` where it is needed (see the module's docstring).

  Returns whether the flag was added. Warns when it was needed but JAX had already started its backend on a CPU, so
  that it cannot take effect in this process (on a GPU or TPU the fusions do not run).
  """
  before = os.environ.get("XLA_FLAGS", "")
  after = with_ynn_fusion_off(before, jaxlib_version())
  if after == before:
    return False
  if _cpu_backend_started():
    warnings.warn(
        "JAX started its backend before amr_jax was imported, so XLA:CPU keeps its YNNPACK fusions, which give NaN "
        "for bfloat16 convolution networks on the CPU with jaxlib 0.11-0.12. Import amr_jax before running any JAX "
        f"computation, or set XLA_FLAGS={YNN_FUSION_FLAG}= in the environment.", RuntimeWarning, stacklevel=3)
    return False
  os.environ["XLA_FLAGS"] = after
  return True
