"""Crops aligned on the eyes MTCNN finds (``config.data.crop = "detected"``), detected once per build and cached.

A dataset decoded with the ``detected`` crop runs :mod:`amr_jax.faces.mtcnn` on
every photograph once and keeps what it found in ``mtcnn_faces.json`` beside
the build (``<data_dir>/<dataset>/<version>/``); later decodes, other image
sizes and other processes read it. The cache records the detector's settings
and each photograph's size: a photograph whose entry is missing or does not
match is detected again.

The rule for each photograph (counted in the log):

- one face: the crop aligned on its two eye landmarks, exactly as
  :func:`amr_jax.faces.face_crop.aligned_face_crop` aligns on FG-NET's annotated
  pupils (same ``eye_distance`` and ``eye_y``);
- several faces: the same on :func:`amr_jax.faces.mtcnn.main_face`'s (the largest,
  penalised by its distance from the centre);
- no face: the whole photograph squashed to a square (the ``whole`` crop).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Callable, Sequence

import numpy as np

from amr_jax import atomic_files, errors
from amr_jax.faces import face_crop, mtcnn, mtcnn_networks

CACHE_NAME = "mtcnn_faces.json"
#: What a photograph with one face, several, or none gives.
RULES = ("one face", "several faces: the main one", "no face: the whole photograph")


def _settings(detector: mtcnn.Detector) -> dict:
  return {"weights": mtcnn_networks.PACKAGE, "min_face_size": detector.min_face_size,
          "scale_factor": detector.scale_factor, "thresholds": list(detector.thresholds), "max_side": detector.max_side}


def _to_json(found: Sequence[mtcnn.Face]) -> list[dict]:
  return [{"box": [float(v) for v in face.box], "score": face.score,
           "landmarks": [[float(x), float(y)] for x, y in face.landmarks]} for face in found]


def _from_json(entries: list[dict]) -> list[mtcnn.Face]:
  return [mtcnn.Face(box=np.asarray(e["box"], np.float64), score=float(e["score"]),
                     landmarks=np.asarray(e["landmarks"], np.float64)) for e in entries]


def _read_cache(path: pathlib.Path, settings: dict) -> dict:
  if not path.is_file():
    return {}
  try:
    stored = json.loads(path.read_text())
    if stored.get("detector") != settings:
      return {}
    return stored["images"]
  except (ValueError, KeyError, TypeError, AttributeError):
    return {}  # unreadable (an older format, a hand edit): detected again and rewritten


def detect_all(images: Sequence[np.ndarray], names: Sequence[str], cache_dir: str | os.PathLike, *,
               detector: mtcnn.Detector | None = None,
               log: Callable[[str], None] = print) -> list[list[mtcnn.Face]]:
  """The faces of each photograph, read from ``cache_dir/mtcnn_faces.json`` or detected and added to it.

  ``names`` identify the photographs (file names, unique). Progress is logged every 100 photographs detected.

  Raises:
    ValueError: ``images`` and ``names`` of different lengths, or repeated names.
  """
  if len(images) != len(names) or len(set(names)) != len(names):
    raise ValueError(f"detect_all needs one unique name per image; got {len(images)} images, {len(names)} names "
                     f"({len(set(names))} distinct).")
  detector = detector or mtcnn.default_detector()
  path = pathlib.Path(cache_dir) / CACHE_NAME
  settings = _settings(detector)
  cached = _read_cache(path, settings)
  found, missing = [], []
  for index, (image, name) in enumerate(zip(images, names)):
    entry = cached.get(name)
    if entry is not None and entry.get("shape") == list(image.shape[:2]):
      found.append(_from_json(entry["faces"]))
    else:
      found.append(None)
      missing.append(index)
  if missing:
    log(f"Detecting faces (MTCNN) in {len(missing)} of {len(images)} photographs; results go to {path}.")
    start = time.monotonic()
    for done, index in enumerate(missing, start=1):
      found[index] = detector.detect(images[index])
      cached[names[index]] = {"shape": list(images[index].shape[:2]), "faces": _to_json(found[index])}
      if done % 100 == 0 or done == len(missing):
        log(f"  {done}/{len(missing)} photographs, {time.monotonic() - start:.0f} s")
    try:
      atomic_files.write_text(path, json.dumps({"detector": settings, "images": cached}) + "\n")
    except OSError as error:  # a read-only build: the faces are still used, only not kept
      log(f"  could not write {path} ({error}); the faces will be detected again next time.")
  return found


@dataclasses.dataclass(frozen=True)
class DetectedCrops:
  """The crops of :func:`crops`, with the rule each photograph followed (an index into :data:`RULES`)."""
  images: np.ndarray
  rules: np.ndarray

  def counts(self) -> dict[str, int]:
    """``{rule: photographs}`` for the log."""
    return {rule: int(np.sum(self.rules == i)) for i, rule in enumerate(RULES)}


def crop(image: np.ndarray, found: Sequence[mtcnn.Face], size: int, *, eye_distance: float = 0.35,
         eye_y: float = 0.4) -> tuple[np.ndarray, int]:
  """``(crop, rule)`` for one photograph and its faces, by the module's rule."""
  face = mtcnn.main_face(found, image.shape[0], image.shape[1])
  if face is None:
    return face_crop.whole_image(image, size), 2
  try:
    return face_crop.eyes_face_crop(image, face.eyes, size, eye_distance=eye_distance, eye_y=eye_y), int(len(found) > 1)
  except errors.DataError:  # both eye landmarks at one point: nothing to align on
    return face_crop.whole_image(image, size), 2


def crops(images: Sequence[np.ndarray], found: Sequence[Sequence[mtcnn.Face]], size: int, *,
          eye_distance: float = 0.35, eye_y: float = 0.4) -> DetectedCrops:
  """The ``[N, size, size, 3]`` uint8 crops of photographs and their faces (:func:`detect_all`)."""
  made = [crop(image, faces_found, size, eye_distance=eye_distance, eye_y=eye_y)
          for image, faces_found in zip(images, found)]
  return DetectedCrops(np.stack([c for c, _ in made]), np.array([r for _, r in made], np.int32))


def summary(made: DetectedCrops) -> str:
  """One log line: how many photographs followed each rule."""
  return "Detected-eye crops: " + ", ".join(f"{count} {rule}" for rule, count in made.counts().items()) + "."
