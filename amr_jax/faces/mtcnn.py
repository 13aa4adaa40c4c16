"""Faces and their five landmarks in a photograph: MTCNN's cascade on Flax networks.

``detect(image)`` returns one :class:`Face` per face found in an RGB uint8
``[H, W, 3]`` photograph: its box ``(x0, y0, x1, y1)`` in pixels, O-Net's face
probability as its score, and five landmarks ``[5, 2]`` as ``(x, y)`` pixels in
MTCNN's order (:data:`LANDMARKS`: the eye on the image's left, the other eye,
the nose, the mouth corner on the image's left, the other corner).

The cascade is the ``mtcnn==1.0.0`` package's (``mtcnn/stages/``), step for
step, so that both find the same faces:

1. an image pyramid: scales ``(12 / min_face_size) * scale_factor**k``, each
   level the photograph resized by area averaging (TensorFlow's ``AREA``);
2. P-Net on each level; windows scoring above ``thresholds[0]`` become boxes
   (12 px windows at stride 2, moved by P-Net's offsets, mapped back to the
   photograph), suppressed per level at IoU 0.5 and then across levels at 0.7,
   and made square;
3. R-Net on 24 px crops of those boxes (bilinear, TensorFlow's
   ``crop_and_resize``, zero outside the photograph); boxes scoring above
   ``thresholds[1]`` are moved by R-Net's offsets, suppressed at IoU 0.7 and
   made square;
4. O-Net on 48 px crops: landmarks from the crop's box, boxes moved by O-Net's
   offsets, kept above ``thresholds[2]``, suppressed at 0.7 of the smaller
   box's area; boxes (not landmarks) are clipped to the photograph.

Suppression is the package's: a box is dropped when any higher-scoring box
overlaps it beyond the threshold, whether or not that box was itself dropped
(greedy NMS would only let kept boxes suppress).

The networks run jitted on batches (:mod:`amr_jax.faces.mtcnn_networks`); the box
arithmetic between them runs in NumPy float64, as in the package. Compilation
is bounded by padding to a few sizes, :func:`bucket`'s 16, 20, 24, 32, 40, 48,
64, ... (1, 1.25 and 1.5 times each power of two): the photograph is
zero-padded to a square of such a side, and each pyramid level, resized from
it inside the jitted P-Net call by two area-resize matrices, to another
(P-Net ignores the padding: ``valid_size``); R-Net and O-Net crop from the
padded photograph in batches padded to a power of two from 16. So P-Net
compiles once per (photograph side, level side) pair and the crops once per
(photograph side, batch size) pair, whatever the photographs' exact shapes: a
photograph whose padded side was seen before compiles nothing (all 1002 FG-NET
photographs, longest sides 361 to 772 px: 62 P-Net and 21 crop shapes).

A photograph longer than ``max_side`` (1536 px by default) is searched on a
copy shrunk to that longest side by area averaging (Pillow's ``BOX``), and the
boxes and landmarks found are mapped back to the photograph's own pixels. So
the cascade's time and memory are bounded whatever the photograph's size (what
remains grows with its pixels: shrinking it, and whatever the caller does with
it; ``benchmarks/large_photographs.py`` measures both), at the price that the
smallest face found grows with the photograph: ``min_face_size * longest side /
max_side`` pixels (52 px in a 4000 px photograph). Photographs up to
``max_side`` are searched as they are, as the package does.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from amr_jax.faces import mtcnn_networks

#: The five landmarks' order; "left" is on the image's left.
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclasses.dataclass(frozen=True, eq=False)
class Face:
  """One detected face. ``box``: ``(x0, y0, x1, y1)`` pixels; ``landmarks``: ``[5, 2]`` ``(x, y)`` pixels."""
  box: np.ndarray
  score: float
  landmarks: np.ndarray

  @property
  def eyes(self) -> np.ndarray:
    """``[2, 2]``: the eye on the image's left, then the other, as ``(x, y)``."""
    return self.landmarks[:2]


def bucket(size: int, smallest: int = 16) -> int:
  """The padded size for ``size``: the smallest of 1, 1.25 or 1.5 times a power of two, at least ``smallest``."""
  size = max(int(size), smallest)
  power = 2 ** max(0, math.floor(math.log2(size)))
  for candidate in (power, power * 5 // 4, power * 3 // 2, 2 * power):
    if candidate >= size:
      return candidate
  raise AssertionError(size)  # unreachable: 2 * power > size


def _batch_bucket(count: int) -> int:
  return max(16, 1 << max(0, count - 1).bit_length())


def scale_pyramid(height: int, width: int, min_face_size: float = 20, scale_factor: float = 0.709) -> np.ndarray:
  """The pyramid's scales, by the package's formula (``mtcnn.utils.images.build_scale_pyramid``)."""
  count = round(-((np.log(min(width, height) / 12) / np.log(scale_factor)) + 1))
  return (12 / min_face_size) * scale_factor ** np.arange(max(count, 0))


@functools.lru_cache(maxsize=4096)
def area_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """``[out_size, in_size]`` weights of TensorFlow's area resize along one axis (rows sum to 1).

  Output pixel ``i`` averages the input interval ``[i * s, (i + 1) * s)``, ``s = in_size / out_size``, each
  input pixel weighted by its overlap (TensorFlow's ``ResizeArea`` without corner alignment: interval ends in
  float32, an index past the end read as the last pixel).
  """
  scale = np.float32(in_size) / np.float32(out_size)
  steps = np.arange(out_size + 1, dtype=np.float32) * scale
  start, end = steps[:-1, None].astype(np.float64), steps[1:, None].astype(np.float64)
  pixels = np.arange(in_size + 1)[None, :]  # one past the end: float32 ends may overshoot in_size
  overlap = np.maximum(0, np.minimum(pixels + 1, end) - np.maximum(pixels, start))
  overlap[:, in_size - 1] += overlap[:, in_size]
  matrix = (overlap[:, :in_size] / scale).astype(np.float32)
  matrix.setflags(write=False)  # shared by every caller through the cache
  return matrix


def _padded_resize_matrix(in_size: int, out_size: int, in_side: int, out_side: int) -> np.ndarray:
  return np.pad(area_resize_matrix(in_size, out_size), ((0, out_side - out_size), (0, in_side - in_size)))


@jax.jit
def _pnet(params, image, rows, columns, valid_size):
  """P-Net on one pyramid level: ``image`` area-resized by ``rows @ image @ columns.T`` (zero-padded)."""
  level = jnp.einsum("hy,yxc,wx->hwc", rows, image, columns)
  return mtcnn_networks.PNet().apply({"params": params}, level[None], valid_size)


def crop_and_resize(image, valid_size, boxes, size: int):
  """``[n, size, size, 3]`` bilinear crops (TensorFlow's ``crop_and_resize``, extrapolating with 0).

  ``image`` ``[S, S, 3]`` holds the photograph in its top-left ``valid_size`` (``[2]``: height, width);
  ``boxes`` ``[n, 4]`` are ``(y0, x0, y1, x1)`` as fractions of that height and width.
  """
  height, width = valid_size[0].astype(jnp.float32), valid_size[1].astype(jnp.float32)
  steps = jnp.arange(size, dtype=jnp.float32)

  def sample(start, end, extent):  # [n] fractions -> [n, size] positions, their floor/ceil and weights
    position = start[:, None] * (extent - 1) + steps * ((end - start) * (extent - 1) / (size - 1))[:, None]
    inside = (position >= 0) & (position <= extent - 1)
    low = jnp.floor(position)
    last = image.shape[0] - 1
    return (jnp.clip(low, 0, last).astype(jnp.int32), jnp.clip(jnp.ceil(position), 0, last).astype(jnp.int32),
            (position - low)[..., None], inside)

  top, bottom, y_weight, y_inside = sample(boxes[:, 0], boxes[:, 2], height)
  left, right, x_weight, x_inside = sample(boxes[:, 1], boxes[:, 3], width)

  def pixels(rows, columns):
    return image[rows[:, :, None], columns[:, None, :]]

  x_weight = x_weight[:, None]
  upper = pixels(top, left) + (pixels(top, right) - pixels(top, left)) * x_weight
  lower = pixels(bottom, left) + (pixels(bottom, right) - pixels(bottom, left)) * x_weight
  crops = upper + (lower - upper) * y_weight[:, :, None]
  inside = y_inside[:, :, None, None] & x_inside[:, None, :, None]
  return jnp.where(inside, crops, 0.0)


@functools.partial(jax.jit, static_argnames=("network",))
def _refine(params, image, valid_size, boxes, network: str):
  size = {"rnet": 24, "onet": 48}[network]
  crops = crop_and_resize(image, valid_size, boxes, size)
  return mtcnn_networks.MODULES[network]().apply({"params": params}, crops)


def suppress(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union",
             sort: bool = True) -> np.ndarray:
  """Indices kept by the package's suppression: no higher-ranked box overlaps them beyond ``threshold``.

  ``boxes`` ``[n, 4]`` ``(x0, y0, x1, y1)``; overlap is intersection over union (``"union"``) or over the
  smaller area (``"min"``). With ``sort`` boxes rank by descending score; without, in the given order. The
  indices come back in rank order.
  """
  order = np.argsort(scores)[::-1] if sort else np.arange(len(boxes))
  boxes = boxes[order]
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  suppressed = np.zeros(len(boxes), bool)
  for start in range(0, len(boxes), 1024):  # rows in blocks: n x n overlaps of a crowded level do not fit
    block = slice(start, start + 1024)
    width = np.maximum(0, np.minimum(boxes[block, None, 2], boxes[None, :, 2])
                       - np.maximum(boxes[block, None, 0], boxes[None, :, 0]))
    height = np.maximum(0, np.minimum(boxes[block, None, 3], boxes[None, :, 3])
                        - np.maximum(boxes[block, None, 1], boxes[None, :, 1]))
    intersection = width * height
    if method == "union":
      denominator = area[block, None] + area[None, :] - intersection
    elif method == "min":
      denominator = np.minimum(area[block, None], area[None, :])
    else:
      raise ValueError(f"method must be 'union' or 'min'; got {method!r}.")
    with np.errstate(divide="ignore", invalid="ignore"):
      overlap = intersection / denominator
    later = np.arange(len(boxes))[None, :] > np.arange(start, min(start + 1024, len(boxes)))[:, None]
    suppressed |= ((overlap > threshold) & later).any(axis=0)
  return order[~suppressed]


def _square(boxes: np.ndarray) -> np.ndarray:
  boxes = boxes.copy()
  width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  side = np.maximum(width, height)
  boxes[:, 0] += width * 0.5 - side * 0.5
  boxes[:, 1] += height * 0.5 - side * 0.5
  boxes[:, 2:4] = boxes[:, 0:2] + side[:, None]
  return boxes


def _move(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  sizes = np.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1], axis=-1)
  return boxes + offsets.astype(np.float64) * np.tile(sizes, 2)


class Detector:
  """MTCNN with its thresholds; :meth:`detect` finds the faces of one photograph.

  Args:
    min_face_size: the smallest face (pixels) the pyramid looks for.
    scale_factor: the ratio of one pyramid level to the next.
    thresholds: P-Net's, R-Net's and O-Net's face-probability thresholds.
    params: the networks' parameters (default: :func:`amr_jax.faces.mtcnn_networks.load_params`).
    max_side: a photograph whose longest side is longer is searched on a copy shrunk to it (area averaging),
      which bounds time and memory; None searches every photograph at full size.

  The other defaults are the ``mtcnn`` package's; 1536 is one of :func:`bucket`'s sizes, so its copy is padded
  no further.
  """

  def __init__(self, min_face_size: float = 20, scale_factor: float = 0.709,
               thresholds: Sequence[float] = (0.6, 0.7, 0.8), params: dict[str, Any] | None = None,
               max_side: int | None = 1536):
    if min_face_size < 12:
      raise ValueError(f"min_face_size must be at least 12 (P-Net's window); got {min_face_size}.")
    if not 0 < scale_factor < 1:
      raise ValueError(f"scale_factor must be in (0, 1); got {scale_factor}.")
    if len(thresholds) != 3 or not all(0 <= t < 1 for t in thresholds):
      raise ValueError(f"thresholds must be three probabilities in [0, 1); got {thresholds}.")
    if max_side is not None and max_side < 2 * min_face_size:
      raise ValueError(f"max_side must be None or at least twice min_face_size ({2 * min_face_size}); got {max_side}.")
    self.max_side = max_side
    self.min_face_size, self.scale_factor = min_face_size, scale_factor
    self.thresholds = tuple(float(t) for t in thresholds)
    self.params = params if params is not None else mtcnn_networks.load_params()

  def detect(self, image: np.ndarray) -> list[Face]:
    """The faces of an RGB uint8 ``[H, W, 3]`` photograph, most probable first, in its own pixels.

    Raises:
      ValueError: ``image`` is not a uint8 ``[H, W, 3]`` array.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"detect takes an RGB uint8 [H, W, 3] image; got {image.dtype} {image.shape} "
                       "(PIL: np.asarray(Image.open(f).convert('RGB'))).")
    height, width = image.shape[:2]
    if self.max_side is None or max(height, width) <= self.max_side:
      return self._detect(image)
    shrink = self.max_side / max(height, width)
    small_size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
    small = np.asarray(PIL.Image.fromarray(image).resize(small_size, PIL.Image.Resampling.BOX))
    # Pixel centres: pixel i of the copy averages the photograph over [i, i + 1) * (side / copy side).
    ratio = np.array([width / small_size[0], height / small_size[1]])
    limit = np.array([width - 1, height - 1])
    return [Face(box=np.clip((face.box.reshape(2, 2) + 0.5) * ratio - 0.5, 0, limit).reshape(4), score=face.score,
                 landmarks=(face.landmarks + 0.5) * ratio - 0.5) for face in self._detect(small)]

  def _detect(self, image: np.ndarray) -> list[Face]:
    height, width = image.shape[:2]
    side = bucket(max(height, width))
    normalized = (image.astype(np.float32) - 127.5) / 128
    padded = jnp.asarray(np.pad(normalized, ((0, side - height), (0, side - width), (0, 0))))
    boxes = self._propose(padded, height, width)
    if not len(boxes):
      return []

    offsets, probability = self._run("rnet", padded, height, width, boxes)
    keep = probability > self.thresholds[1]
    boxes, scores = _move(boxes, offsets)[keep], probability[keep].astype(np.float64)
    kept = suppress(boxes, scores, 0.7)
    boxes = _square(boxes[kept])
    if not len(boxes):
      return []

    offsets, landmarks, probability = self._run("onet", padded, height, width, boxes)
    sizes = boxes[:, 2:4] - boxes[:, 0:2] + 1
    landmarks = landmarks.astype(np.float64)
    points = np.stack([sizes[:, :1] * landmarks[:, :5] + boxes[:, 0:1] - 1,
                       sizes[:, 1:] * landmarks[:, 5:] + boxes[:, 1:2] - 1], axis=-1)
    keep = probability > self.thresholds[2]
    boxes, scores, points = _move(boxes, offsets)[keep], probability[keep].astype(np.float64), points[keep]
    kept = suppress(boxes, scores, 0.7, method="min")
    boxes = np.clip(boxes[kept], 0, [width - 1, height - 1, width - 1, height - 1])
    return [Face(box=box, score=float(score), landmarks=landmark)
            for box, score, landmark in zip(boxes, scores[kept], points[kept])]

  def _propose(self, padded, height: int, width: int) -> np.ndarray:
    levels = []  # every level dispatched before any is read back: the device works while NumPy waits
    for scale in scale_pyramid(height, width, self.min_face_size, self.scale_factor):
      level_height, level_width = (int(d) for d in np.asarray([height, width]) * scale)
      out_height, out_width = math.ceil((level_height - 2) / 2) - 4, math.ceil((level_width - 2) / 2) - 4
      if out_height < 1 or out_width < 1:
        continue  # smaller than P-Net's window
      side = bucket(max(level_height, level_width))
      levels.append((scale, out_height, out_width, _pnet(
          self.params["pnet"], padded, _padded_resize_matrix(height, level_height, padded.shape[0], side),
          _padded_resize_matrix(width, level_width, padded.shape[1], side),
          np.asarray([level_height, level_width], np.int32))))
    per_level = []
    for scale, out_height, out_width, outputs in levels:
      offsets, probability = jax.device_get(outputs)
      offsets, probability = offsets[0, :out_height, :out_width], probability[0, :out_height, :out_width]
      rows, columns = np.nonzero(probability > self.thresholds[0])
      if not len(rows):
        continue
      corner = np.stack([columns, rows, columns, rows], axis=-1) * 2 + np.array([1, 1, 12, 12])
      boxes = (corner + offsets[rows, columns].astype(np.float64) * 11) / scale
      scores = probability[rows, columns].astype(np.float64)
      order = np.argsort(scores)[::-1]
      boxes, scores = boxes[order], scores[order]
      kept = suppress(boxes, scores, 0.5, sort=False)
      per_level.append((boxes[kept], scores[kept]))
    if not per_level:
      return np.empty((0, 4))
    boxes = np.concatenate([b for b, _ in per_level])
    scores = np.concatenate([s for _, s in per_level])
    return _square(boxes[suppress(boxes, scores, 0.7)])

  def _run(self, network: str, padded, height: int, width: int, boxes: np.ndarray) -> tuple[np.ndarray, ...]:
    valid_size = np.asarray([height, width], np.int32)
    fractions = (boxes[:, [1, 0, 3, 2]] / np.array([height, width, height, width])).astype(np.float32)
    count = len(boxes)
    fractions = np.pad(fractions, ((0, _batch_bucket(count) - count), (0, 0)))
    outputs = jax.device_get(_refine(self.params[network], padded, valid_size, fractions, network))
    return tuple(np.asarray(o)[:count] for o in outputs)


def main_face(found: Sequence[Face], height: int, width: int) -> Face | None:
  """The face a photograph of one person is about, or None when ``found`` is empty.

  The largest box, less twice the squared distance (pixels) of its centre from the photograph's centre
  (InsightFace's rule for keeping one face): a large face near the middle wins over a larger one at the edge
  only when it is much nearer. Ties go to the earlier (more probable) face.
  """
  if not found:
    return None
  centre = np.array([width / 2, height / 2])

  def merit(face: Face) -> float:
    x0, y0, x1, y1 = face.box
    return (x1 - x0) * (y1 - y0) - 2 * float(np.sum(((face.box[:2] + face.box[2:]) / 2 - centre) ** 2))

  return max(found, key=merit)


@functools.lru_cache(maxsize=None)
def default_detector() -> Detector:
  """The :class:`Detector` with the ``mtcnn`` package's defaults, built once."""
  return Detector()


def detect(image: np.ndarray) -> list[Face]:
  """The faces of an RGB uint8 ``[H, W, 3]`` photograph by :func:`default_detector`, most probable first."""
  return default_detector().detect(image)
