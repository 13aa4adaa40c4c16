"""Ages of the faces in anyone's photographs, by a run's trained model (``run_predict.py``).

For each photograph: read it (EXIF orientation applied, converted to RGB),
find its faces with MTCNN (:mod:`amr_jax.faces.mtcnn`), crop each as the run's
training crop was made, and predict with the run's evaluation step (the same
compiled function ``run_eval.py`` uses, with the run's ``test_time_flip``):

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
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageOps

from amr_jax import atomic_files, errors, workdir_layout
from amr_jax.faces import face_crop, mtcnn
from amr_jax.training import checkpoints, selection

#: The CSV's columns, in order.
COLUMNS = ("file", "face", "x0", "y0", "x1", "y1", "face_score", "age", "age_std", "age_mode", "note")
#: ``--checkpoint`` values; "" is the one the run reports (the selected one if it selects, else the last).
CHECKPOINTS = ("", "last", "selected")


@dataclasses.dataclass
class Model:
  """A run's trained model, ready to predict: its config, which fold and step, and the compiled step."""
  config: Any
  description: str  # e.g. "fold_2 of workdir W, the selected checkpoint (step 120)"
  state: Any  # replicated over the local devices
  eval_step: Callable


def _fold_dir(config, stored_fold: int, workdir: pathlib.Path, fold: int | None) -> tuple[pathlib.Path, str]:
  all_folds = stored_fold == -1 and config.protocol != "splits"
  if not all_folds:
    if fold is not None and fold != stored_fold:
      raise errors.ConfigError(f"--fold={fold}: {workdir} is a run of fold {stored_fold} only; leave --fold out.")
    return workdir, "the run's model"
  folds_dir = workdir / workdir_layout.FOLDS_FOLDER
  trained = (sorted(p.name for p in folds_dir.glob("*") if workdir_layout.checkpoints_dir(p).is_dir())
             if folds_dir.is_dir() else [])
  if fold is None:
    raise errors.ConfigError(f"{workdir} is a run over all folds, one model per fold: choose one with --fold=N "
                             f"(trained: {', '.join(trained) or 'none yet'}).")
  fold_dir = workdir_layout.fold_workdir(config, workdir, fold, all_folds=True)
  if fold_dir.name not in trained:
    raise errors.WorkdirError(f"--fold={fold}: {fold_dir} holds no checkpoint (trained: {', '.join(trained) or 'none'}).")
  return fold_dir, fold_dir.name


def load_model(workdir: str | os.PathLike, fold: int | None = None, checkpoint: str = "") -> Model:
  """The model of ``workdir``'s run (of ``fold``, for a run over all folds) at its last or selected checkpoint.

  A run (or fold) without test metrics did not finish: it was stopped, or its loss diverged, or it is still
  training. Its checkpoint is refused unless ``checkpoint`` names it explicitly, and the description then says so.

  Raises:
    errors.ConfigError: a run over all folds without ``fold``, a bad ``checkpoint``.
    errors.WorkdirError: no such run, fold or checkpoint; an unfinished run without an explicit ``checkpoint``.
  """
  import jax  # pylint: disable=import-outside-toplevel

  from amr_jax.evaluation import evaluate  # pylint: disable=import-outside-toplevel
  from amr_jax.training import train_state  # pylint: disable=import-outside-toplevel

  if checkpoint not in CHECKPOINTS:
    raise errors.ConfigError(f"--checkpoint must be 'last' or 'selected' (or empty: the one the run reports); "
                             f"got {checkpoint!r}.")
  workdir = pathlib.Path(workdir).absolute()
  config = workdir_layout.load(workdir)
  fold_dir, fold_name = _fold_dir(config, workdir_layout.read(workdir)["fold"], workdir, fold)
  kind = checkpoint or selection.reported_checkpoint(config.model_selection)
  directory = (workdir_layout.checkpoints_dir(fold_dir) if kind == "last" else fold_dir / selection.CHECKPOINT_FOLDER)
  store = checkpoints.Checkpoints(directory, max_to_keep=1 if kind == "selected" else config.max_checkpoints_to_keep)
  if store.latest_step() is None:
    hint = (" (the run selects no checkpoint: config.model_selection is 'last')" if kind == "selected"
            and not selection.selects(config.model_selection) else "; train first")
    raise errors.WorkdirError(f"{directory}: no checkpoint{hint}.")
  finished = (fold_dir / workdir_layout.TEST_REPORT / workdir_layout.METRICS_FILE).is_file()
  if not finished and not checkpoint:
    where = workdir if fold_dir == workdir else f"{fold_name} of {workdir}"
    raise errors.WorkdirError(
        f"{where} has no test metrics: the run did not finish (stopped, diverged, or still "
        f"training) and its {kind} checkpoint is step {store.latest_step()}; `python run_eval.py --workdir="
        f"{workdir}` says how far it got. Finish it with its run_train.py command, or predict with that checkpoint "
        f"anyway: --checkpoint={kind}.")
  model = train_state.model(config, axis_name=None)
  template = jax.device_get(train_state.initial_train_state(config, model, train_state.optimizer(config)))
  state = store.restore(template)
  store.close()
  eval_step = jax.pmap(lambda s, b: evaluate.eval_step(s, b, start_age=config.start_age,
                                                       test_time_flip=config.test_time_flip), axis_name="batch")
  description = f"{fold_name} of {workdir}, the {kind} checkpoint (step {int(state.step)})"
  if not finished:
    description += ", from a run that did not finish (no test metrics)"
  return Model(config, description, evaluate.replicate(state), eval_step)


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


def _rgb8(image: PIL.Image.Image) -> np.ndarray:
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
      return _rgb8(image)
  except PIL.UnidentifiedImageError:
    raise errors.DataError("not an image") from None
  except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as error:  # corrupt, or huge
    raise errors.DataError(f"unreadable image ({error})") from None


def prepare_outputs(out: str | os.PathLike, annotate: str | os.PathLike | None = None,
                    photographs: Sequence[pathlib.Path] = ()) -> None:
  """Makes the folders ``out`` and ``annotate`` need, before any work.

  Raises:
    errors.ConfigError: ``out`` is a folder or one of ``photographs``, ``annotate`` a file, or a folder cannot be
      made (the reason given).
  """
  out = pathlib.Path(out)
  if out.is_dir():
    raise errors.ConfigError(f"--out={out} is a folder; give the CSV file to write (e.g. {out / 'ages.csv'}).")
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
  face_score: float | str = ""
  note: str = ""
  crop: np.ndarray | None = None
  prediction: tuple[float, float, float] | None = None

  def cells(self) -> list[str]:
    box = [f"{v:.1f}" for v in self.box] if len(self.box) else ["", "", "", ""]
    age = [f"{self.prediction[0]:.4f}", f"{self.prediction[1]:.4f}", f"{self.prediction[2]:g}"] \
        if self.prediction else ["", "", ""]
    score = f"{self.face_score:.4f}" if isinstance(self.face_score, float) else ""
    return [self.file, str(self.face), *box, score, *age, self.note]


def _rows_of(path: pathlib.Path, image: np.ndarray, crop: str, size: int, detector: mtcnn.Detector) -> list[_Row]:
  name = str(path)
  if crop == "whole":
    height, width = image.shape[:2]
    return [_Row(name, "", (0, 0, width - 1, height - 1), note="whole photograph (the run's crop)",
                 crop=face_crop.whole_image(image, size))]
  found = detector.detect(image)
  if not found:
    return [_Row(name, note="no face found")]
  rows = []
  for index, face in enumerate(found):
    try:
      rows.append(_Row(name, index, face.box, face.score, crop=face_crop.eyes_face_crop(image, face.eyes, size)))
    except errors.DataError as error:
      rows.append(_Row(name, index, face.box, face.score, note=f"not cropped: {error}"))
  return rows


def _predict(model: Model, rows: list[_Row]) -> None:
  from amr_jax.evaluation import evaluate  # pylint: disable=import-outside-toplevel

  todo = [row for row in rows if row.crop is not None]
  if not todo:
    return
  out = evaluate.predict(model.eval_step, model.state, {"image": np.stack([row.crop for row in todo])},
                         model.config.eval_batch_size)
  for i, row in enumerate(todo):
    row.prediction = (float(out["predicted_age"][i]), float(out["distribution_std"][i]), float(out["mode_age"][i]))


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


def predict_photographs(model: Model, inputs: Iterable[str | os.PathLike], out: str | os.PathLike, *,
                        annotate: str | os.PathLike | None = None, detector: mtcnn.Detector | None = None,
                        log: Callable[[str], None] = print, progress_every: float = 10.0) -> dict[str, int]:
  """Writes ``out`` (CSV, :data:`COLUMNS`) for every photograph of ``inputs``; returns counts for the summary.

  ``annotate``: a folder for copies of the photographs with each face's box and age. An annotated copy that cannot
  be written (a full disk) stops the copies, not the predictions; the counts then hold ``"annotation_failure"``,
  the message. A photograph whose reading, detection or prediction fails gets a row whose note says why, and the
  rest go on. Progress is logged every ``progress_every`` seconds.

  Raises:
    errors.Interrupted: Ctrl-C; the rows of the photographs done before it are written to ``out`` first.
  """
  config = model.config
  paths = photograph_paths(inputs)
  log(f"Predicting with {model.description}: {config.model}, {config.image_size} px, crop {config.data.crop!r}"
      f"{', test-time flip' if config.test_time_flip else ''}; {len(paths)} file(s).")
  if config.data.crop == "face":
    log("Note: this run trained on CLAP2016's own face crops; faces here are cropped on their detected eyes, "
        "which the model did not see in training.")
  detector = detector or (mtcnn.default_detector() if config.data.crop != "whole" else None)
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
        image = read_photograph(path)
        rows = _rows_of(path, image, config.data.crop, config.image_size, detector)
        _predict(model, rows)
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
