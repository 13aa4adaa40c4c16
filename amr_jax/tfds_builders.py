"""Load and run the TFDS builders in the repository's ``datasets/`` folder.

The folder shares its top-level name with Hugging Face's ``datasets`` package,
so ``import datasets.fgnet`` could pick up the wrong thing. The builders are
loaded by path instead, each under a package name nothing else can have
(``amr_jax_datasets_<name>``), exactly as ``tfds build datasets/<name>`` does.

  >>> from amr_jax import tfds_builders
  >>> builder = tfds_builders.build("fgnet", manual_dir="../shared/data/fgnet",
  ...                               data_dir="~/tensorflow_datasets")
  >>> train = builder.as_data_source()["train"]   # no TensorFlow needed
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pathlib
import sys
from typing import Any

from amr_jax import errors

DATASETS_DIR = pathlib.Path(__file__).resolve().parents[1] / "datasets"
NAMES = ("fgnet", "clap2016")
# Training reads records by index (``as_data_source``), which TFDS offers for array_record only.
FILE_FORMAT = "array_record"


def builder_class(name: str, datasets_dir: str | os.PathLike | None = None) -> type:
  """The ``Builder`` class of ``datasets/<name>/<name>_dataset_builder.py``."""
  if name not in NAMES:
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(NAMES)}.")
  folder = pathlib.Path(datasets_dir) if datasets_dir is not None else DATASETS_DIR
  module_file = folder / name / f"{name}_dataset_builder.py"
  if not module_file.is_file():
    raise errors.MissingDataError(f"{module_file}: builder not found; pass datasets_dir= the repository's "
                            "datasets/ folder (amr_jax must be installed from a checkout, e.g. pip install -e .).")
  package = f"amr_jax_datasets_{name}"
  module_name = f"{package}.{name}_dataset_builder"
  if module_name not in sys.modules:
    _load(package, folder / name / "__init__.py", package_dir=folder / name)
    _load(module_name, module_file)
  return sys.modules[module_name].Builder


def _load(name: str, path: pathlib.Path, package_dir: pathlib.Path | None = None) -> None:
  spec = importlib.util.spec_from_file_location(
      name, path, submodule_search_locations=[str(package_dir)] if package_dir else None)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # TFDS looks the builder's module (and package) up by name
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise


def default_file_format(builder, file_format) -> None:
  """Makes array_record the format of a new build when none was asked for (call at the end of ``__init__``).

  TFDS writes tfrecord unless told otherwise, so the plain ``tfds build
  datasets/<name> --manual_dir=DIR`` would write files training cannot read.
  A folder that already holds a build keeps the format it was built in
  (:func:`check_file_format` then says what to do if that is not array_record).
  """
  if file_format is None and not builder.info.initialized:
    builder.info.set_file_format(FILE_FORMAT, override=True)


def rebuild_command(name: str, *, manual_dir: str | os.PathLike = "DIR", data_dir: str | os.PathLike = "DIR",
                    config: str | None = None, **builder_kwargs: Any) -> str:
  """The ``tfds build`` command line that builds ``name`` as training reads it.

  Builder options (CLAP2016's ``ignore_list``) go into the command line's JSON form of ``--config``.
  """
  if builder_kwargs:
    options = {"name": config, **{key: os.fspath(value) if isinstance(value, os.PathLike) else value
                                  for key, value in builder_kwargs.items()}}
    config_flag = f" --config='{json.dumps(options)}'"
  else:
    config_flag = f" --config={config}" if config else ""
  return f"tfds build datasets/{name}{config_flag} --manual_dir={manual_dir} --data_dir={data_dir}"


def check_file_format(builder, rebuild: str) -> None:
  """Raises :class:`~amr_jax.errors.DataError` naming the folder, the format found and ``rebuild`` unless the build
  is array_record."""
  found = builder.info.file_format
  found = getattr(found, "value", found)
  if found != FILE_FORMAT:
    raise errors.DataError(
        f"{builder.data_dir} holds a {found} build of {builder.name}; amr_jax reads {FILE_FORMAT}. Delete that "
        f"folder and rebuild it with `{rebuild}` (array_record is the default), or use another data_dir.")


# A build's record of the raw files it was made from, written by the builders into the dataset's folder.
SOURCE_FILE = "amr_jax_source.json"


def source_record(manual_dir: str | os.PathLike | None) -> dict[str, Any]:
  """What a manual directory holds: its path, and its file list with sizes (count, bytes, a SHA-256 of the list).

  File names and sizes, not contents: reading 1002 images to hash them would cost more than the check is worth,
  and a copy that differs from another in a file's bytes but not its size is not a mistake users make.
  """
  if manual_dir is None or not os.path.isdir(manual_dir):
    return {"manual_dir": None}
  folder = pathlib.Path(manual_dir).resolve()
  entries = sorted((path.relative_to(folder).as_posix(), path.stat().st_size)
                   for path in folder.rglob("*") if path.is_file())
  if not entries:  # an empty manual directory is a missing one, to TFDS too
    return {"manual_dir": None}
  listing = "".join(f"{name}\t{size}\n" for name, size in entries)
  return {"manual_dir": str(folder), "files": len(entries), "bytes": sum(size for _, size in entries),
          "file_list_sha256": hashlib.sha256(listing.encode()).hexdigest()}


def record_source(dataset_dir: str | os.PathLike, manual_dir: str | os.PathLike | None) -> None:
  """Writes ``SOURCE_FILE`` into the dataset folder being built; the builders call it from ``_split_generators``."""
  path = pathlib.Path(dataset_dir) / SOURCE_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(source_record(manual_dir), indent=2) + "\n")


def _describe(record: dict[str, Any]) -> str:
  if record.get("manual_dir") is None:
    return "no manual directory (a download)"
  return f"{record['manual_dir']} ({record['files']} files, {record['bytes']} bytes)"


def check_source(builder, manual_dir: str | os.PathLike) -> None:
  """Refuses a build made from other raw files than ``manual_dir`` holds now, or from a ``manual_dir`` that is gone.

  A build with no record (made before records existed) is not checked.

  Raises:
    errors.DataError: naming the build, the source it was made from, and ``manual_dir`` with what it holds.
  """
  path = pathlib.Path(builder.data_dir) / SOURCE_FILE
  if not path.is_file():
    return
  try:
    recorded = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
    raise errors.DataError(f"{path}: the build's record of its source cannot be read ({error}); delete "
                           f"{builder.data_dir} and rebuild it.") from None
  current = source_record(manual_dir)
  if recorded.get("file_list_sha256") == current.get("file_list_sha256"):
    return
  if current.get("manual_dir") is None:
    if recorded.get("manual_dir") is None:
      return  # built from a download, and no raw files given now
    # A mistyped path, or raw files moved since the build: training on the build would hide which.
    raise errors.DataError(
        f"the manual directory {manual_dir} does not exist or is empty; {builder.data_dir} was built from "
        f"{_describe(recorded)}. Give that folder, or train on the existing build as it is by leaving "
        "config.data.manual_dir empty.")
  changed = "has changed since" if recorded.get("manual_dir") == current["manual_dir"] else "is another source"
  raise errors.DataError(
      f"{builder.data_dir} was built from {_describe(recorded)}; the manual directory {_describe(current)} "
      f"{changed}. Rebuild from it into another data_dir (or delete {builder.data_dir}), or train on the existing "
      "build as it is by leaving config.data.manual_dir empty.")


def build(name: str, *, manual_dir: str | os.PathLike, data_dir: str | os.PathLike,
          config: str | None = None, datasets_dir: str | os.PathLike | None = None, check_manual_dir: bool = True,
          **builder_kwargs: Any):
  """Builds dataset ``name`` (array_record) from ``manual_dir`` into ``data_dir``; returns the builder.

  A dataset already built there is used as it is, if it is array_record and, with ``check_manual_dir``, was
  built from the files ``manual_dir`` holds now (:func:`check_source`).

  Args:
    name: ``"fgnet"`` or ``"clap2016"``.
    manual_dir: where the downloaded archive or extracted folder lies.
    data_dir: where TFDS writes ``<name>[/<config>]/<version>/``.
    config: the builder config (e.g. ``"face"`` or ``"whole"`` for CLAP2016).
    builder_kwargs: passed to the builder (e.g. ``ignore_list=`` for CLAP2016).

  Raises:
    errors.DataError: ``data_dir`` holds a build of this dataset in another file format, or from other files;
      ``manual_dir`` or ``data_dir`` is a file.
    errors.StorageError: the build could not be written (a full disk, a read-only ``data_dir``).
  """
  import tensorflow_datasets as tfds

  cls = builder_class(name, datasets_dir)
  data_dir = os.path.expanduser(os.fspath(data_dir))
  manual_dir = os.path.expanduser(os.fspath(manual_dir))
  if os.path.isfile(manual_dir):  # TFDS would fail deep inside with NotADirectoryError
    raise errors.DataError(f"manual_dir {manual_dir} is a file; give the folder it lies in "
                           f"({os.path.dirname(os.path.abspath(manual_dir))}): the manual directory holds the "
                           "dataset's archive or its extracted folder.")
  if os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise errors.DataError(f"data_dir {data_dir} is a file; give a folder for the built dataset.")
  builder = cls(data_dir=data_dir, config=config, **builder_kwargs)
  check_file_format(builder, rebuild_command(name, manual_dir=manual_dir, data_dir=data_dir, config=config,
                                             **builder_kwargs))
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except (OSError, RuntimeError) as error:  # TFDS's array_record writer reports a full disk as a RuntimeError
    reason = errors.storage_reason(error)
    if reason is None:
      raise
    raise errors.StorageError(
        f"data_dir {data_dir}: the {name} dataset could not be written there ({reason}); TFDS keeps no incomplete "
        "build. Free space there, or build into another folder (config.data.data_dir), then run again.") from error
  if check_manual_dir:
    check_source(builder, manual_dir)
  return builder
