"""A slice's finished folds, packed on one machine and pooled on another: ``run_eval.py --workdir=W --pack=FILE``.

A run's folds may be trained in slices on machines that share no disk (an accelerator lent for minutes, whose
outputs come back through a small folder). What the pool needs of a finished fold is its reports, not its
checkpoints: :func:`pack` writes them into one ``.tar.gz`` (a few kB a fold), with the run's ``config.json`` and,
per fold, ``packed.json`` (the step it was trained to). Unpacked into the run's workdir elsewhere (``tar -xz
--skip-old-files -f FILE -C W`` keeps every file already there), ``run_eval.py --workdir=W`` pools those folds with
its own (:func:`read_reports`): a packed fold counts as finished when its step is the one the run's config gives it, and
its config must be the run's. A pool that holds a packed fold reads every fold's predictions from its report
(four decimals), its own folds' too, so that all are pooled alike.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import tarfile
from typing import Any

from amr_jax import atomic_files, errors, workdir_layout

#: The largest archive written, 16 MB, the largest file the device tool returns.
MAX_BYTES = 16 * 2**20


def _fold_files(fold_dir: pathlib.Path) -> list[pathlib.Path]:
  test = fold_dir / workdir_layout.TEST_REPORT
  names = [fold_dir / workdir_layout.CONFIG_FILE, test / workdir_layout.PREDICTIONS_FILE,
           test / workdir_layout.METRICS_FILE, test / workdir_layout.LAST_STEP_PREDICTIONS_FILE]
  return [path for path in names if path.is_file()]


def _reached_step(fold_dir: pathlib.Path) -> int | None:
  from amr_jax.training import checkpoints  # pylint: disable=import-outside-toplevel

  step = checkpoints.latest_step_on_disk(workdir_layout.checkpoints_dir(fold_dir))
  return step if step is not None else packed_step(fold_dir)


def pack(workdir: str | os.PathLike, archive: str | os.PathLike) -> list[str]:
  """Writes ``archive`` (``.tar.gz``) with the reports of every fold of ``workdir`` that has a test report; returns
  the folds' names.

  Raises:
    errors.WorkdirError: not a run over several folds, or no fold with a test report.
    errors.ConfigError: ``archive`` exists (it is never replaced), is not named ``.tar.gz``, would lie below a
      file, or would exceed :data:`MAX_BYTES`.
  """
  workdir, archive = pathlib.Path(workdir), pathlib.Path(archive)
  if archive.exists():
    raise errors.ConfigError(f"--pack={archive} exists; give a new file (an archive is never replaced).")
  if not archive.name.endswith(".tar.gz"):
    raise errors.ConfigError(f"--pack={archive}: name the archive FILE.tar.gz (a gzip-compressed tar is written).")
  folds_dir = workdir / workdir_layout.FOLDS_FOLDER
  for needed in (workdir / workdir_layout.CONFIG_FILE, folds_dir):
    if not needed.exists():
      raise errors.WorkdirError(f"{workdir}: not a run over several folds (it has no {needed.name}); --pack packs "
                                "the finished folds of such a run.")
  finished = sorted(p for p in folds_dir.glob("*")
                    if (p / workdir_layout.TEST_REPORT / workdir_layout.METRICS_FILE).is_file())
  if not finished:
    raise errors.WorkdirError(f"{workdir}: no fold has a test report yet; train first.")
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
    tar.add(workdir / workdir_layout.CONFIG_FILE, arcname=workdir_layout.CONFIG_FILE)
    for fold_dir in finished:
      for path in _fold_files(fold_dir):
        tar.add(path, arcname=path.relative_to(workdir).as_posix())
      marker = json.dumps({"step": _reached_step(fold_dir)}).encode()
      info = tarfile.TarInfo(f"{workdir_layout.FOLDS_FOLDER}/{fold_dir.name}/{workdir_layout.PACKED_FILE}")
      info.size = len(marker)
      tar.addfile(info, io.BytesIO(marker))
  data = buffer.getvalue()
  if len(data) > MAX_BYTES:
    raise errors.ConfigError(f"--pack: the {len(finished)} folds' reports take {len(data) / 2**20:.1f} MB packed, more "
                             f"than {MAX_BYTES / 2**20:.0f} MB; pack fewer folds (a smaller --config.folds slice a "
                             "workdir).")
  try:
    archive.parent.mkdir(parents=True, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    raise errors.ConfigError(f"--pack={archive}: a file stands where its folder would be; give a path in a "
                             "folder.") from None
  with atomic_files.replacing(archive) as temporary:  # whole or not at all
    temporary.write_bytes(data)
  return [fold_dir.name for fold_dir in finished]


def packed_step(fold_dir: pathlib.Path) -> int | None:
  """The step a packed fold was trained to, or None for a fold that was not packed."""
  path = fold_dir / workdir_layout.PACKED_FILE
  if not path.is_file():
    return None
  try:
    return int(json.loads(path.read_text())["step"])
  except (ValueError, KeyError, TypeError, json.JSONDecodeError) as error:
    raise errors.WorkdirError(f"{path}: not a packed fold's marker ({error}); unpack the fold again.") from None


def check_config(fold_dir: pathlib.Path, config) -> None:
  """A packed fold must be of the run it is pooled with: its config may differ in where and how it ran only.

  Raises:
    errors.WorkdirError: naming the fold and each field that differs.
  """
  stored = workdir_layout.read(fold_dir)
  if stored is None:
    raise errors.WorkdirError(f"{fold_dir}: a packed fold without its {workdir_layout.CONFIG_FILE}; unpack it again.")
  refused, _ = workdir_layout.differences(stored, config, workdir_layout.RESUME_FIELDS)
  if refused:
    raise errors.WorkdirError(f"{fold_dir}: a packed fold of another run: " + "; ".join(refused[:5])
                              + (f"; and {len(refused) - 5} more" if len(refused) > 5 else "") + ".")


def read_reports(fold_dir: pathlib.Path, selects: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
  """``(test predictions, the last step's test predictions or None)`` of a fold, from its report's files.

  Raises:
    errors.WorkdirError: a file the pool needs is missing or unreadable.
  """
  from amr_jax.evaluation import reports  # pylint: disable=import-outside-toplevel

  test = fold_dir / workdir_layout.TEST_REPORT
  files = [test / workdir_layout.PREDICTIONS_FILE] + ([test / workdir_layout.LAST_STEP_PREDICTIONS_FILE] if selects
                                                      else [])
  tables = []
  for path in files:
    try:
      table = reports.read_predictions_csv(path)
    except (OSError, ValueError) as error:
      raise errors.WorkdirError(f"{path}: the pool needs it ({error}); evaluate the fold again where it was "
                                "trained, or pack it again.") from None
    table.pop("abs_error", None)  # derived from the others; the pool computes it again
    tables.append(table)
  return tables[0], (tables[1] if selects else None)


__all__ = ["MAX_BYTES", "check_config", "pack", "packed_step", "read_reports"]
