"""SCUT-FBP5500's file layout (the ``SCUT-FBP5500_v2`` release): scores, published splits, and a copy's checks.

SCUT-FBP5500 (Liang et al., 2018) is 5500 frontal faces, 350x350, each rated
for attractiveness from 1 to 5 by 60 raters. Its release extracts to a folder
``SCUT-FBP5500_v2/`` holding::

  Images/                     AF1.jpg..AF2000.jpg (Asian female), AM1..AM2000 (Asian male),
                              CF1..CF750 (Caucasian female), CM1..CM750 (Caucasian male)
  All_Ratings.xlsx            one row per rating: Rater, Filename, Rating, original Rating
  train_test_files/
    All_labels.txt            one line per image: "AF1.jpg 2.716667" (file name, mean score)
    split_of_60%training and 40%testing/train.txt, test.txt                  (same line format)
    5_folders_cross_validations_files/cross_validation_<k>/train_<k>.txt, test_<k>.txt   (k = 1..5)
  facial landmark/            86-point .pts files: not read here

The score (``score_mean``) is All_labels.txt's value; the raters' ratings
(:mod:`amr_jax.data.scut_fbp5500_ratings`) give ``num_ratings`` and
``score_std``, and their mean is compared with the score. This module reads
that layout and nothing else (no image decoding, no TFDS), so that the TFDS
builder and the tests share one definition of it. Every inconsistency is a
:class:`~amr_jax.errors.DataError` naming the file (and line) and what was
expected, except a score that differs from its ratings' mean, which is
reported (``ScutRelease.disagreements``): the release's own labels are kept.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re

from amr_jax import errors
from amr_jax.data import dataset_sources
from amr_jax.data import scut_fbp5500_ratings as ratings_module

SUBSETS = ("AF", "AM", "CF", "CM")  # Asian female, Asian male, Caucasian female, Caucasian male
NUM_FOLDS = 5
SPLITS_60_40 = ("train", "test")
MIN_SCORE, MAX_SCORE = ratings_module.MIN_RATING, ratings_module.MAX_RATING
# All_labels.txt has 6 decimals (rounding moves a mean by at most 5e-7): a larger gap is another label, not rounding.
MEAN_TOLERANCE = 1e-3

IMAGES_DIR = "Images"
LABELS_FILE = "train_test_files/All_labels.txt"
SPLIT_60_40_DIR = "train_test_files/split_of_60%training and 40%testing"
CV_DIR = "train_test_files/5_folders_cross_validations_files"
RATINGS_FILES = ratings_module.RATINGS_FILES
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_MARKERS = {IMAGES_DIR, "train_test_files", *RATINGS_FILES}

HOMEPAGE = "https://github.com/HCIILAB/SCUT-FBP5500-Database-Release"

DOWNLOAD_INSTRUCTIONS = f"""\
Get SCUT-FBP5500_v2 (the SCUT-FBP5500 facial-beauty database, 5500 images;
non-commercial research use only) through the Google Drive or Baidu links of
its release page, {HOMEPAGE}
(there is no direct download link, so nothing is downloaded for you), and put
the zip, or the extracted `SCUT-FBP5500_v2/` folder (with Images/,
All_Ratings.xlsx and train_test_files/ inside), in the directory given (for
TFDS: the manual directory). All_Ratings.xlsx may be replaced by
All_Ratings.csv, its export with the same header row (Rater, Filename,
Rating, ...)."""


@dataclasses.dataclass(frozen=True)
class ScutImage:
  """One image of the release: its score, its raters' spread, and the published splits it is in."""

  file_name: str  # e.g. "AF1.jpg"
  path: pathlib.Path
  score_mean: float  # All_labels.txt's score, 1..5
  score_std: float  # population standard deviation (ddof=0) of the raters' Rating values
  num_ratings: int
  subset: str  # "AF", "AM", "CF" or "CM", the name's prefix
  cv_fold: int  # 1..5: the cross_validation_<k> whose test_<k>.txt lists the image
  split_60_40: str  # "train" or "test"


@dataclasses.dataclass(frozen=True)
class ScutRelease:
  """A checked copy of the release: its images (All_labels.txt's order) and what its ratings file held."""

  root: pathlib.Path
  images: tuple[ScutImage, ...]
  ratings: ratings_module.Ratings
  # file name -> {"label": All_labels.txt's score, "ratings_mean": the mean of its ratings}, where they differ by
  # more than MEAN_TOLERANCE.
  disagreements: dict[str, dict[str, float]]


def split_files() -> dict[tuple[str, str], str]:
  """``(split, part)`` -> the file's path relative to the release folder.

  ``split`` is ``"60_40"`` or ``"cv1"``..``"cv5"``; ``part`` is ``"train"`` or ``"test"``.
  """
  files = {("60_40", part): f"{SPLIT_60_40_DIR}/{part}.txt" for part in SPLITS_60_40}
  for k in range(1, NUM_FOLDS + 1):
    files.update({(f"cv{k}", part): f"{CV_DIR}/cross_validation_{k}/{part}_{k}.txt" for part in SPLITS_60_40})
  return files


def missing_parts(folder: str | os.PathLike) -> list[str]:
  """What ``folder`` lacks of a release folder, as paths relative to it (empty when complete)."""
  folder = pathlib.Path(folder)
  missing = [] if (folder / IMAGES_DIR).is_dir() else [f"{IMAGES_DIR}/"]
  if not any((folder / name).is_file() for name in RATINGS_FILES):
    missing.append(" or ".join(RATINGS_FILES))
  return missing + [name for name in (LABELS_FILE, *split_files().values()) if not (folder / name).is_file()]


def find_root(directory: str | os.PathLike) -> pathlib.Path:
  """The release folder (holding ``Images/``, ``All_Ratings.xlsx`` and ``train_test_files/``) in or below
  ``directory``.

  Accepts the folder itself (e.g. ``SCUT-FBP5500_v2/``), its parent, or any
  folder with exactly one such folder below it (a zip in the manual directory
  is extracted by :func:`amr_jax.data.dataset_sources.raw_data_root` first).
  Folders under ``__MACOSX/`` (macOS zips' resource forks) are not candidates.

  Raises:
    errors.MissingDataError: with the download instructions, when there is none,
      or naming, on one line, everything a folder that holds part of one lacks.
    errors.DataError: when there are several.
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise errors.MissingDataError(f"{directory}: no such directory.\n{DOWNLOAD_INSTRUCTIONS}")
  found = [directory] + [path.parent for path in directory.rglob("*") if path.name in _MARKERS]
  candidates = [folder for folder in dict.fromkeys(found) if "__MACOSX" not in folder.parts
                and any((folder / name).exists() for name in _MARKERS)]
  return dataset_sources.one_release_folder(directory, candidates, missing_parts, name="SCUT-FBP5500",
                                            layout="Images/, All_Ratings.xlsx and train_test_files/",
                                            instructions=DOWNLOAD_INSTRUCTIONS)


def subset_of(file_name: str, where: str = "") -> str:
  """The subset (``"AF"``, ``"AM"``, ``"CF"`` or ``"CM"``) of an image name, its first two letters.

  Raises:
    errors.DataError: naming ``where`` (a file and line), for a name that is not ``<subset><number>.jpg``-like.
  """
  subset = file_name[:2]
  if subset not in SUBSETS or not re.fullmatch(r"[A-Z]{2}\d+\.\w+", file_name):
    raise errors.DataError(f"{where or file_name}: {file_name!r} is not an image name of the release (expected "
                           f"{', '.join(SUBSETS)} then a number, e.g. AF1.jpg).")
  return subset


def read_score_file(path: str | os.PathLike) -> dict[str, float]:
  """``{file name: score}`` of a label or split file (``All_labels.txt``, ``train.txt``, ...), in file order.

  Each non-blank line is ``<file name> <score>`` separated by spaces (or tabs),
  the score a number from 1 to 5.

  Raises:
    errors.MissingDataError: the file is missing.
    errors.DataError: naming the file and line, for a line that is not two
      fields, a score that is not a number from 1 to 5, a name that is not
      one of the release's (see :func:`subset_of`), or a name listed twice.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise errors.MissingDataError(f"{path}: missing (the release has it under train_test_files/).")
  scores, lines = {}, {}
  text = path.read_bytes().decode("utf-8-sig", errors="replace")  # utf-8-sig: tolerate a byte-order mark
  for number, line in enumerate(text.splitlines(), start=1):
    fields = line.split()
    if not fields:
      continue
    where = f"{path}, line {number}"
    if len(fields) != 2:
      raise errors.DataError(f"{where}: expected '<file name> <score>' separated by a space (e.g. "
                             f"'AF1.jpg 2.716667'), got {line!r}.")
    name, score = fields
    subset_of(name, where)
    scores[name] = _score(score, where)
    if name in lines:
      raise errors.DataError(f"{where}: {name} is already listed on line {lines[name]}.")
    lines[name] = number
  return scores


def _score(text: str, where: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not MIN_SCORE <= value <= MAX_SCORE:  # also refuses nan
    raise errors.DataError(f"{where}: score {text!r} is not a number from {MIN_SCORE:g} to {MAX_SCORE:g}.")
  return value


def describe_names(names) -> str:
  """Up to five of ``names`` (in the release's order: subset, then number) and how many there are."""
  names = sorted(names, key=_natural_key)
  shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
  return f"{shown} ({len(names)} image{'' if len(names) == 1 else 's'})"


def _natural_key(name: str):
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_release(root: str | os.PathLike) -> ScutRelease:
  """Every image of a release folder (see :func:`find_root`), checked, in All_labels.txt's order.

  The checks, cheapest first (the ratings workbook, 330,000 rows, is read last):
  the folder is complete; every line of every label and split file parses;
  All_labels.txt lists exactly the images in ``Images/``; the five
  ``test_<k>.txt`` partition the labelled images, each ``train_<k>.txt`` is
  exactly the rest, and the 60/40 ``train.txt`` and ``test.txt`` partition
  them; the ratings file rates every labelled image and no other.

  ``score_std`` is the population standard deviation (ddof=0) of the image's
  ratings: the spread of the rating distribution itself, as a label-distribution
  loss fits it (with 60 raters, ddof=1 would be 0.8% larger).

  Raises:
    errors.MissingDataError: naming, on one line, every part of the layout the folder lacks,
      or the images listed but absent from ``Images/``.
    errors.DataError: naming the file (and line or row) and what was expected.
  """
  root = pathlib.Path(root)
  missing = missing_parts(root)
  if missing:
    raise errors.MissingDataError(f"{root}: incomplete SCUT-FBP5500 release folder, missing {', '.join(missing)}."
                                  f"\n{DOWNLOAD_INSTRUCTIONS}")
  labels_path = root / LABELS_FILE
  labels = read_score_file(labels_path)
  if not labels:
    raise errors.DataError(f"{labels_path}: lists no image (expected one line per image, e.g. 'AF1.jpg 2.716667').")
  _check_images_folder(root / IMAGES_DIR, labels, labels_path)
  cv_fold, split_60_40 = _check_splits(root, set(labels))
  ratings = ratings_module.read_ratings(ratings_module.ratings_path(root))
  by_image = _by_label_name(ratings.by_image, labels)
  _check_rated(ratings.path, by_image, labels, labels_path)
  images, disagreements = [], {}
  for name, score in labels.items():
    values = by_image[name]
    mean = math.fsum(values) / len(values)
    if abs(mean - score) > MEAN_TOLERANCE:
      disagreements[name] = {"label": score, "ratings_mean": round(mean, 6)}
    std = math.sqrt(math.fsum((value - mean) ** 2 for value in values) / len(values))
    images.append(ScutImage(file_name=name, path=root / IMAGES_DIR / name, score_mean=score, score_std=std,
                            num_ratings=len(values), subset=subset_of(name), cv_fold=cv_fold[name],
                            split_60_40=split_60_40[name]))
  return ScutRelease(root=root, images=tuple(images), ratings=ratings, disagreements=disagreements)


def _check_images_folder(folder: pathlib.Path, labels: dict[str, float], labels_path: pathlib.Path) -> None:
  on_disk = {path.name for path in folder.iterdir() if path.is_file() and not path.name.startswith(".")
             and path.suffix.lower() in IMAGE_SUFFIXES}  # hidden files such as .DS_Store are not images
  absent = set(labels) - on_disk
  if absent:
    raise errors.MissingDataError(f"{folder}: {describe_names(absent)} listed in {labels_path} but absent "
                                  "(every labelled image needs its file).")
  unlabelled = on_disk - set(labels)
  if unlabelled:
    raise errors.DataError(f"{folder}: {describe_names(unlabelled)} with no label in {labels_path} (every image "
                           "needs a line '<file name> <score>' there).")


def _check_splits(root: pathlib.Path, labelled: set[str]) -> tuple[dict[str, int], dict[str, str]]:
  """``({name: cv fold}, {name: "train" or "test"})``, once the split files are checked against ``labelled``."""
  files = {key: root / relative for key, relative in split_files().items()}
  names = {key: set(read_score_file(path)) for key, path in files.items()}
  folds = _partition({k: files[(f"cv{k}", "test")] for k in range(1, NUM_FOLDS + 1)},
                     {k: names[(f"cv{k}", "test")] for k in range(1, NUM_FOLDS + 1)}, labelled,
                     "5-fold cross-validation test")
  for k in range(1, NUM_FOLDS + 1):
    train, test = files[(f"cv{k}", "train")], files[(f"cv{k}", "test")]
    expected = labelled - names[(f"cv{k}", "test")]
    lacks, extra = expected - names[(f"cv{k}", "train")], names[(f"cv{k}", "train")] - expected
    if lacks or extra:
      problems = ([f"lacks {describe_names(lacks)}"] if lacks else []) + (
          [f"also lists {describe_names(extra)}"] if extra else [])
      raise errors.DataError(f"{train}: must list exactly the labelled images that {test} does not; it "
                             f"{' and '.join(problems)}.")
  split = _partition({part: files[("60_40", part)] for part in SPLITS_60_40},
                     {part: names[("60_40", part)] for part in SPLITS_60_40}, labelled, "60%/40% train and test")
  return folds, split


def _partition(files: dict, names: dict, labelled: set[str], what: str) -> dict:
  """``{image: key}`` where ``names[key]`` (read from ``files[key]``) lists the image; each labelled image exactly
  once, and no other."""
  where: dict[str, list] = {}
  for key, listed in names.items():
    for name in listed:
      where.setdefault(name, []).append(key)
  repeated = sorted((name for name, keys in where.items() if len(keys) > 1), key=_natural_key)
  if repeated:
    shown = "; ".join(f"{name} in {' and '.join(str(files[key]) for key in where[name])}" for name in repeated[:5])
    raise errors.DataError(f"each image must be in exactly one of the {what} files, but {len(repeated)} image(s) "
                           f"are in several: {shown}.")
  listed_files = ", ".join(str(path) for path in files.values())
  unlabelled = set(where) - labelled
  if unlabelled:
    raise errors.DataError(f"{listed_files}: list {describe_names(unlabelled)} that All_labels.txt does not.")
  unlisted = labelled - set(where)
  if unlisted:
    raise errors.DataError(f"{listed_files}: together must list every labelled image once; "
                           f"{describe_names(unlisted)} of All_labels.txt are in none.")
  return {name: keys[0] for name, keys in where.items()}


def _by_label_name(by_image: dict[str, list[float]], labels: dict[str, float]) -> dict[str, list[float]]:
  """The ratings under All_labels.txt's names: a rated name without its extension (``AF1``) is the labelled
  ``AF1.jpg``, since the ratings file's name column is not documented to carry one."""
  named: dict[str, list[float]] = {}
  for name, values in by_image.items():
    if name not in labels and not pathlib.PurePath(name).suffix:
      name = next((full for full in (name + suffix for suffix in IMAGE_SUFFIXES) if full in labels), name)
    named.setdefault(name, []).extend(values)
  return named


def _check_rated(ratings_path: pathlib.Path, by_image: dict[str, list[float]], labels: dict[str, float],
                 labels_path: pathlib.Path) -> None:
  unrated = set(labels) - set(by_image)
  if unrated:
    raise errors.DataError(f"{ratings_path}: no ratings for {describe_names(unrated)} (every image of "
                           f"{labels_path} needs its raters' ratings).")
  unlabelled = set(by_image) - set(labels)
  if unlabelled:
    raise errors.DataError(f"{ratings_path}: rates {describe_names(unlabelled)} that {labels_path} does not list.")
