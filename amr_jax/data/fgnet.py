"""FG-NET's file layout: image names, 68-point landmark files, and the index of a copy.

A copy of FG-NET is a folder ``FGNET/`` holding ``images/SSSAyy.JPG`` (subject
``SSS``, age ``yy``; a trailing ``a``/``b`` marks a second photo at the same
age) and ``points/sssayy.pts`` (the same name in lower case), a 68-point
landmark file::

  version: 1
  n_points: 68
  {
  x y
  ...
  }

This module reads that layout and nothing else (no image decoding), so that
the TFDS builder and the tests share one definition of it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

import numpy as np

from amr_jax import errors

NUM_LANDMARKS = 68
_IMAGE_NAME = re.compile(r"^(\d{3})A(\d{2})([ab]?)\.JPG$", re.IGNORECASE)

DOWNLOAD_INSTRUCTIONS = """\
Get FGNET.zip from the FG-NET page of yanweifu.github.io
(https://yanweifu.github.io/FG_NET_data/) and put it, or the extracted
`FGNET/` folder (with `images/` and `points/` inside), in the directory given
(for TFDS: the manual directory)."""


@dataclasses.dataclass(frozen=True)
class FgnetImage:
  """One FG-NET photograph: where it is and what its name and landmark file say."""

  file_name: str  # e.g. "001A02.JPG"
  subject_id: int  # 1..82
  age: int  # years
  image_path: pathlib.Path
  landmarks_path: pathlib.Path


def parse_image_name(file_name: str) -> tuple[int, int]:
  """``(subject_id, age)`` from an FG-NET image name such as ``078A11.JPG`` or ``013A05a.JPG``.

  Raises:
    errors.DataError: naming the file, when the name is not ``SSSAyy[a|b].JPG``.
  """
  match = _IMAGE_NAME.match(file_name)
  if not match:
    raise errors.DataError(f"{file_name}: not an FG-NET image name (expected SSSAyy.JPG, e.g. 078A11.JPG).")
  return int(match.group(1)), int(match.group(2))


def read_landmarks(path: str | os.PathLike) -> np.ndarray:
  """The ``[68, 2]`` float32 (x, y) landmarks of a ``.pts`` file.

  Raises:
    errors.MissingDataError: the file is missing.
    errors.DataError: naming the file and line, when it is not a 68-point ``.pts`` file.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise errors.MissingDataError(f"{path}: landmark file missing (every FG-NET image needs points/<name>.pts).")
  lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
  try:
    start, end = lines.index("{"), lines.index("}")
  except ValueError:
    raise errors.DataError(f"{path}: not a .pts file (no '{{' ... '}}' block of points).") from None
  points = []
  for number, line in enumerate(lines[start + 1:end], start=start + 2):
    fields = line.split()
    try:
      if len(fields) != 2:
        raise ValueError
      points.append((float(fields[0]), float(fields[1])))
    except ValueError:
      raise errors.DataError(f"{path}, line {number}: expected 'x y', got {line!r}.") from None
  if len(points) != NUM_LANDMARKS:
    raise errors.DataError(f"{path}: expected {NUM_LANDMARKS} points, found {len(points)}.")
  return np.asarray(points, np.float32)


def find_root(directory: str | os.PathLike) -> pathlib.Path:
  """The FG-NET folder (the one holding ``images/`` and ``points/``) in or below ``directory``.

  Accepts the folder itself, its parent, or any folder with exactly one such
  folder below it.

  Raises:
    errors.MissingDataError: with the download instructions, when there is none.
    errors.DataError: when there are several.
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise errors.MissingDataError(f"{directory}: no such directory.\n{DOWNLOAD_INSTRUCTIONS}")
  candidates = [directory] + sorted(p.parent for p in directory.rglob("images") if p.is_dir())
  roots = [p for p in dict.fromkeys(candidates) if (p / "images").is_dir() and (p / "points").is_dir()]
  if not roots:
    raise errors.MissingDataError(
        f"{directory}: holds no FG-NET folder (images/ and points/).\n{DOWNLOAD_INSTRUCTIONS}")
  if len(roots) > 1:
    raise errors.DataError(f"{directory}: holds {len(roots)} FG-NET folders ({', '.join(map(str, roots))}); keep one.")
  return roots[0]


def index_images(root: str | os.PathLike) -> list[FgnetImage]:
  """Every image of an FG-NET folder, sorted by file name, with its landmark file.

  Raises:
    errors.DataError: naming the file, for a file in ``images/`` whose name
      does not parse, or an ``images/`` folder with no images.
    errors.MissingDataError: naming the image, when its landmark file is missing.
  """
  root = pathlib.Path(root)
  points = {p.name.lower(): p for p in (root / "points").iterdir()}
  images = []
  for path in sorted((root / "images").iterdir(), key=lambda p: p.name):
    if path.name.startswith("."):
      continue  # hidden files such as .DS_Store are not data
    subject_id, age = parse_image_name(path.name)
    landmarks = points.get(path.stem.lower() + ".pts")
    if landmarks is None:
      raise errors.MissingDataError(f"{path}: no landmark file points/{path.stem.lower()}.pts.")
    images.append(FgnetImage(path.name, subject_id, age, path, landmarks))
  if not images:
    raise errors.DataError(f"{root / 'images'}: no images.\n{DOWNLOAD_INSTRUCTIONS}")
  return images
