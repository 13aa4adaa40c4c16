"""Eye-aligned, scale-normalised face crops (from FG-NET's 68 landmarks or a detector's eyes), and the whole-image squash.

The crop is the similarity transform (rotation, uniform scale, translation)
that puts the two pupils level, ``eye_distance * size`` pixels apart, centred
horizontally at height ``eye_y * size``. A smaller ``eye_distance`` leaves
more margin around the face. Pixels are resampled with PIL (bilinear);
outside the photograph they are black.
"""

from __future__ import annotations

import numpy as np
import PIL.Image

from amr_jax import errors

# FG-NET's 68-point markup: the pupils of the eye on the image's left and right.
LEFT_PUPIL, RIGHT_PUPIL = 31, 36


def eye_alignment(landmarks: np.ndarray, size: int, *, eye_distance: float = 0.35,
                  eye_y: float = 0.4) -> np.ndarray:
  """The 2x3 matrix mapping photograph (x, y) to crop (x, y) for FG-NET's 68 landmarks (pupils 31 and 36).

  Raises:
    ValueError: bad arguments (fractions outside (0, 1), landmarks not of shape (68, 2)).
    errors.DataError: landmarks that cannot be aligned (the two pupils at one point): a fault of the data's file.
  """
  landmarks = np.asarray(landmarks, np.float64)
  if landmarks.shape != (68, 2):
    raise ValueError(f"landmarks must have shape (68, 2); got {landmarks.shape}.")
  return eyes_alignment(landmarks[[LEFT_PUPIL, RIGHT_PUPIL]], size, eye_distance=eye_distance, eye_y=eye_y,
                        what=f"the two pupils (landmarks {LEFT_PUPIL} and {RIGHT_PUPIL})")


def eyes_alignment(eyes: np.ndarray, size: int, *, eye_distance: float = 0.35, eye_y: float = 0.4,
                   what: str = "the two eyes") -> np.ndarray:
  """The 2x3 matrix mapping photograph (x, y) to crop (x, y) for ``eyes`` ``[2, 2]``: (x, y) of the eye on the
  image's left, then the other (FG-NET's pupils, or a detector's eye landmarks).

  Raises:
    ValueError: fractions outside (0, 1), or ``eyes`` not of shape (2, 2).
    errors.DataError: the two eyes at one point (``what`` names them in the message).
  """
  if not 0 < eye_distance < 1 or not 0 < eye_y < 1:
    raise ValueError(f"eye_distance and eye_y are fractions of the crop size in (0, 1); got {eye_distance}, {eye_y}.")
  eyes = np.asarray(eyes, np.float64)
  if eyes.shape != (2, 2):
    raise ValueError(f"eyes must have shape (2, 2); got {eyes.shape}.")
  left, right = eyes
  delta = right - left
  distance = np.hypot(*delta)
  if distance < 1e-6:
    raise errors.DataError(f"{what} coincide at ({left[0]:g}, {left[1]:g}): cannot align.")
  scale = eye_distance * size / distance
  cos, sin = scale * delta / distance  # rotate the eye line onto the x axis, then scale
  rotation = np.array([[cos, sin], [-sin, cos]])
  target_centre = np.array([size / 2, eye_y * size])
  offset = target_centre - rotation @ ((left + right) / 2)
  return np.concatenate([rotation, offset[:, None]], axis=1)


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
  """The ``size x size`` uint8 crop that the 2x3 photograph-to-crop ``matrix`` makes (bilinear; black outside)."""
  inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]  # PIL wants crop -> photograph
  return np.asarray(PIL.Image.fromarray(np.asarray(image, np.uint8)).transform(
      (size, size), PIL.Image.Transform.AFFINE, tuple(inverse.reshape(-1)), resample=PIL.Image.Resampling.BILINEAR))


def eyes_face_crop(image: np.ndarray, eyes: np.ndarray, size: int = 112, *, eye_distance: float = 0.35,
                   eye_y: float = 0.4) -> np.ndarray:
  """The ``size x size`` uint8 crop aligned on ``eyes`` ``[2, 2]`` as :func:`aligned_face_crop` aligns on pupils."""
  return warp(image, eyes_alignment(eyes, size, eye_distance=eye_distance, eye_y=eye_y), size)


def aligned_face_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 112, *, eye_distance: float = 0.35,
                      eye_y: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
  """``(crop, crop_landmarks)``: a ``size x size`` uint8 RGB crop and the landmarks moved with it."""
  matrix = eye_alignment(landmarks, size, eye_distance=eye_distance, eye_y=eye_y)
  crop = warp(image, matrix, size)
  moved = np.asarray(landmarks, np.float64) @ matrix[:, :2].T + matrix[:, 2]
  return np.asarray(crop), moved.astype(np.float32)


def whole_image(image: np.ndarray, size: int = 112) -> np.ndarray:
  """The whole photograph squashed to ``size x size`` (aspect ratio not kept), as the AMR paper fed it."""
  return np.asarray(PIL.Image.fromarray(np.asarray(image, np.uint8)).resize((size, size),
                                                                            PIL.Image.Resampling.BILINEAR))
