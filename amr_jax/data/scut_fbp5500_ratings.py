"""SCUT-FBP5500's raters' ratings: ``All_Ratings.xlsx`` (or its export ``All_Ratings.csv``), one row per rating.

The release documents no column layout, so columns are found by their header,
compared ignoring case, spaces and underscores: a file name column
(``Filename``; also ``File_name``, ``Image name`` or ``Image``), a ``Rating``
column (the release's other rating column, ``original Rating``, is not read),
and, if present, a ``Rater`` column. Every worksheet is read; sheets with no
cells are skipped, and in any other the first non-blank row must be such a
header. The workbook is read with openpyxl (``read_only``, ``data_only``: cached
values, never formulas). When the folder holds both files, the workbook is read
and the CSV ignored: the release's own file wins over a copy.

The same rating may be given twice: a workbook with an overall sheet and
per-subset sheets holds each row twice. With a ``Rater`` column, a row whose
(rater, image) was seen before with the same rating is counted once (and
counted in ``Ratings.duplicates``); with another rating it is an error.
Without a ``Rater`` column every row is a rating.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import pathlib
import re
import zipfile

from amr_jax import errors

RATINGS_FILES = ("All_Ratings.xlsx", "All_Ratings.csv")  # in order of preference
MIN_RATING, MAX_RATING = 1.0, 5.0
FILE_NAME_HEADERS = ("filename", "imagename", "image")  # as header_key gives them
RATING_HEADER = "rating"
RATER_HEADER = "rater"
_EXPECTED_HEADERS = ("one file name column (Filename) and one Rating column, e.g. Rater, Filename, Rating, original "
                     "Rating (compared ignoring case, spaces and underscores)")


@dataclasses.dataclass(frozen=True)
class Ratings:
  """The ratings of a ratings file, by image."""

  path: pathlib.Path
  by_image: dict[str, list[float]]  # file name -> its ratings, in file order
  rows: int  # ratings read (duplicates not included)
  duplicates: int  # rows repeating an earlier (rater, image, rating), each counted once
  sheets: tuple[str, ...]  # the worksheets that held ratings; () for a CSV file


def ratings_path(root: str | os.PathLike) -> pathlib.Path:
  """``root/All_Ratings.xlsx``, else ``root/All_Ratings.csv``.

  Raises:
    errors.MissingDataError: there is neither.
  """
  root = pathlib.Path(root)
  for name in RATINGS_FILES:
    if (root / name).is_file():
      return root / name
  raise errors.MissingDataError(f"{root}: holds neither {' nor '.join(RATINGS_FILES)} (the raters' ratings).")


def header_key(cell) -> str:
  """A header cell as compared: ``"original Rating"`` -> ``"originalrating"``, ``"File_Name"`` -> ``"filename"``."""
  return re.sub(r"[\s_]+", "", _text(cell)).lower()


def read_ratings(path: str | os.PathLike) -> Ratings:
  """The ratings of an ``All_Ratings.xlsx`` (every worksheet) or ``All_Ratings.csv`` file.

  Raises:
    errors.MissingDataError: the file is missing.
    errors.DataError: naming the file, sheet and row, for a workbook that cannot
      be read, a non-empty sheet whose first row lacks the headers (the message
      lists those found and those expected), a row with no file name, a rating
      that is not a number from 1 to 5, a rater rating an image twice
      differently, or a file with no rating at all.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise errors.MissingDataError(f"{path}: missing (the raters' ratings, {' or '.join(RATINGS_FILES)}).")
  tables = _xlsx_tables(path) if path.suffix.lower() == ".xlsx" else _csv_tables(path)
  by_image: dict[str, list[float]] = {}
  seen: dict[tuple[str, str], tuple[float, str, int]] = {}  # (rater, image) -> (rating, sheet, row number)
  rows = duplicates = 0
  sheets = []
  for sheet, table in tables:
    where_sheet = str(path) if sheet is None else f"{path}, sheet {sheet!r}"
    columns, sheet_rows = None, 0
    for number, cells in table:
      if not any(_text(cell) for cell in cells):
        continue  # blank rows, and every row of an empty sheet
      where = f"{where_sheet}, row {number}"
      if columns is None:
        columns = _columns(cells, where)
        continue
      name_column, rating_column, rater_column = columns
      name = _text(_cell(cells, name_column))
      if not name:
        raise errors.DataError(f"{where}: no file name (expected one such as AF1.jpg in every rating row).")
      rating = _rating(_cell(cells, rating_column), where)
      rater = _text(_cell(cells, rater_column)) if rater_column is not None else ""
      if rater:
        earlier = seen.setdefault((rater, name), (rating, where_sheet, number))
        if earlier[1:] != (where_sheet, number):
          if earlier[0] != rating:
            raise errors.DataError(f"{where}: rater {rater} rates {name} {rating:g}, but {earlier[1]}, row "
                                   f"{earlier[2]} gives {earlier[0]:g}; each rater rates an image once.")
          duplicates += 1
          continue
      by_image.setdefault(name, []).append(rating)
      rows += 1
      sheet_rows += 1
    if sheet is not None and sheet_rows:
      sheets.append(sheet)
  if not rows:
    raise errors.DataError(f"{path}: holds no ratings (expected a header row with {_EXPECTED_HEADERS}, then one row "
                           "per rating).")
  return Ratings(path=path, by_image=by_image, rows=rows, duplicates=duplicates, sheets=tuple(sheets))


def _xlsx_tables(path: pathlib.Path):
  """``(sheet name, rows)`` for each worksheet; ``rows`` gives ``(row number, cell values)`` from row 1."""
  import openpyxl  # only here: the CSV and the rest of the layout need no workbook reader

  try:
    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
  except (zipfile.BadZipFile, KeyError, OSError, ValueError, openpyxl.utils.exceptions.InvalidFileException) as error:
    raise errors.DataError(f"{path}: not a readable .xlsx workbook ({type(error).__name__}: {error}).") from error
  try:
    for sheet in workbook.worksheets:
      # Read-only mode fills missing rows with empty ones, so the count is the row number Excel shows.
      yield sheet.title, enumerate(sheet.iter_rows(values_only=True), start=1)
  finally:
    workbook.close()  # read-only workbooks keep their file open until closed


def _csv_tables(path: pathlib.Path):
  """One table, ``(None, rows)``: a CSV file has no sheets. Comma, semicolon (Excel's export in some locales) or
  tab separated, as the header row shows."""
  # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark. The names and numbers read are ASCII, so other
  # encodings' bytes only ever reach an error message.
  with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
    first = handle.readline()
    handle.seek(0)
    reader = csv.reader(handle, delimiter=next((mark for mark in ",;\t" if mark in first), ","))
    yield None, ((reader.line_num, fields) for fields in reader)


def _columns(cells, where: str) -> tuple[int, int, int | None]:
  keys = [header_key(cell) for cell in cells]
  name = [index for index, key in enumerate(keys) if key in FILE_NAME_HEADERS]
  rating = [index for index, key in enumerate(keys) if key == RATING_HEADER]
  rater = [index for index, key in enumerate(keys) if key == RATER_HEADER]
  if len(name) != 1 or len(rating) != 1 or len(rater) > 1:
    found = ", ".join(repr(_text(cell)) for cell in cells if _text(cell))
    raise errors.DataError(f"{where}: found the headers {found}; expected the header row to have {_EXPECTED_HEADERS}.")
  return name[0], rating[0], (rater[0] if rater else None)


def _cell(cells, index: int):
  return cells[index] if index < len(cells) else None


def _text(value) -> str:
  if value is None:
    return ""
  if isinstance(value, float) and value.is_integer():
    return str(int(value))  # a rater 7 stored as 7.0 is rater 7
  return str(value).strip()


def _rating(value, where: str) -> float:
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    number = float(value)
  else:
    try:
      number = float(_text(value))
    except ValueError:
      number = math.nan
  if not MIN_RATING <= number <= MAX_RATING:  # also refuses nan
    raise errors.DataError(f"{where}: Rating {_text(value)!r} is not a number from {MIN_RATING:g} to "
                           f"{MAX_RATING:g}.")
  return number
