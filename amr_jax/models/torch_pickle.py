"""Read PyTorch ``.pth`` state_dicts into NumPy arrays without PyTorch.

Both formats ``torch.save`` writes are supported:

* the zip format (PyTorch >= 1.6, what torchvision distributes): a zip holding
  ``<root>/data.pkl`` (the pickled dict, with tensors as persistent references
  to storages) and one raw little-endian file per storage, ``<root>/data/<key>``;
* the legacy format (``_use_new_zipfile_serialization=False``, e.g. the
  EfficientNet-Lite0 file on PyPI): four pickles in a row (magic number,
  protocol version, system info, the dict) followed by the list of storage
  keys and each storage's raw bytes, prefixed by its element count.

Only what a state_dict needs is unpickled: tensors, ``OrderedDict`` and plain
containers. Any other class in the file is refused, so reading an untrusted
file cannot run code.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": None,  # decoded by hand below: NumPy has no bfloat16
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class TorchFileError(ValueError):
  """A .pth file that cannot be read as a state_dict; the message names the file."""


class _StorageType:
  def __init__(self, name: str):
    self.name = name


def _decode(raw: bytes, storage_name: str) -> np.ndarray:
  if storage_name == "BFloat16Storage":
    bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32)
  return np.frombuffer(raw, _STORAGE_DTYPES[storage_name])


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  array, _ = storage
  size, stride = tuple(size), tuple(stride)
  if not size:
    return np.array(array[storage_offset])
  itemsize = array.itemsize
  view = np.lib.stride_tricks.as_strided(array[storage_offset:], shape=size,
                                         strides=tuple(s * itemsize for s in stride))
  return np.array(view)  # a contiguous copy, independent of the storage


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
  return data


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, load_storage, path):
    super().__init__(file)
    self._load_storage = load_storage
    self._path = path

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise TorchFileError(
        f"{self._path}: refusing to unpickle {module}.{name}; only state_dicts of tensors can be read."
    )

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise TorchFileError(f"{self._path}: unexpected persistent id {pid!r}.")
    return self._load_storage(pid)


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise TorchFileError(f"{path}: a zip-format .pth must hold exactly one */data.pkl; found {pickles}.")
    root = pickles[0][: -len("data.pkl")]
    cache = {}

    def load_storage(pid):
      _, storage_type, key, _location, _numel = pid[:5]
      if key not in cache:
        cache[key] = (_decode(archive.read(f"{root}data/{key}"), storage_type.name), storage_type.name)
      return cache[key]

    return _Unpickler(io.BytesIO(archive.read(pickles[0])), load_storage, path).load()


def _load_legacy(path: str, file: BinaryIO) -> Any:
  if pickle.load(file) != _LEGACY_MAGIC:
    raise TorchFileError(f"{path}: not a PyTorch file (wrong magic number).")
  pickle.load(file)  # protocol version
  pickle.load(file)  # system info
  pending = {}  # key -> storage type name; filled in after the main pickle
  views = []

  def load_storage(pid):
    _, storage_type, key, _location, _numel, view_metadata = pid
    pending[key] = storage_type.name
    placeholder = [None, storage_type.name]
    views.append((key, placeholder))
    if view_metadata is not None:
      raise TorchFileError(f"{path}: storage views are not supported.")
    return placeholder

  # Tensors can only be built once their storages are read, which come after
  # the pickle: unpickle with placeholders and rebuild afterwards.
  rebuilt = []

  def deferred_rebuild(storage, offset, size, stride, *unused):
    item = [storage, offset, size, stride]
    rebuilt.append(item)
    return item

  unpickler = _Unpickler(file, load_storage, path)
  original_find_class = unpickler.find_class

  def find_class(module, name):
    if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
      return deferred_rebuild
    return original_find_class(module, name)

  unpickler.find_class = find_class
  result = unpickler.load()
  keys = pickle.load(file)
  storages = {}
  for key in keys:
    (numel,) = struct.unpack("<q", file.read(8))
    dtype_name = pending[key]
    itemsize = 2 if dtype_name == "BFloat16Storage" else np.dtype(_STORAGE_DTYPES[dtype_name]).itemsize
    raw = file.read(numel * itemsize)
    if len(raw) != numel * itemsize:
      raise TorchFileError(f"{path}: file ends inside storage {key}; it is truncated.")
    storages[key] = _decode(raw, dtype_name)
  for key, placeholder in views:
    placeholder[0] = storages[key]
  arrays = {id(item): _rebuild_tensor(tuple(item[0]), *item[1:]) for item in rebuilt}
  return _replace_items(result, arrays)


def _replace_items(obj, arrays):
  if isinstance(obj, list) and id(obj) in arrays:
    return arrays[id(obj)]
  if isinstance(obj, dict):
    return type(obj)((k, _replace_items(v, arrays)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_replace_items(v, arrays) for v in obj)
  return obj


def unwrap_checkpoint(obj: Any) -> Any:
  """The state_dict inside a training checkpoint saved as ``{"state_dict": ...}`` or ``{"model": ...}``."""
  for wrapper in ("state_dict", "model"):
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
  return obj


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a ``torch.save``-d state_dict (zip or legacy format) into NumPy arrays.

  Also accepts a checkpoint that wraps the state_dict as ``{"state_dict": ...}``
  or ``{"model": ...}``. bfloat16 tensors are returned as float32.

  Raises:
    FileNotFoundError: the file does not exist.
    TorchFileError: the file is not a PyTorch state_dict (the message says why).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such PyTorch weights file.")
  try:
    if zipfile.is_zipfile(path):
      result = _load_zip(path)
    else:
      with open(path, "rb") as file:
        result = _load_legacy(path, file)
  except TorchFileError:
    raise
  except (pickle.UnpicklingError, EOFError, KeyError, zipfile.BadZipFile, struct.error, ValueError) as error:
    raise TorchFileError(f"{path}: not a readable PyTorch state_dict ({type(error).__name__}: {error}).") from error
  result = unwrap_checkpoint(result)
  if not isinstance(result, dict) or not all(isinstance(v, np.ndarray) for v in result.values()):
    raise TorchFileError(f"{path}: holds a {type(result).__name__}, not a state_dict of tensors.")
  return dict(result)
