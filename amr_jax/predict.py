"""A CSV of the ages of the faces in photographs, and annotated copies (``run_predict.py``).

Each photograph is read upright as 8-bit RGB (:mod:`amr_jax.photographs`) and given to an
:class:`amr_jax.age_estimator.AgeEstimator`, which finds its faces with MTCNN and crops each as its model
expects:

- the default, dlib's pretrained age network: a 64 px chip aligned on the five landmarks as dlib aligns its
  own (:func:`amr_jax.faces.face_chip.dlib_chip`);
- a run's model (``--workdir``), with the run's evaluation step (the same compiled function ``run_eval.py``
  uses, with the run's ``test_time_flip``):

  - ``aligned`` and ``detected`` runs: each face aligned on its detected eyes
    (:func:`amr_jax.faces.face_crop.eyes_face_crop`, the training crop's geometry);
  - ``face`` runs (CLAP2016's own crops, whose maker is not published): the same
    eye-aligned crop, which is not the crop the model saw (said once in the log);
  - ``whole`` runs: the whole photograph squashed to a square, one row per
    photograph, no detection.

Every photograph gets at least one CSV row; a file that cannot be read, is
not an image, or holds no face gets one row whose ``note`` says so, and the
run goes on.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import pathlib
import time
from typing import Callable, Iterable, Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw

from amr_jax import age_estimator, atomic_files, errors, photographs

#: The CSV's columns, in order.
COLUMNS = ("file", "face", "x0", "y0", "x1", "y1", "face_score", "age", "age_std", "age_mode", "note")
def prepare_outputs(out: str | os.PathLike, annotate: str | os.PathLike | None = None,
                    photographs: Sequence[pathlib.Path] = ()) -> None:
  """Makes the folders ``out`` and ``annotate`` need, before any work.

  Raises:
    errors.ConfigError: ``out`` is a folder, something else than a regular file, or one of ``photographs``;
      ``annotate`` a file; or a folder cannot be made (the reason given).
  """
  out = pathlib.Path(out)
  if out.is_dir():
    raise errors.ConfigError(f"--out={out} is a folder; give the CSV file to write (e.g. {out / 'ages.csv'}).")
  if (out.exists() or out.is_symlink()) and not (out.is_file() and not out.is_symlink()):
    # The CSV is written whole and renamed into place, which would replace a device, a pipe or a link itself.
    raise errors.ConfigError(f"--out={out} is not a regular file (a device, a pipe or a link); give a path to a "
                             "CSV file.")
  if out.exists() and any(out.resolve() == path.resolve() for path in photographs):
    raise errors.ConfigError(f"--out={out} is one of the photographs to predict; writing the CSV there would "
                             "replace it. Give another file (e.g. --out=ages.csv).")
  if annotate and pathlib.Path(annotate).exists() and not pathlib.Path(annotate).is_dir():
    raise errors.ConfigError(f"--annotate={annotate} is a file; give a folder for the annotated copies.")
  for flag, folder in (("--out", out.parent), ("--annotate", pathlib.Path(annotate) if annotate else None)):
    if folder is not None:
      try:
        folder.mkdir(parents=True, exist_ok=True)
      except OSError as error:
        raise errors.ConfigError(f"{flag}: cannot make the folder {folder} ({error.strerror}).") from None


@dataclasses.dataclass
class _Row:
  file: str
  face: int | str = ""
  box: Sequence[float] = ()
  face_score: float = float("nan")
  note: str = ""
  prediction: tuple[float, float, float] | None = None

  def cells(self) -> list[str]:
    box = [f"{v:.1f}" for v in self.box] if len(self.box) else ["", "", "", ""]
    age = [f"{self.prediction[0]:.4f}", f"{self.prediction[1]:.4f}", f"{self.prediction[2]:g}"] \
        if self.prediction else ["", "", ""]
    score = "" if np.isnan(self.face_score) else f"{self.face_score:.4f}"
    return [self.file, str(self.face), *box, score, *age, self.note]


def _rows_of(path: pathlib.Path, faces: Sequence[age_estimator.FaceAge]) -> list[_Row]:
  if not faces:
    return [_Row(str(path), note="no face found")]
  whole = len(faces) == 1 and faces[0].landmarks is None
  return [_Row(str(path), "" if whole else index, face.box, face.score, face.note,
               None if np.isnan(face.age) else (face.age, face.age_std, face.mode_age))
          for index, face in enumerate(faces)]


def _annotate(image: np.ndarray, rows: list[_Row], path: pathlib.Path) -> None:
  picture = PIL.Image.fromarray(image)
  draw = PIL.ImageDraw.Draw(picture)
  width = max(2, round(max(image.shape[:2]) / 300))
  for row in rows:
    if row.prediction is None or not len(row.box):
      continue
    x0, y0, x1, y1 = (float(v) for v in row.box)
    draw.rectangle([x0, y0, x1, y1], outline=(255, 40, 40), width=width)
    label = f"{row.prediction[0]:.1f}"
    draw.text((x0 + width, max(0.0, y0 - 12 * width)), label, fill=(255, 255, 0),
              font_size=max(12, 10 * width), stroke_width=max(1, width // 2), stroke_fill=(0, 0, 0))
  encoded = io.BytesIO()  # Pillow's JPEG encoder writes to a file's descriptor and ignores a short write (a full
  picture.save(encoded, format="JPEG", quality=92)  # disk): it would leave a cut copy. Python's write raises.
  with atomic_files.replacing(path) as temporary:  # a failure leaves no half-written copy
    temporary.write_bytes(encoded.getvalue())


def _annotated_path(folder: pathlib.Path, source: pathlib.Path, taken: set[str]) -> pathlib.Path:
  name, count = f"{source.stem}_ages.jpg", 1
  while name in taken:
    count += 1
    name = f"{source.stem}_ages_{count}.jpg"
  taken.add(name)
  return folder / name


def _write_csv(out: pathlib.Path, lines: list[list[str]], log: Callable[[str], None]) -> None:
  """The CSV whole or not at all: an earlier file at ``out`` is replaced only by a complete one, and said so."""
  text = io.StringIO(newline="")
  writer = csv.writer(text)
  writer.writerow(COLUMNS)
  writer.writerows(lines)
  existed = out.exists()
  try:
    atomic_files.write_text(out, text.getvalue())
  except OSError as error:
    kept = "the earlier file there is unchanged" if existed else "nothing was written there"
    raise errors.ConfigError(f"--out={out}: the CSV could not be written ({error.strerror or error}); {kept}. "
                             f"The {len(lines)} row(s) were lost: free space or choose another --out, then run "
                             "again.") from None
  if existed:
    log(f"{out}: replaced the earlier file there.")


def _without_annotated_copies(inputs: Sequence[str | os.PathLike], paths: list[pathlib.Path],
                              annotate: str | os.PathLike | None, log: Callable[[str], None]) -> list[pathlib.Path]:
  """``paths`` less the files of the annotation folder (an earlier run's copies) where it lies inside a folder of
  ``inputs``, unless they were named one by one. Where the annotation folder, or a folder in it, is itself one of
  ``inputs`` (annotating beside the photographs), every file is kept."""
  if not annotate or not pathlib.Path(annotate).is_dir():
    return paths
  folder = pathlib.Path(annotate).resolve()
  folders = [pathlib.Path(item).resolve() for item in inputs if pathlib.Path(item).is_dir()]
  if any(item.is_relative_to(folder) for item in folders) or not any(folder.is_relative_to(item) for item in folders):
    return paths
  named = {pathlib.Path(item).resolve() for item in inputs if pathlib.Path(item).is_file()}
  kept = [path for path in paths if path.resolve() in named or not path.resolve().is_relative_to(folder)]
  if len(kept) < len(paths):
    log(f"--annotate={annotate}: its {len(paths) - len(kept)} file(s) in the folders given (annotated copies) are "
        "not predicted; name them to predict them.")
    if not kept:
      raise errors.DataError("every file found is in the --annotate folder; nothing to predict.")
  return kept


def predict_photographs(estimator: age_estimator.AgeEstimator, inputs: Iterable[str | os.PathLike],
                        out: str | os.PathLike, *, annotate: str | os.PathLike | None = None,
                        log: Callable[[str], None] = print, progress_every: float = 10.0) -> dict[str, int]:
  """Writes ``out`` (CSV, :data:`COLUMNS`) with ``estimator``'s ages for every photograph of ``inputs``; returns
  counts for the summary.

  ``annotate``: a folder for copies of the photographs with each face's box and age. An annotated copy that cannot
  be written (a full disk) stops the copies, not the predictions; the counts then hold ``"annotation_failure"``,
  the message. Files of that folder found in a folder of ``inputs`` (an earlier run's copies) are left out. A
  photograph whose reading, detection or prediction fails gets a row whose note says why, and the
  rest go on. Progress is logged every ``progress_every`` seconds.

  Raises:
    errors.Interrupted: Ctrl-C; the rows of the photographs done before it are written to ``out`` first.
  """
  inputs = list(inputs)
  paths = _without_annotated_copies(inputs, photographs.photograph_paths(inputs), annotate, log)
  log(f"Predicting with {estimator.description}; {len(paths)} file(s).")
  for note in estimator.notes:
    log(note)
  prepare_outputs(out, annotate, paths)
  annotate_dir = pathlib.Path(annotate) if annotate else None
  # A photograph in the annotation folder keeps its name: no copy is written over an input.
  taken = {path.name for path in paths if annotate_dir and path.parent.resolve() == annotate_dir.resolve()}
  replaced = 0
  counts = {"files": len(paths), "faces": 0, "no_face": 0, "bad": 0, "failed": 0}
  lines, start, shown = [], time.monotonic(), time.monotonic()
  try:
    for number, path in enumerate(paths, start=1):
      try:
        image = photographs.read_photograph(path)
        rows = _rows_of(path, estimator.predict(image))
      except errors.DataError as error:
        counts["bad"] += 1
        log(f"{path}: {error}; skipped.")
        lines.append(_Row(str(path), note=str(error)).cells())
      except Exception as error:  # pylint: disable=broad-except  # one photograph's failure is its row's note
        counts["failed"] += 1
        note = f"failed: {type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        log(f"{path}: {note}; skipped.")
        lines.append(_Row(str(path), note=note).cells())
      else:
        counts["faces"] += sum(row.prediction is not None for row in rows)
        if rows[0].note == "no face found":
          counts["no_face"] += 1
          log(f"{path}: no face found.")
        lines += [row.cells() for row in rows]
        if annotate_dir:
          target = _annotated_path(annotate_dir, path, taken)
          try:
            existed = target.exists()
            _annotate(image, rows, target)
            replaced += existed
          except OSError as error:  # a full disk, say: the predictions still go to the CSV
            counts["annotation_failure"] = (f"{target}: the annotated copy could not be written "
                                            f"({error.strerror or error}); no more were made after it")
            log(f"{counts['annotation_failure']}; the predictions go on.")
            annotate_dir = None
      if time.monotonic() - shown >= progress_every and number < len(paths):
        shown = time.monotonic()
        log(f"  {number}/{len(paths)} files, {counts['faces']} faces, {shown - start:.0f} s")
  except KeyboardInterrupt:  # Ctrl-C: the photographs done so far keep their rows
    done = len({line[0] for line in lines})
    if not lines:
      raise errors.Interrupted("before the first photograph was done; nothing written.") from None
    _write_csv(pathlib.Path(out), lines, log)
    raise errors.Interrupted(f"after {done} of {len(paths)} files; their {len(lines)} row(s) are in {out} (the "
                             "photographs after them have none).") from None
  _write_csv(pathlib.Path(out), lines, log)
  if replaced:
    log(f"{annotate_dir}: {replaced} annotated copies replaced earlier files of the same name.")
  failed = f", {counts['failed']} failed (see their notes)" if counts["failed"] else ""
  log(f"{counts['files']} file(s): {counts['faces']} face(s) predicted, {counts['no_face']} without a face, "
      f"{counts['bad']} unreadable{failed} -> {out}" + (f"; annotated copies in {annotate_dir}" if annotate_dir else ""))
  return counts
