"""Build the TFDS datasets: the builders' classes, their file format, and the record of a build's raw files.

The builders are :class:`amr_jax.data.fgnet_builder.Builder`,
:class:`amr_jax.data.clap2016_builder.Builder` and
:class:`amr_jax.data.scut_fbp5500_builder.Builder`, imported like any module, so an
installed amr_jax (``pip install .``, not only a checkout) builds the data. Their
TFDS metadata (``README.md``, the description; ``CITATIONS.bib``) is package
data in ``dataset_cards/<name>/`` (:func:`amr_jax.data.builder_common.card_dir`). In a checkout,
``tfds build datasets/<name>`` builds the same datasets: each
``datasets/<name>/<name>_dataset_builder.py`` subclasses the package's builder.

  >>> from amr_jax.data import tfds_builders
  >>> builder = tfds_builders.build("fgnet", manual_dir="../shared/data/fgnet",
  ...                               data_dir="~/tensorflow_datasets")
  >>> train = builder.as_data_source()["train"]   # no TensorFlow needed
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from amr_jax import errors
from amr_jax.data import builder_common

NAMES = ("fgnet", "clap2016", "scut_fbp5500")
FILE_FORMAT = builder_common.FILE_FORMAT
SOURCE_FILE = builder_common.SOURCE_FILE


def builder_class(name: str) -> type:
  """The TFDS builder class of dataset ``name``: ``amr_jax.<name>_builder.Builder``."""
  if name == "fgnet":
    from amr_jax.data import fgnet_builder as module
  elif name == "clap2016":
    from amr_jax.data import clap2016_builder as module
  elif name == "scut_fbp5500":
    from amr_jax.data import scut_fbp5500_builder as module
  else:
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(NAMES)}.")
  return module.Builder


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
  current = builder_common.source_record(manual_dir)
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
          config: str | None = None, check_manual_dir: bool = True, **builder_kwargs: Any):
  """Builds dataset ``name`` (array_record) from ``manual_dir`` into ``data_dir``; returns the builder.

  A dataset already built there is used as it is, if it is array_record and, with ``check_manual_dir``, was
  built from the files ``manual_dir`` holds now (:func:`check_source`).

  Args:
    name: ``"fgnet"``, ``"clap2016"`` or ``"scut_fbp5500"``.
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

  cls = builder_class(name)
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
