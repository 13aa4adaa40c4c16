"""CLAP2016's file layout (the APPA-REAL release): splits, per-image labels, ignore lists.

The ChaLearn LAP 2016 apparent-age data is distributed as the APPA-REAL
release, ``appa-real-release.zip``, which extracts to a folder
``appa-real-release/`` holding::

  train/ valid/ test/        NNNNNN.jpg (whole photo) and NNNNNN.jpg_face.jpg (face crop)
  gt_avg_train.csv ...       one row per image:
                             file_name,num_ratings,apparent_age_avg,apparent_age_std,real_age
  gt_train.csv ...           one row per rating (not read here)

This module reads that layout and nothing else (no image decoding), so that
the TFDS builder and the tests share one definition of it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import os
import pathlib

from amr_jax import errors
from amr_jax.data import dataset_sources

SPLITS = ("train", "valid", "test")
CROPS = ("face", "whole")
CSV_COLUMNS = ("file_name", "num_ratings", "apparent_age_avg", "apparent_age_std", "real_age")
FACE_SUFFIX = "_face.jpg"  # NNNNNN.jpg -> NNNNNN.jpg_face.jpg
# No one is older than this; an age (or a std of guesses) above it in a CSV is a broken file, not a label.
MAX_PLAUSIBLE_AGE = 120

DOWNLOAD_URL = "http://158.109.8.102/AppaRealAge/appa-real-release.zip"

DOWNLOAD_INSTRUCTIONS = f"""\
Get appa-real-release.zip (the APPA-REAL release of the ChaLearn LAP 2016
apparent-age data, 7591 images) from the ChaLearn LAP dataset page
(https://chalearnlap.cvc.uab.cat/dataset/26/description/; direct link
{DOWNLOAD_URL}) and put it, or the extracted `appa-real-release/` folder
(with train/ valid/ test/ and gt_avg_train.csv, gt_avg_valid.csv,
gt_avg_test.csv inside), in the directory given (for TFDS: the manual
directory)."""


@dataclasses.dataclass(frozen=True)
class Clap2016Image:
  """One image of the release: its labels from ``gt_avg_<split>.csv`` and where its files are."""

  file_name: str  # e.g. "000123.jpg", the whole image's name
  split: str  # "train", "valid" or "test"
  num_ratings: int  # how many people guessed the age
  apparent_age_mean: float  # mean of the guesses
  apparent_age_std: float  # standard deviation of the guesses
  real_age: int  # years
  whole_path: pathlib.Path
  face_path: pathlib.Path

  def path(self, crop: str) -> pathlib.Path:
    """The file of ``crop`` (``"face"`` or ``"whole"``)."""
    return self.face_path if _check_crop(crop) == "face" else self.whole_path


@dataclasses.dataclass(frozen=True)
class IgnoreList:
  """The file names of an ignore-list file, with the file's identity."""

  path: pathlib.Path
  names: tuple[str, ...]  # unique, in file order
  sha256: str  # of the file's bytes, as `sha256sum` prints it


def face_file_name(file_name: str) -> str:
  """``NNNNNN.jpg`` -> ``NNNNNN.jpg_face.jpg``, the release's name for the face crop."""
  return file_name + FACE_SUFFIX


def find_root(directory: str | os.PathLike) -> pathlib.Path:
  """The release folder (holding ``train/ valid/ test/`` and ``gt_avg_*.csv``) in or below ``directory``.

  Accepts the folder itself (e.g. ``appa-real-release/``), its parent, or any
  folder with exactly one such folder below it.

  Raises:
    errors.MissingDataError: with the download instructions, when there is none,
      or naming what is missing from a folder that holds only part of one.
    errors.DataError: when there are several.
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise errors.MissingDataError(f"{directory}: no such directory.\n{DOWNLOAD_INSTRUCTIONS}")
  candidates = list(dict.fromkeys(p.parent for p in directory.rglob("gt_avg_*.csv") if p.is_file()))
  return dataset_sources.one_release_folder(directory, candidates, _missing_parts, name="CLAP2016",
                                            layout="train/ valid/ test/ and gt_avg_*.csv",
                                            instructions=DOWNLOAD_INSTRUCTIONS)


def _missing_parts(folder: pathlib.Path) -> list[str]:
  missing = [f"{split}/" for split in SPLITS if not (folder / split).is_dir()]
  return missing + [f"gt_avg_{split}.csv" for split in SPLITS if not (folder / f"gt_avg_{split}.csv").is_file()]


def read_split(root: str | os.PathLike, split: str, crop: str | None = None) -> list[Clap2016Image]:
  """The images of ``split`` as listed in ``root/gt_avg_<split>.csv``, in file order.

  Args:
    root: the release folder (see :func:`find_root`).
    split: ``"train"``, ``"valid"`` or ``"test"``.
    crop: when given (``"face"`` or ``"whole"``), every listed image must have
      that file on disk; ``None`` checks nothing on disk.

  Raises:
    ValueError: an unknown ``split``.
    errors.DataError: naming the CSV file and row, for a bad row (see :func:`read_gt_avg_csv`).
    errors.MissingDataError: naming the file, for a listed image missing on disk.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}.")
  root = pathlib.Path(root)
  csv_path = root / f"gt_avg_{split}.csv"
  images = []
  for row_number, row in read_gt_avg_csv(csv_path):
    image = Clap2016Image(split=split, whole_path=root / split / row["file_name"],
                          face_path=root / split / face_file_name(row["file_name"]), **row)
    if crop is not None and not image.path(crop).is_file():
      raise errors.MissingDataError(f"{image.path(crop)}: missing, but {csv_path}, row {row_number} lists "
                              f"{image.file_name} (every listed image needs its {crop} file).")
    images.append(image)
  return images


def read_gt_avg_csv(path: str | os.PathLike) -> list[tuple[int, dict]]:
  """``(row_number, fields)`` for each data row of a ``gt_avg_<split>.csv`` file.

  Row numbers count lines from 1 (the header), as an editor shows them.
  ``fields`` holds ``file_name`` (str), ``num_ratings`` (int),
  ``apparent_age_mean`` and ``apparent_age_std`` (float), ``real_age`` (int).
  Columns are found by name; extra columns are ignored.

  Raises:
    errors.MissingDataError: the file is missing.
    errors.DataError: naming the file (and row), for a missing header column,
      a row with missing fields, an unparsable number, an age (mean, std or
      real) outside ``[0, MAX_PLAUSIBLE_AGE]``, or a repeated file name.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise errors.MissingDataError(f"{path}: missing (the release has one gt_avg_<split>.csv per split).")
  with path.open(newline="", encoding="utf-8-sig") as handle:  # utf-8-sig: tolerate a byte-order mark
    reader = csv.reader(handle)
    header = [name.strip() for name in next(reader, [])]
    missing = [name for name in CSV_COLUMNS if name not in header]
    if missing:
      raise errors.DataError(f"{path}: header lacks column(s) {', '.join(missing)}; "
                       f"expected the header {','.join(CSV_COLUMNS)}.")
    column = {name: header.index(name) for name in CSV_COLUMNS}
    rows, seen = [], {}
    for fields in reader:
      if not any(field.strip() for field in fields):
        continue  # blank lines (e.g. a trailing one) carry nothing
      where = f"{path}, row {reader.line_num}"
      parsed = _parse_row(fields, column, where)
      if parsed["file_name"] in seen:
        raise errors.DataError(f"{where}: {parsed['file_name']} is already listed in row {seen[parsed['file_name']]}.")
      seen[parsed["file_name"]] = reader.line_num
      rows.append((reader.line_num, parsed))
  return rows


def _parse_row(fields: list[str], column: dict[str, int], where: str) -> dict:
  values = {}
  for name, index in column.items():
    value = fields[index].strip() if index < len(fields) else ""
    if not value:
      raise errors.DataError(f"{where}: missing field {name!r} (expected {len(column)} comma-separated "
                       f"fields: {','.join(CSV_COLUMNS)}; got {','.join(fields)!r}).")
    values[name] = value
  file_name = values["file_name"]
  if "/" in file_name or "\\" in file_name or file_name in (".", ".."):
    raise errors.DataError(f"{where}: file_name {file_name!r} is not a plain file name (expected e.g. 000123.jpg).")
  return {
      "file_name": file_name,
      "num_ratings": _parse_int(values["num_ratings"], "num_ratings", where),
      "apparent_age_mean": _parse_age(values["apparent_age_avg"], "apparent_age_avg", where),
      "apparent_age_std": _parse_age(values["apparent_age_std"], "apparent_age_std", where),
      "real_age": _parse_age(values["real_age"], "real_age", where, whole=True),
  }


def _parse_age(text: str, name: str, where: str, *, whole: bool = False) -> float | int:
  value = _parse_float(text, name, where)
  if not 0 <= value <= MAX_PLAUSIBLE_AGE:
    raise errors.DataError(f"{where}: {name} {text!r} is out of range (expected 0 to {MAX_PLAUSIBLE_AGE} years).")
  return _parse_int(text, name, where) if whole else value


def _parse_float(text: str, name: str, where: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not math.isfinite(value):
    raise errors.DataError(f"{where}: {name} {text!r} is not a number (expected e.g. 4.2222222).")
  return value


def _parse_int(text: str, name: str, where: str) -> int:
  # "36" or "36.0" (a spreadsheet round trip writes the latter); never "36.5".
  value = _parse_float(text, name, where)
  if value != int(value) or value < 0:
    raise errors.DataError(f"{where}: {name} {text!r} is not a whole non-negative number (expected e.g. 36).")
  return int(value)


def read_ignore_list(path: str | os.PathLike) -> IgnoreList:
  """The file names of an ignore list: one name per line; blank lines and surrounding spaces ignored.

  Raises:
    errors.MissingDataError: the file is missing.
    errors.DataError: naming the file and line, for a line that is not a plain file name.
  """
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise errors.MissingDataError(f"{path}: ignore list missing (expected a text file, one image name such as "
                            "000025.jpg per line).")
  data = path.read_bytes()
  names = {}
  for number, line in enumerate(data.decode("utf-8-sig", errors="replace").splitlines(), start=1):
    name = line.strip()
    if not name:
      continue
    if any(c in name for c in "/\\,\t ") or name in (".", ".."):
      raise errors.DataError(f"{path}, line {number}: expected one image name (e.g. 000025.jpg), got {line!r}.")
    names.setdefault(name, number)
  return IgnoreList(path=path.resolve(), names=tuple(names), sha256=hashlib.sha256(data).hexdigest())


def _check_crop(crop: str) -> str:
  if crop not in CROPS:
    raise ValueError(f"unknown crop {crop!r}; expected one of {', '.join(CROPS)}.")
  return crop


@dataclasses.dataclass(frozen=True)
class IgnoreListResult:
  """What an ignore list did: the train images kept, and the names it dropped or could not apply."""

  train: tuple[Clap2016Image, ...]
  dropped: tuple[str, ...]  # train file names dropped, in train order
  not_in_train: dict[str, str]  # name -> the split it is in, or "no split"


def apply_ignore_list(images_by_split: dict[str, list[Clap2016Image]], names) -> IgnoreListResult:
  """Drops the train images named in ``names``; valid and test are never filtered.

  The public ignore list names train images only (the paper dropped them from
  train), so a name found elsewhere, or nowhere, is reported rather than
  applied: it most likely means a list meant for another copy of the data.
  """
  names = set(names)
  train = images_by_split.get("train", [])
  train_names = {image.file_name for image in train}
  where = {image.file_name: split for split, images in images_by_split.items() if split != "train"
           for image in images}
  not_in_train = {name: where.get(name, "no split") for name in sorted(names - train_names)}
  return IgnoreListResult(train=tuple(image for image in train if image.file_name not in names),
                          dropped=tuple(image.file_name for image in train if image.file_name in names),
                          not_in_train=not_in_train)
