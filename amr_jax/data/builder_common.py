"""What the TFDS builders share: the folder of their cards, the file format of a new build, and the record of the
raw files a build was made from.

The builders (:mod:`amr_jax.data.fgnet_builder`, :mod:`amr_jax.data.clap2016_builder`,
:mod:`amr_jax.data.scut_fbp5500_builder`) import this module, and :mod:`amr_jax.data.tfds_builders`, which builds with
them, imports them all: so no builder imports the module that imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any

# Training reads records by index (``as_data_source``), which TFDS offers for array_record only.
FILE_FORMAT = "array_record"
# A build's record of the raw files it was made from, written by the builders into the dataset's folder.
SOURCE_FILE = "amr_jax_source.json"


def card_dir(name: str):
  """The folder (a ``tfds.core.Path``) of dataset ``name``'s README.md and CITATIONS.bib: its builder's
  ``pkg_dir_path``.

  TFDS reads a builder's README.md (the description) and CITATIONS.bib from the folder of its module's package
  unless ``pkg_dir_path`` names another; that folder would be amr_jax/ itself. The ``datasets/`` subclass that
  ``tfds build`` runs inherits this folder, so both give a build the same description and citation.
  """
  import tensorflow_datasets as tfds

  return tfds.core.Path(__file__).resolve().parent / "dataset_cards" / name


def default_file_format(builder, file_format) -> None:
  """Makes array_record the format of a new build when none was asked for (call at the end of ``__init__``).

  TFDS writes tfrecord unless told otherwise, so the plain ``tfds build
  datasets/<name> --manual_dir=DIR`` would write files training cannot read.
  A folder that already holds a build keeps the format it was built in
  (:func:`~amr_jax.data.tfds_builders.check_file_format` then says what to do if that is not array_record).
  """
  if file_format is None and not builder.info.initialized:
    builder.info.set_file_format(FILE_FORMAT, override=True)


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
