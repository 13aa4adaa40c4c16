"""Files a researcher reads after evaluation: a predictions CSV and PNG plots.

The CSV keeps one row per image (so errors can be inspected and re-analysed
without re-running the model); the plots show the cumulative score curve,
predicted against true age, and the MAE per age group. Figures are built with
:class:`matplotlib.figure.Figure` rather than pyplot, so no display or global
backend is needed and no figure outlives its function. Every file is written
whole or not at all (:mod:`amr_jax.atomic_files`): a failure leaves an
earlier report as it was.
"""

from __future__ import annotations

import csv
import io
import os
import pathlib
import re
from collections.abc import Mapping, Sequence

import numpy as np

from amr_jax import atomic_files

_INT = re.compile(r"[+-]?(0|[1-9]\d*)")  # "007" stays a string (an id, not a number)
_FLOAT = re.compile(r"[+-]?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?|[+-]?(nan|inf)")


def _cell(value) -> str:
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode("utf-8")
  if isinstance(value, (bool, np.bool_)):
    return str(int(value))
  if isinstance(value, (float, np.floating)):
    return f"{float(value):.4f}"
  return str(value)


def write_predictions_csv(path: str | os.PathLike, columns: Mapping[str, Sequence]) -> None:
  """Writes one row per example; floats with 4 decimals, bools as 0/1, bytes decoded as UTF-8.

  Args:
    path: the CSV file (parent folders are created).
    columns: column name -> ``[examples]`` values, all of the same length (at least one example).
  """
  arrays = {name: np.asarray(values) for name, values in columns.items()}
  lengths = {name: (len(a) if a.ndim == 1 else f"shape {a.shape}") for name, a in arrays.items()}
  if len(set(lengths.values())) != 1 or not all(isinstance(n, int) and n > 0 for n in lengths.values()):
    raise ValueError(f"columns must be 1-D, non-empty and of the same length; got lengths {lengths}.")
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  text = io.StringIO(newline="")
  writer = csv.writer(text)
  writer.writerow(arrays)
  writer.writerows(zip(*([_cell(v) for v in a.tolist()] for a in arrays.values())))
  atomic_files.write_text(path, text.getvalue())


def read_predictions_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads :func:`write_predictions_csv` output: int64, float64 or str column by column."""
  with open(path, newline="", encoding="utf-8") as f:
    header, *rows = list(csv.reader(f)) or [[]]
  if not rows or any(len(row) != len(header) for row in rows):
    raise ValueError(f"{path} must hold a header and rows of {len(header)} cells each.")
  result = {}
  for name, cells in zip(header, zip(*rows)):
    if all(_INT.fullmatch(c) for c in cells):
      result[name] = np.array([int(c) for c in cells], np.int64)
    elif all(_FLOAT.fullmatch(c) for c in cells):
      result[name] = np.array([float(c) for c in cells], np.float64)
    else:
      result[name] = np.array(cells, str)
  return result


def _finite_1d(values, name: str) -> np.ndarray:
  array = np.asarray(values, np.float64)
  if array.ndim != 1 or array.size == 0:
    raise ValueError(f"{name} must be a non-empty 1-D sequence; got shape {array.shape}.")
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{name} must be finite; got {array[~np.isfinite(array)][:5].tolist()}.")
  return array


def _ages(true_ages, predicted_ages) -> tuple[np.ndarray, np.ndarray]:
  true, predicted = _finite_1d(true_ages, "true_ages"), _finite_1d(predicted_ages, "predicted_ages")
  if true.shape != predicted.shape:
    raise ValueError(
        f"true_ages and predicted_ages must have the same length; got {len(true)} and {len(predicted)}.")
  return true, predicted


def _save(fig, ax, path: str | os.PathLike, title: str) -> None:
  if title:
    ax.set_title(title)
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  with atomic_files.replacing(path) as temporary:
    fig.savefig(temporary, dpi=120, format="png")


def _figure():
  from matplotlib.figure import Figure  # imported here: the CSV functions need no matplotlib

  fig = Figure(figsize=(6.4, 4.8), layout="constrained")
  return fig, fig.add_subplot()


def plot_cumulative_score(path: str | os.PathLike, curves: Mapping[str, Sequence[float]], title: str = "") -> None:
  """CS(theta) curves, one line per label; values are fractions in [0, 1] (``compute()["cs"]``), shown in percent."""
  if not curves:
    raise ValueError("curves must hold at least one curve.")
  fig, ax = _figure()
  for label, values in curves.items():
    cs = _finite_1d(values, f"curves[{label!r}]")
    if cs.min() < 0 or cs.max() > 1:
      raise ValueError(f"curves[{label!r}] must be fractions in [0, 1]; got range [{cs.min()}, {cs.max()}].")
    ax.plot(np.arange(len(cs)), 100 * cs, marker="o", label=label)
  ax.set(xlabel="error level theta (years)", ylabel="cumulative score (%)", ylim=(0, 100))
  ax.xaxis.get_major_locator().set_params(integer=True)
  ax.grid(True)
  ax.legend()
  _save(fig, ax, path, title)


def plot_predicted_vs_true(path: str | os.PathLike, true_ages: Sequence[float], predicted_ages: Sequence[float],
                           title: str = "") -> None:
  """Scatter of predicted against true age with y = x and the MAE in the legend.

  Both axes run from 0 (or the lowest value, if one is negative) to the largest age + 5.
  """
  true, predicted = _ages(true_ages, predicted_ages)
  fig, ax = _figure()
  limit = max(true.max(), predicted.max()) + 5
  low = min(0.0, true.min(), predicted.min())
  mae = np.mean(np.abs(predicted - true))
  ax.scatter(true, predicted, s=8, alpha=0.5, label=f"{len(true)} images, MAE {mae:.2f} years")
  ax.plot([low, limit], [low, limit], color="black", linewidth=1, label="y = x")
  ax.set(xlim=(low, limit), ylim=(low, limit), xlabel="true age (years)", ylabel="predicted age (years)")
  ax.set_aspect("equal")
  ax.grid(True)
  ax.legend(loc="upper left")
  _save(fig, ax, path, title)


def error_by_age_group(true_ages: Sequence[float], predicted_ages: Sequence[float],
                       group_width: int = 10) -> list[tuple[str, int, float]]:
  """``(label, count, MAE)`` per true-age group ``[0, w)``, ``[w, 2w)``, ... (labels "0-9", ...); no empty groups."""
  true, predicted = _ages(true_ages, predicted_ages)
  if not isinstance(group_width, (int, np.integer)) or group_width <= 0:
    raise ValueError(f"group_width must be a positive integer; got {group_width!r}.")
  if true.min() < 0:
    raise ValueError(f"true_ages must be >= 0; got {true.min()}.")
  groups = (true // group_width).astype(np.int64)
  errors = np.abs(predicted - true)
  rows = []
  for g in np.unique(groups).tolist():
    in_group = groups == g
    rows.append((f"{g * group_width}-{(g + 1) * group_width - 1}", int(in_group.sum()), float(errors[in_group].mean())))
  return rows


def plot_error_by_age_group(path: str | os.PathLike, true_ages: Sequence[float], predicted_ages: Sequence[float],
                            group_width: int = 10, title: str = "") -> None:
  """Bar chart of :func:`error_by_age_group`: MAE per true-age group, the number of images on each bar."""
  rows = error_by_age_group(true_ages, predicted_ages, group_width)
  fig, ax = _figure()
  bars = ax.bar([label for label, _, _ in rows], [mae for _, _, mae in rows])
  ax.bar_label(bars, labels=[f"n={count}" for _, count, _ in rows])
  ax.set(xlabel="true age group (years)", ylabel="MAE (years)")
  ax.margins(y=0.1)
  ax.grid(True, axis="y")
  _save(fig, ax, path, title)


__all__ = ["error_by_age_group", "plot_cumulative_score", "plot_error_by_age_group", "plot_predicted_vs_true",
           "read_predictions_csv", "write_predictions_csv"]
