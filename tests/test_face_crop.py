"""The aligned crop puts the pupils where it promises, on real FG-NET photographs."""

import numpy as np
import PIL.Image
import pytest

from amr_jax import errors
from amr_jax.data import fgnet
from amr_jax.faces import face_crop


@pytest.fixture(scope="module")
def real_images(shared_dir):
  index = fgnet.index_images(fgnet.find_root(shared_dir / "data" / "fgnet"))
  return index[::97]  # eleven photographs across subjects and ages


def test_pupils_land_at_the_promised_points(real_images):
  size, eye_distance, eye_y = 112, 0.35, 0.4
  want_left = np.array([size / 2 - eye_distance * size / 2, eye_y * size])
  want_right = np.array([size / 2 + eye_distance * size / 2, eye_y * size])
  for item in real_images:
    image = np.asarray(PIL.Image.open(item.image_path).convert("RGB"))
    landmarks = fgnet.read_landmarks(item.landmarks_path)
    # Mark both pupils in the photograph, then find the marks in the crop: this checks the
    # pixels, not only the landmark arithmetic.
    marked = image.copy()
    for index in (face_crop.LEFT_PUPIL, face_crop.RIGHT_PUPIL):
      x, y = np.round(landmarks[index]).astype(int)
      marked[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = (255, 0, 255)
    crop, moved = face_crop.aligned_face_crop(marked, landmarks, size, eye_distance=eye_distance, eye_y=eye_y)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    np.testing.assert_allclose(moved[face_crop.LEFT_PUPIL], want_left, atol=1e-3)
    np.testing.assert_allclose(moved[face_crop.RIGHT_PUPIL], want_right, atol=1e-3)
    magenta = (crop[..., 0] > 150) & (crop[..., 1] < 120) & (crop[..., 2] > 150)
    ys, xs = np.nonzero(magenta)
    assert len(xs) > 0, item.file_name
    for want in (want_left, want_right):
      near = np.hypot(xs - want[0], ys - want[1]) < 6
      assert near.any(), (item.file_name, want)
      centre = np.array([xs[near].mean(), ys[near].mean()])
      assert np.hypot(*(centre - want)) < 2.0, (item.file_name, centre, want)


def test_eye_line_is_level_and_distance_fixed():
  landmarks = np.random.default_rng(0).uniform(0, 300, (68, 2)).astype(np.float32)
  landmarks[face_crop.LEFT_PUPIL] = (100, 150)
  landmarks[face_crop.RIGHT_PUPIL] = (180, 110)  # tilted eyes
  _, moved = face_crop.aligned_face_crop(np.zeros((300, 300, 3), np.uint8), landmarks, 64, eye_distance=0.5)
  left, right = moved[face_crop.LEFT_PUPIL], moved[face_crop.RIGHT_PUPIL]
  assert abs(left[1] - right[1]) < 1e-3 and abs((right[0] - left[0]) - 32) < 1e-3


def test_bad_arguments():
  with pytest.raises(ValueError, match=r"landmarks must have shape \(68, 2\)") as raised:
    face_crop.eye_alignment(np.zeros((5, 2)), 112)
  assert not isinstance(raised.value, errors.RunError)  # a caller's bug, so it keeps its traceback
  # Landmarks come from the data's .pts files: unusable ones are the data's fault.
  with pytest.raises(errors.DataError, match=r"pupils \(landmarks 31 and 36\) coincide at \(0, 0\)"):
    face_crop.eye_alignment(np.zeros((68, 2)), 112)
  with pytest.raises(ValueError, match="fractions of the crop size"):
    face_crop.eye_alignment(np.ones((68, 2)), 112, eye_distance=1.5)


def test_whole_image_is_squashed():
  out = face_crop.whole_image(np.zeros((50, 30, 3), np.uint8), 64)
  assert out.shape == (64, 64, 3)
