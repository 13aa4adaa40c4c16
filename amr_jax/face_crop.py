"""Eye-aligned, scale-normalised face crops from FG-NET's 68 landmarks, and the whole-image squash.

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
  """The 2x3 matrix mapping photograph (x, y) to crop (x, y) for these landmarks.

  Raises:
    ValueError: bad arguments (fractions outside (0, 1), landmarks not of shape (68, 2)).
    errors.DataError: landmarks that cannot be aligned (the two pupils at one point): a fault of the data's file.
  """
  if not 0 < eye_distance < 1 or not 0 < eye_y < 1:
    raise ValueError(f"eye_distance and eye_y are fractions of the crop size in (0, 1); got {eye_distance}, {eye_y}.")
  landmarks = np.asarray(landmarks, np.float64)
  if landmarks.shape != (68, 2):
    raise ValueError(f"landmarks must have shape (68, 2); got {landmarks.shape}.")
  left, right = landmarks[LEFT_PUPIL], landmarks[RIGHT_PUPIL]
  delta = right - left
  distance = np.hypot(*delta)
  if distance < 1e-6:
    raise errors.DataError(f"the two pupils (landmarks {LEFT_PUPIL} and {RIGHT_PUPIL}) coincide at "
                           f"({left[0]:g}, {left[1]:g}): cannot align (are these FG-NET's 68 landmarks?).")
  scale = eye_distance * size / distance
  cos, sin = scale * delta / distance  # rotate the eye line onto the x axis, then scale
  rotation = np.array([[cos, sin], [-sin, cos]])
  target_centre = np.array([size / 2, eye_y * size])
  offset = target_centre - rotation @ ((left + right) / 2)
  return np.concatenate([rotation, offset[:, None]], axis=1)


def aligned_face_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 112, *, eye_distance: float = 0.35,
                      eye_y: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
  """``(crop, crop_landmarks)``: a ``size x size`` uint8 RGB crop and the landmarks moved with it."""
  matrix = eye_alignment(landmarks, size, eye_distance=eye_distance, eye_y=eye_y)
  inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]  # PIL wants crop -> photograph
  crop = PIL.Image.fromarray(np.asarray(image, np.uint8)).transform(
      (size, size), PIL.Image.Transform.AFFINE, tuple(inverse.reshape(-1)), resample=PIL.Image.Resampling.BILINEAR)
  moved = np.asarray(landmarks, np.float64) @ matrix[:, :2].T + matrix[:, 2]
  return np.asarray(crop), moved.astype(np.float32)


def whole_image(image: np.ndarray, size: int = 112) -> np.ndarray:
  """The whole photograph squashed to ``size x size`` (aspect ratio not kept), as the AMR paper fed it."""
  return np.asarray(PIL.Image.fromarray(np.asarray(image, np.uint8)).resize((size, size),
                                                                            PIL.Image.Resampling.BILINEAR))
