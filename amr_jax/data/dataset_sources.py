"""A TFDS builder's raw files: where they come from (manual directory, an archive in it, or a download) and how images are stored.

Order: a copy in the manual directory (extracted folder, then ``*.zip``) is
used first, with no network access, because research clusters are often
offline and a user who put the files there meant them to be used. A manual
directory that holds something unusable is an error (it is not papered over
by a download). Only a missing or empty manual directory leads to the public
URL, where one is known: one attempt with a timeout (TFDS's own downloader
retries for minutes and extracts with TensorFlow, so it is not used). If
nothing works, the error says what to download, where to put it, and why each
source failed.
"""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import urllib.request
import zipfile
from typing import Callable

from absl import logging
import PIL.Image

from amr_jax import errors

FindRoot = Callable[[pathlib.Path], pathlib.Path]
DOWNLOAD_TIMEOUT_S = 60


def raw_data_root(dl_manager, *, name: str, find_root: FindRoot, instructions: str,
                  download_url: str | None = None) -> pathlib.Path:
  """The folder holding dataset ``name``'s raw files.

  Args:
    dl_manager: the builder's ``tfds.download.DownloadManager``.
    name: the dataset's name, for messages and the download folder.
    find_root: maps a folder to the dataset root found inside it, or raises
      ``FileNotFoundError`` saying what is missing.
    instructions: what to download and where to put it.
    download_url: the public zip archive, tried when the manual directory is missing or empty.

  Raises:
    errors.MissingDataError: no usable copy, saying why each source failed.
    errors.DataError: a manual directory holding something unusable (an unreadable zip, several copies).
  """
  work_dir = pathlib.Path(dl_manager.download_dir) / name
  manual_dir = manual_dir_or_none(dl_manager)
  if manual_dir is not None:
    try:
      return _root_in_folder_or_zip(manual_dir, work_dir / "extracted", find_root)
    except FileNotFoundError as error:
      raise errors.MissingDataError(f"{name}: manual directory {manual_dir} holds no usable copy: "
                              f"{_first_line(error)}\n{instructions}") from error
  failures = [f"manual directory {dl_manager._manual_dir} is missing or empty"]  # pylint: disable=protected-access
  if download_url:
    try:
      archive = _download(download_url, work_dir)
      return _root_in_folder_or_zip(archive.parent, work_dir / "extracted", find_root)
    except Exception as error:  # pylint: disable=broad-except  # any failure ends in the message below
      failures.append(f"download of {download_url} failed: {type(error).__name__}: {_first_line(error)}")
  reasons = "\n".join(f"  - {failure}" for failure in failures)
  raise errors.MissingDataError(f"{name}: no usable copy of the raw data found:\n{reasons}\n{instructions}")


def _download(url: str, folder: pathlib.Path) -> pathlib.Path:
  """Fetches ``url`` once into ``folder`` (kept for later builds); returns the file."""
  target = folder / os.path.basename(url.split("?")[0])
  if target.is_file():
    return target
  folder.mkdir(parents=True, exist_ok=True)
  partial = target.with_name(target.name + ".partial")
  logging.info("Downloading %s to %s", url, target)
  with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(partial, "wb") as out:
    shutil.copyfileobj(response, out)
  if not zipfile.is_zipfile(partial):
    size = partial.stat().st_size
    partial.unlink()
    raise errors.DataError(f"{url} did not return a zip archive ({size} bytes).")
  partial.replace(target)  # a killed or failed download never looks complete
  return target


def _first_line(error: Exception) -> str:
  return (str(error).strip().splitlines() or [""])[0]


def manual_dir_or_none(dl_manager) -> pathlib.Path | None:
  """The builder's manual directory, or ``None`` when it is missing or empty.

  Raises:
    errors.DataError: it is a file.
  """
  try:
    return pathlib.Path(dl_manager.manual_dir)
  except AssertionError:  # TFDS's way of saying missing or empty
    return None
  except NotADirectoryError:  # TFDS lists it: a file there (the archive itself) fails deep in etils
    folder = pathlib.Path(dl_manager._manual_dir)  # pylint: disable=protected-access
    raise errors.DataError(f"manual directory {folder} is a file; give the folder it lies in ({folder.parent}): the "
                           "manual directory holds the dataset's archive or its extracted folder.") from None


def _root_in_folder_or_zip(folder: pathlib.Path, extract_to: pathlib.Path, find_root: FindRoot) -> pathlib.Path:
  """The root in ``folder``, or in the ``*.zip`` files there (extracted into ``extract_to``)."""
  try:
    return find_root(folder)
  except FileNotFoundError:
    archives = sorted(folder.glob("*.zip"))
    if not archives:
      raise
  for archive in archives:  # extracted elsewhere: the manual directory may be read-only
    try:
      with zipfile.ZipFile(archive) as handle:
        handle.extractall(extract_to)
    except zipfile.BadZipFile as error:
      raise errors.DataError(f"{archive}: not a readable zip archive ({error}).") from error
  return find_root(extract_to)


def one_release_folder(directory: pathlib.Path, candidates, missing_parts: Callable[[pathlib.Path], list[str]], *,
                       name: str, layout: str, instructions: str) -> pathlib.Path:
  """The one complete folder among ``candidates`` (folders in or below ``directory`` holding part of dataset
  ``name``'s release, in order): what every dataset's ``find_root`` shares once it has looked for them.

  Raises:
    errors.DataError: several complete folders, naming them.
    errors.MissingDataError: none; naming, on one line, all that the first partial candidate with the fewest
      missing parts lacks (``missing_parts``), or, with no candidate, the ``layout`` looked for; then
      ``instructions``.
  """
  roots = [folder for folder in candidates if not missing_parts(folder)]
  if len(roots) > 1:
    raise errors.DataError(f"{directory}: holds {len(roots)} {name} release folders "
                           f"({', '.join(map(str, sorted(roots)))}); keep one.")
  if roots:
    return roots[0]
  if candidates:  # a partial copy: say all it lacks rather than "nothing found"
    partial = min(candidates, key=lambda folder: (len(missing_parts(folder)), str(folder)))
    raise errors.MissingDataError(f"{partial}: incomplete {name} release folder, missing "
                                  f"{', '.join(missing_parts(partial))}.\n{instructions}")
  raise errors.MissingDataError(f"{directory}: holds no {name} release folder ({layout}).\n{instructions}")


def rgb_jpeg_bytes(path: pathlib.Path) -> bytes:
  """The image file's bytes as an RGB JPEG: the file itself when it is one, else re-encoded (quality 95).

  Stored encoded so that TFDS builds and reads it without TensorFlow; the
  greyscale, CMYK or PNG files some datasets hold become RGB.

  Raises:
    errors.DataError: naming the file, when it is not an image PIL can decode.
  """
  data = path.read_bytes()
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      image.load()
      if image.mode == "RGB" and image.format == "JPEG":
        return data
      buffer = io.BytesIO()
      image.convert("RGB").save(buffer, format="JPEG", quality=95)
      return buffer.getvalue()
  except (OSError, PIL.UnidentifiedImageError) as error:
    raise errors.DataError(f"{path}: cannot decode this image ({error}).") from error
