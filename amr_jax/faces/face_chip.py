"""dlib's face chips: the similarity alignment, padding, size and resampling of dlib's ``get_face_chip_details``
and ``extract_image_chip``, in NumPy, from five landmarks of either dlib's or MTCNN's kind.

A chip is the square a face is mapped into by a similarity transform (rotation, uniform scale, translation):
the one that puts the face's landmarks, in least squares, at a template's positions. The template is dlib's
mean face, in a unit square, widened by ``padding`` on each side (0.2: the face spans the middle 1 / 1.4).

- :data:`DLIB_5_TEMPLATE` holds the positions of dlib's five-point landmarks (the four eye corners and the
  base of the nose), as ``get_face_chip_details`` has them;
- :data:`MTCNN_TEMPLATE` holds MTCNN's (:mod:`amr_jax.faces.mtcnn`: the eye centres, the nose tip and the mouth
  corners). They are read off the same mean face, dlib's 68-point one (the mean of each eye's six points, point
  30 and points 48 and 54), so that a chip made from MTCNN's landmarks frames a face as dlib's does.

:func:`extract_chip` resamples as dlib does: when the chip is much smaller than the face, it first halves the
photograph with dlib's ``pyramid_down<2>`` (a 5-tap [1 4 6 4 1] filter, integer arithmetic, and dlib's
coordinate offsets) until one more halving would make the face smaller than the chip, then samples bilinearly,
with black outside the photograph. Chips from dlib's own landmarks equal dlib's to the byte
(``tests/test_face_chip.py`` compares them).

Reference: dlib's ``image_transforms/interpolation.h``, ``image_pyramid.h`` and ``geometry/drectangle.h``.
"""

from __future__ import annotations

import math

import numpy as np

from amr_jax import errors

#: dlib's five-point landmarks' places in its mean face (``get_face_chip_details``): the outer and inner corner
#: of the eye on the image's right, the outer and inner corner of the other, and the base of the nose.
DLIB_5_TEMPLATE = np.array([[0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
                            [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
                            [0.4901123135679, 0.6277975316475]])
# dlib's 68-point mean face, points 36-47 (the eyes), 30 (the nose tip), 48 and 54 (the mouth corners).
_LEFT_EYE = np.array([[0.121737, 0.216423], [0.187122, 0.178758], [0.265825, 0.179852], [0.334606, 0.231733],
                      [0.260918, 0.245099], [0.182743, 0.244077]])
_RIGHT_EYE = np.array([[0.645647, 0.231733], [0.714428, 0.179852], [0.793132, 0.178758], [0.858516, 0.216423],
                       [0.79751, 0.244077], [0.719335, 0.245099]])
#: MTCNN's five landmarks' places in the same mean face, in :data:`amr_jax.faces.mtcnn.LANDMARKS` order.
MTCNN_TEMPLATE = np.array([_LEFT_EYE.mean(0), _RIGHT_EYE.mean(0), [0.490127, 0.515625], [0.254149, 0.780233],
                           [0.726104, 0.780233]])
#: The fraction of the face's width added on each side (dlib's default).
PADDING = 0.2


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
  """The 2x3 similarity ``[A | b]`` that maps ``source`` ``[n, 2]`` onto ``target`` in least squares.

  Umeyama's solution (IEEE PAMI 13(4), 1991), as dlib's ``find_similarity_transform`` computes it (a reflection
  is never chosen).
  """
  source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
  mean_source, mean_target = source.mean(0), target.mean(0)
  variance = np.mean(np.sum((source - mean_source) ** 2, axis=1))
  covariance = (target - mean_target).T @ (source - mean_source) / len(source)
  u, d, vt = np.linalg.svd(covariance)
  sign = np.eye(2)
  if np.linalg.det(covariance) < 0 or (np.linalg.det(covariance) == 0 and np.linalg.det(u) * np.linalg.det(vt) < 0):
    sign[1, 1] = -1
  rotation = u @ sign @ vt
  scale = np.trace(np.diag(d) @ sign) / variance if variance > 0 else 1.0
  matrix = scale * rotation
  return np.concatenate([matrix, (mean_target - matrix @ mean_source)[:, None]], axis=1)


def chip_details(landmarks: np.ndarray, template: np.ndarray, size: int,
                 padding: float = PADDING) -> tuple[np.ndarray, float]:
  """``(rect, angle)`` of dlib's ``chip_details``: the photograph's rectangle ``(left, top, right, bottom)``
  that the chip covers before rotation by ``angle`` (radians) about its centre.

  Raises:
    ValueError: ``landmarks`` and ``template`` of different shapes, or fewer than two points.
    errors.DataError: landmarks at one point (no scale to align).
  """
  landmarks = np.asarray(landmarks, np.float64)
  if landmarks.shape != template.shape or len(template) < 2:
    raise ValueError(f"landmarks must have shape {template.shape}; got {landmarks.shape}.")
  if np.ptp(landmarks, axis=0).max() < 1e-6:
    raise errors.DataError(f"the landmarks coincide at ({landmarks[0, 0]:g}, {landmarks[0, 1]:g}): cannot align.")
  chip_points = (padding + template) / (2 * padding + 1) * size
  transform = similarity_transform(chip_points, landmarks)  # chip -> photograph
  x_axis = transform[:, 0]
  angle = math.atan2(x_axis[1], x_axis[0])
  scale = math.hypot(*x_axis)
  centre = transform[:, :2] @ np.array([size / 2, size / 2]) + transform[:, 2]
  half = (size * scale - 1) / 2  # centered_drect: the rectangle's width counts both end pixels
  return np.array([centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half]), angle


def _rect_area(rect: np.ndarray) -> float:
  left, top, right, bottom = rect
  if top > bottom or left > right:
    return 0.0
  return (right - left + 1) * (bottom - top + 1)


def _rect_down(rect: np.ndarray) -> np.ndarray:
  # pyramid_down<2>'s point_down: p / 2 - (1.25, 0.75).
  return rect / 2 - np.array([1.25, 0.75, 1.25, 0.75])


def pyramid_down(image: np.ndarray) -> np.ndarray:
  """dlib's ``pyramid_down<2>`` of an RGB uint8 image: a [1 4 6 4 1] filter in each direction, every other pixel
  kept, ``((rows - 3) // 2, (cols - 3) // 2)`` pixels, sums divided by 256 with truncation."""
  rows, cols = image.shape[:2]
  if rows <= 8 or cols <= 8:
    return np.zeros((0, 0, 3), np.uint8)
  x = image.astype(np.int32)
  out_cols, out_rows = (cols - 3) // 2, (rows - 3) // 2
  taps = (1, 4, 6, 4, 1)
  across = sum(w * x[:, k:k + 2 * out_cols:2] for k, w in enumerate(taps))  # columns 2c .. 2c + 4
  down = sum(w * across[k:k + 2 * out_rows:2] for k, w in enumerate(taps))  # rows 2r .. 2r + 4
  return (down // 256).astype(np.uint8)


def _rotate(centre: np.ndarray, point: np.ndarray, angle: float) -> np.ndarray:
  cos, sin = math.cos(angle), math.sin(angle)
  d = point - centre
  return centre + np.array([cos * d[0] - sin * d[1], sin * d[0] + cos * d[1]])


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """dlib's ``interpolate_bilinear`` at pixel coordinates ``(x, y)``: 0 where a neighbour is outside."""
  left, top = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
  inside = (left >= 0) & (top >= 0) & (left + 1 < image.shape[1]) & (top + 1 < image.shape[0])
  left_, top_ = np.where(inside, left, 0), np.where(inside, top, 0)
  fx, fy = (x - left)[..., None], (y - top)[..., None]
  img = image.astype(np.float64)

  def at(r, c):
    return img[np.clip(r, 0, image.shape[0] - 1), np.clip(c, 0, image.shape[1] - 1)]

  value = ((1 - fy) * ((1 - fx) * at(top_, left_) + fx * at(top_, left_ + 1))
           + fy * ((1 - fx) * at(top_ + 1, left_) + fx * at(top_ + 1, left_ + 1)))
  value = np.clip(value, 0, 255).astype(np.uint8)  # dlib's assign_pixel: clamp, then truncate
  return np.where(inside[..., None], value, 0).astype(np.uint8)


def extract_chip(image: np.ndarray, rect: np.ndarray, angle: float, size: int) -> np.ndarray:
  """The ``size x size`` uint8 chip of ``rect`` rotated by ``angle``, resampled as dlib's ``extract_image_chip``."""
  image = np.asarray(image)
  height, width = image.shape[:2]
  chip_area = size * size
  depth, grow, down = 0, 2.0, _rect_down(rect)
  while _rect_area(down) > chip_area:
    down, depth, grow = _rect_down(down), depth + 1, grow * 2 + 2
  centre = np.array([(rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2])
  corners = np.array([_rotate(centre, np.array(p), angle) for p in
                      ((rect[0], rect[1]), (rect[2], rect[1]), (rect[0], rect[3]), (rect[2], rect[3]))])
  grown = np.concatenate([corners.min(0) - grow, corners.max(0) + grow])
  box = np.array([max(grown[0], 0), max(grown[1], 0), min(grown[2], width - 1), min(grown[3], height - 1)])
  box = np.floor(box + 0.5).astype(np.int64)  # drectangle -> rectangle rounds
  if box[0] > box[2] or box[1] > box[3]:
    return np.zeros((size, size, 3), np.uint8)  # the chip lies wholly outside the photograph
  source = image[box[1]:box[3] + 1, box[0]:box[2] + 1]
  local = rect - np.array([box[0], box[1], box[0], box[1]], np.float64)
  level = -1
  while _rect_area(_rect_down(local)) > chip_area and level + 1 < depth:
    level, local = level + 1, _rect_down(local)
    source = pyramid_down(source)
  local_centre = np.array([(local[0] + local[2]) / 2, (local[1] + local[3]) / 2])
  top_left = _rotate(local_centre, local[[0, 1]], angle)
  top_right = _rotate(local_centre, local[[2, 1]], angle)
  bottom_left = _rotate(local_centre, local[[0, 3]], angle)
  # The affine map from chip pixels (c, r) onto the three corners: (0, 0), (size - 1, 0), (0, size - 1).
  columns, rows = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
  u, v = columns / (size - 1), rows / (size - 1)
  points = top_left + u[..., None] * (top_right - top_left) + v[..., None] * (bottom_left - top_left)
  return _bilinear(source, points[..., 0], points[..., 1])


def dlib_chip(image: np.ndarray, landmarks: np.ndarray, template: np.ndarray = MTCNN_TEMPLATE, size: int = 64,
              padding: float = PADDING) -> np.ndarray:
  """The ``size x size`` uint8 RGB chip of the face with ``landmarks`` (``[5, 2]`` ``(x, y)`` pixels of the kind
  ``template`` places: MTCNN's by default, :data:`DLIB_5_TEMPLATE` for dlib's), as dlib makes its chips."""
  rect, angle = chip_details(landmarks, template, size, padding)
  return extract_chip(image, rect, angle, size)


__all__ = ["DLIB_5_TEMPLATE", "MTCNN_TEMPLATE", "PADDING", "chip_details", "dlib_chip", "extract_chip",
           "pyramid_down", "similarity_transform"]
