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
import dataclasses
import io
import math
import numbers
import os
import pathlib
import re
from collections.abc import Mapping, Sequence

import numpy as np

from amr_jax import atomic_files


@dataclasses.dataclass(frozen=True)
class LabelScale:
  """What the labels are, as the reports name them: ``name`` and ``unit`` (the axes, the legends) and the step of
  CS(theta)'s thresholds in that unit, ``cs_step`` (CS(k) is the fraction within ``k * cs_step``).

  Ages are in years with thresholds 0, 1, ..., 10 (``AGES``, the default); attractiveness scores on a 1-5 scale
  suit thresholds of a tenth of a point. The age groups of :func:`plot_error_by_age_group` are ten thresholds wide.
  """
  name: str = "age"
  unit: str = "years"
  cs_step: float = 1.0

  def __post_init__(self):
    for field in ("name", "unit"):
      if not isinstance(getattr(self, field), str) or not getattr(self, field).strip():
        raise ValueError(f"LabelScale.{field} must be a non-empty string; got {getattr(self, field)!r}.")
    step = self.cs_step
    if isinstance(step, bool) or not isinstance(step, numbers.Real) or not 0 < step < math.inf:
      raise ValueError(f"LabelScale.cs_step must be a finite number > 0; got {step!r}.")

  @classmethod
  def of(cls, config) -> "LabelScale":
    """The scale a run's config names (``label_name``, ``label_unit``, ``cs_step``), ages in years where absent."""
    return cls(config.get("label_name", cls.name), config.get("label_unit", cls.unit),
               config.get("cs_step", cls.cs_step))

  def threshold(self, k: int) -> float:
    """CS(k)'s threshold, ``k * cs_step``, as a number to print (5 * 0.1 is 0.5)."""
    return float(f"{k * self.cs_step:.12g}")

  def cs_name(self, k: int = 5) -> str:
    """How logs and tables name CS(k): "CS(5)" for ages, "CS(0.5)" for a step of 0.1."""
    return f"CS({self.threshold(k):g})"

  @property
  def group_width(self) -> float:
    """The width of :func:`error_by_age_group`'s groups: ten thresholds (a decade of ages)."""
    return self.threshold(10)


AGES = LabelScale()

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


def plot_cumulative_score(path: str | os.PathLike, curves: Mapping[str, Sequence[float]], title: str = "", *,
                          scale: LabelScale = AGES) -> None:
  """CS(theta) curves, one line per label; values are fractions in [0, 1] (``compute()["cs"]``), shown in percent,
  the k-th at theta ``k * scale.cs_step``."""
  if not curves:
    raise ValueError("curves must hold at least one curve.")
  fig, ax = _figure()
  for label, values in curves.items():
    cs = _finite_1d(values, f"curves[{label!r}]")
    if cs.min() < 0 or cs.max() > 1:
      raise ValueError(f"curves[{label!r}] must be fractions in [0, 1]; got range [{cs.min()}, {cs.max()}].")
    ax.plot([scale.threshold(k) for k in range(len(cs))], 100 * cs, marker="o", label=label)
  ax.set(xlabel=f"error level theta ({scale.unit})", ylabel="cumulative score (%)", ylim=(0, 100))
  if float(scale.cs_step).is_integer():
    ax.xaxis.get_major_locator().set_params(integer=True)
  ax.grid(True)
  ax.legend()
  _save(fig, ax, path, title)


def plot_predicted_vs_true(path: str | os.PathLike, true_ages: Sequence[float], predicted_ages: Sequence[float],
                           title: str = "", *, scale: LabelScale = AGES) -> None:
  """Scatter of predicted against true age (or ``scale.name``) with y = x and the MAE in the legend.

  Both axes run from 0 (or the lowest value, if one is negative) to the largest value + CS(5)'s threshold (5 years).
  """
  true, predicted = _ages(true_ages, predicted_ages)
  fig, ax = _figure()
  limit = max(true.max(), predicted.max()) + scale.threshold(5)
  low = min(0.0, true.min(), predicted.min())
  mae = np.mean(np.abs(predicted - true))
  ax.scatter(true, predicted, s=8, alpha=0.5, label=f"{len(true)} images, MAE {mae:.2f} {scale.unit}")
  ax.plot([low, limit], [low, limit], color="black", linewidth=1, label="y = x")
  ax.set(xlim=(low, limit), ylim=(low, limit), xlabel=f"true {scale.name} ({scale.unit})",
         ylabel=f"predicted {scale.name} ({scale.unit})")
  ax.set_aspect("equal")
  ax.grid(True)
  ax.legend(loc="upper left")
  _save(fig, ax, path, title)


def error_by_age_group(true_ages: Sequence[float], predicted_ages: Sequence[float],
                       group_width: float = 10) -> list[tuple[str, int, float]]:
  """``(label, count, MAE)`` per true-age group ``[0, w)``, ``[w, 2w)``, ...; no empty groups.

  A whole width of 2 or more labels its groups as years are ("0-9", "10-19", ...); another width as intervals
  ("[1, 2)", "[2, 3)", ... for scores grouped by the point).
  """
  true, predicted = _ages(true_ages, predicted_ages)
  if isinstance(group_width, bool) or not isinstance(group_width, numbers.Real) or not 0 < group_width < math.inf:
    raise ValueError(f"group_width must be a finite number > 0; got {group_width!r}.")
  if true.min() < 0:
    raise ValueError(f"true_ages must be >= 0; got {true.min()}.")
  groups = (true // group_width).astype(np.int64)
  errors = np.abs(predicted - true)
  whole = float(group_width).is_integer() and group_width >= 2
  rows = []
  for g in np.unique(groups).tolist():
    in_group = groups == g
    low, high = (float(f"{value * group_width:.12g}") for value in (g, g + 1))
    label = f"{low:g}-{high - 1:g}" if whole else f"[{low:g}, {high:g})"
    rows.append((label, int(in_group.sum()), float(errors[in_group].mean())))
  return rows


def plot_error_by_age_group(path: str | os.PathLike, true_ages: Sequence[float], predicted_ages: Sequence[float],
                            group_width: float | None = None, title: str = "", *, scale: LabelScale = AGES) -> None:
  """Bar chart of :func:`error_by_age_group`: MAE per true-age group, the number of images on each bar.

  ``group_width``: default ``scale.group_width`` (10 years for ages).
  """
  rows = error_by_age_group(true_ages, predicted_ages, scale.group_width if group_width is None else group_width)
  fig, ax = _figure()
  bars = ax.bar([label for label, _, _ in rows], [mae for _, _, mae in rows])
  ax.bar_label(bars, labels=[f"n={count}" for _, count, _ in rows])
  ax.set(xlabel=f"true {scale.name} group ({scale.unit})", ylabel=f"MAE ({scale.unit})")
  ax.margins(y=0.1)
  ax.grid(True, axis="y")
  _save(fig, ax, path, title)


__all__ = ["AGES", "LabelScale", "error_by_age_group", "plot_cumulative_score", "plot_error_by_age_group",
           "plot_predicted_vs_true",
           "read_predictions_csv", "write_predictions_csv"]
