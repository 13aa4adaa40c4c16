"""MTCNN's three networks (Zhang et al., 2016) as Flax modules, with the ``mtcnn`` package's trained weights.

P-Net proposes faces on every level of an image pyramid, R-Net re-scores 24 px
crops of its proposals and O-Net 48 px crops, adding five landmarks. The layers
are those of the ``mtcnn==1.0.0`` package's Keras models (``mtcnn/network/``):
convolutions with per-channel PReLU, and R-Net and O-Net flatten their last
feature map column by column (Keras ``Permute((2, 1, 3))``), as the original
Caffe models did. Inputs are RGB scaled to ``(pixel - 127.5) / 128``.

:func:`load_params` reads the weights from the installed package's files
(``mtcnn/assets/weights/{pnet,rnet,onet}.lz4``, joblib pickles of the Keras
layers' weight lists) without importing the package, whose import loads
TensorFlow: only ``joblib`` and ``lz4`` are needed.

Reference: K. Zhang, Z. Zhang, Z. Li, Y. Qiao, "Joint Face Detection and
Alignment Using Multitask Cascaded Convolutional Networks", IEEE SPL 2016.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from amr_jax import errors

NETWORKS = ("pnet", "rnet", "onet")
PACKAGE = "mtcnn==1.0.0"


class PReLU(nn.Module):
  """``max(x, 0) + alpha * min(x, 0)`` with one ``alpha`` per feature (Keras ``PReLU``)."""

  @nn.compact
  def __call__(self, x):
    alpha = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],))
    return jnp.maximum(x, 0) + alpha * jnp.minimum(x, 0)


def _conv(features: int, kernel: int, name: str) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), padding="VALID", name=name)


def _flatten_columns_first(x):
  # Keras Permute((2, 1, 3)) then Flatten: the order of the Caffe weights the package converted.
  return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


class PNet(nn.Module):
  """The proposal network: fully convolutional, one output per 12 px window, stride 2.

  Called on ``[batch, H, W, 3]``; returns ``(offsets [batch, h, w, 4],
  face_probability [batch, h, w])`` with ``h = ceil((H - 2) / 2) - 4``.
  ``valid_size`` (``[2]`` int: the true height and width when the input is
  zero-padded on the bottom and right) makes the first max-pool ignore the
  padding, so every output inside the true image equals the unpadded call's.
  """

  @nn.compact
  def __call__(self, x, valid_size=None):
    x = PReLU(name="prelu1")(_conv(10, 3, "conv1")(x))
    if valid_size is not None:
      rows = jnp.arange(x.shape[1]) < valid_size[0] - 2
      columns = jnp.arange(x.shape[2]) < valid_size[1] - 2
      x = jnp.where(rows[:, None, None] & columns[None, :, None], x, -jnp.inf)
    x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
    if valid_size is not None:
      x = jnp.where(jnp.isfinite(x), x, 0.0)  # windows wholly in the padding; their outputs are discarded
    x = PReLU(name="prelu2")(_conv(16, 3, "conv2")(x))
    x = PReLU(name="prelu3")(_conv(32, 3, "conv3")(x))
    offsets = _conv(4, 1, "conv4_1")(x)
    probability = jax.nn.softmax(_conv(2, 1, "conv4_2")(x), axis=-1)[..., 1]
    return offsets, probability


class RNet(nn.Module):
  """The refinement network on ``[n, 24, 24, 3]`` crops: ``(offsets [n, 4], face_probability [n])``."""

  @nn.compact
  def __call__(self, x):
    x = PReLU(name="prelu1")(_conv(28, 3, "conv1")(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
    x = PReLU(name="prelu2")(_conv(48, 3, "conv2")(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
    x = PReLU(name="prelu3")(_conv(64, 2, "conv3")(x))
    x = PReLU(name="prelu4")(nn.Dense(128, name="fc4")(_flatten_columns_first(x)))
    offsets = nn.Dense(4, name="fc5_1")(x)
    probability = jax.nn.softmax(nn.Dense(2, name="fc5_2")(x), axis=-1)[..., 1]
    return offsets, probability


class ONet(nn.Module):
  """The output network on ``[n, 48, 48, 3]`` crops: ``(offsets [n, 4], landmarks [n, 10], face_probability [n])``.

  ``landmarks`` are fractions of the crop: the five x's, then the five y's.
  """

  @nn.compact
  def __call__(self, x):
    x = PReLU(name="prelu1")(_conv(32, 3, "conv1")(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
    x = PReLU(name="prelu2")(_conv(64, 3, "conv2")(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
    x = PReLU(name="prelu3")(_conv(64, 3, "conv3")(x))
    x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
    x = PReLU(name="prelu4")(_conv(128, 2, "conv4")(x))
    x = PReLU(name="prelu5")(nn.Dense(256, name="fc5")(_flatten_columns_first(x)))
    offsets = nn.Dense(4, name="fc6_1")(x)
    landmarks = nn.Dense(10, name="fc6_2")(x)
    probability = jax.nn.softmax(nn.Dense(2, name="fc6_3")(x), axis=-1)[..., 1]
    return offsets, landmarks, probability


MODULES = {"pnet": PNet, "rnet": RNet, "onet": ONet}
# Each network's layers in the order of its Keras model's weight list (kernel and bias, or a PReLU's alpha).
_LAYERS = {
    "pnet": ("conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4_1", "conv4_2"),
    "rnet": ("conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "fc4", "prelu4", "fc5_1", "fc5_2"),
    "onet": ("conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4", "prelu4", "fc5", "prelu5", "fc6_1",
             "fc6_2", "fc6_3"),
}
_INPUT_SIZES = {"pnet": 12, "rnet": 24, "onet": 48}


def weights_dir() -> str:
  """The installed ``mtcnn`` package's weights folder, found without importing the package.

  Raises:
    errors.MissingDataError: (a ``FileNotFoundError``) the package is not installed; the message says which to
      install.
  """
  spec = importlib.util.find_spec("mtcnn")
  if spec is None or not spec.submodule_search_locations:
    raise errors.MissingDataError(f"face detection reads MTCNN's weights from the {PACKAGE} package, which is not "
                            f"installed: pip install {PACKAGE}")
  return os.path.join(list(spec.submodule_search_locations)[0], "assets", "weights")


def keras_weights_to_params(name: str, weights: list[np.ndarray]) -> dict[str, Any]:
  """One network's Flax ``params`` from its Keras weight list (Keras and Flax share HWIO and in-out layouts).

  Raises:
    ValueError: a list that does not fit the network (wrong count or shapes), naming the layer.
  """
  reference = jax.eval_shape(MODULES[name]().init, jax.random.key(0),
                             jnp.zeros((1, _INPUT_SIZES[name], _INPUT_SIZES[name], 3)))["params"]
  expected = [(layer, leaf, reference[layer][leaf].shape) for layer in _LAYERS[name]
              for leaf in (("alpha",) if layer.startswith("prelu") else ("kernel", "bias"))]
  if len(weights) != len(expected):
    raise ValueError(f"{name}: {len(weights)} weight arrays; the network has {len(expected)}.")
  params: dict[str, dict[str, np.ndarray]] = {}
  for array, (layer, leaf, shape) in zip(weights, expected):
    array = np.asarray(array, np.float32)
    if leaf == "alpha":
      array = array.reshape(-1)  # Keras keeps (1, 1, C) for channels shared over height and width
    if array.shape != tuple(shape):
      raise ValueError(f"{name}: layer {layer} {leaf} has shape {array.shape}; the network expects {tuple(shape)}.")
    params.setdefault(layer, {})[leaf] = array
  return params


@functools.lru_cache(maxsize=None)
def load_params(directory: str | None = None) -> dict[str, dict[str, Any]]:
  """``{"pnet": params, "rnet": params, "onet": params}`` from ``directory`` (default: :func:`weights_dir`).

  Raises:
    FileNotFoundError: a weights file is missing (named).
  """
  import joblib  # pylint: disable=import-outside-toplevel  # only face detection needs it

  directory = directory or weights_dir()
  params = {}
  for name in NETWORKS:
    path = os.path.join(directory, f"{name}.lz4")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: MTCNN {name} weights missing (reinstall {PACKAGE}).")
    params[name] = jax.tree.map(jnp.asarray, keras_weights_to_params(name, joblib.load(path)))
  return params
