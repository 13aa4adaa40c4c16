"""Photographs from the command line: the files and folders named, and each read as upright 8-bit RGB."""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np
import PIL.Image
import PIL.ImageOps

from amr_jax import errors


def photograph_paths(inputs: Sequence[str | os.PathLike]) -> list[pathlib.Path]:
  """The files named, and every file in the folders named (at any depth, sorted; hidden ones skipped).

  Raises:
    errors.DataError: a path that does not exist, or a folder that holds no file but hidden ones.
  """
  paths = []
  for item in inputs:
    item = pathlib.Path(item)
    if item.is_dir():
      found = sorted(p for p in item.rglob("*") if p.is_file() and not any(
          part.startswith(".") for part in p.relative_to(item).parts))
      if not found:
        raise errors.DataError(f"{item}: a folder with no photographs in it (files whose names start with '.' are "
                               "skipped).")
      paths += found
    elif item.is_file():
      paths.append(item)
    else:
      raise errors.DataError(f"{item}: no such file or folder.")
  return paths


def rgb8(image: PIL.Image.Image) -> np.ndarray:
  """RGB uint8 ``[H, W, 3]`` of any mode Pillow opens; deeper greys are scaled to 8 bits, never clipped.

  Pillow's own ``convert("RGB")`` clips 16- and 32-bit greys at 255 (a 16-bit face turns white). Here: 16-bit
  modes (``I;16*``, and ``I`` whose values exceed 255) are divided by 257 (65535 -> 255); float greys (``F``) in
  [0, 1] are multiplied by 255, others taken as 0..255. Palette, alpha, CMYK, bilevel and the rest go through
  Pillow's conversion (alpha dropped).
  """
  if image.mode in ("I", "F") or image.mode.startswith("I;16"):
    grey = np.asarray(image, np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and grey.max(initial=0) > 255):
      grey = grey / 257.0
    elif image.mode == "F" and grey.max(initial=0) <= 1.0:
      grey = grey * 255.0
    grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)
  return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))  # no copy a large photograph can spare


def read_photograph(path: pathlib.Path) -> np.ndarray:
  """RGB uint8 ``[H, W, 3]``, turned upright by its EXIF orientation, from any mode Pillow opens (deeper greys
  scaled to 8 bits, never clipped).

  Raises:
    errors.DataError: not an image, or unreadable (the message says why).
  """
  try:
    with PIL.Image.open(path) as image:
      image.load()
      PIL.ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of a large photograph
      return rgb8(image)
  except PIL.UnidentifiedImageError:
    raise errors.DataError("not an image") from None
  except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as error:  # corrupt, or huge
    raise errors.DataError(f"unreadable image ({error})") from None
