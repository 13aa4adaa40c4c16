"""amr_jax.faces.mtcnn: MTCNN in Flax against the mtcnn package's TensorFlow pipeline, piece by piece and end to end."""

import os
import subprocess
import sys

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import skimage.data

import conftest

from amr_jax.faces import mtcnn, mtcnn_networks

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="module")
def reference_detector():
  """The mtcnn package's own pipeline (TensorFlow; a test-only dependency)."""
  mtcnn = pytest.importorskip("mtcnn")
  return mtcnn.MTCNN()


@pytest.fixture(scope="module")
def detector():
  return mtcnn.Detector()


def _photographs(shared):
  """The photographs both pipelines see: scikit-image's astronaut at three sizes, a cat, FG-NET's first 12."""
  astronaut = skimage.data.astronaut()
  odd = np.asarray(PIL.Image.fromarray(astronaut).resize((517, 333)))  # odd sides: padding and pooling edges
  photographs = {"astronaut": astronaut, "astronaut 517x333": odd,
                 "astronaut halved": np.ascontiguousarray(astronaut[::2, ::2]), "chelsea (a cat)": skimage.data.chelsea()}
  if shared is not None:
    for path in sorted((shared / "data/fgnet/FGNET/images").iterdir())[:12]:
      photographs[path.name] = np.asarray(PIL.Image.open(path).convert("RGB"))
  return photographs


def test_faces_and_landmarks_are_the_mtcnn_packages_on_the_same_photographs(reference_detector, detector):
  """Same count and order of faces; boxes and landmarks within 0.5 px, scores within 1e-3.

  Both run the same float32 networks on the same pixels, in another summation order, so their outputs differ
  by float32 rounding (about 1e-7 relative per operation); through the box arithmetic (boxes of at most a few
  hundred pixels) that is far below a pixel. 0.5 px is half the package's own output grid (its default JSON
  output rounds boxes and landmarks to whole pixels): within it, the two give the same rounded answer up to
  ties. 1e-3 on a probability is a tenth of the last digit of the thresholds (0.6, 0.7, 0.8). A layout error
  in any network (a transposed kernel, the column-first flatten, the landmark order) moves results by pixels.
  """
  found = 0
  for name, image in _photographs(conftest.SHARED if conftest.SHARED.is_dir() else None).items():
    expected = reference_detector.detect_faces(image, box_format="xyxy", output_type="numpy")
    got = detector.detect(image)
    assert len(got) == len(expected), name
    for face, row in zip(got, expected):
      np.testing.assert_allclose(face.box, row[1:5], atol=0.5, rtol=0, err_msg=name)
      np.testing.assert_allclose(face.score, row[5], atol=1e-3, rtol=0, err_msg=name)
      np.testing.assert_allclose(face.landmarks, np.stack([row[6:11], row[11:16]], axis=-1), atol=0.5, rtol=0,
                                 err_msg=name)
    found += len(got)
  assert found >= 3  # the astronaut's face at each size, at least


def test_the_astronauts_landmarks_are_in_mtcnns_order(detector):
  """The eyes above the nose above the mouth; the image's-left eye and mouth corner left of the others."""
  (face,) = detector.detect(skimage.data.astronaut())
  left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
  assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
  assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
  x0, y0, x1, y1 = face.box
  assert all(x0 < x < x1 and y0 < y < y1 for x, y in face.landmarks)
  np.testing.assert_array_equal(face.eyes, face.landmarks[:2])
  assert 0.8 < face.score <= 1


def test_area_resize_is_tensorflows(reference_detector):
  tf = pytest.importorskip("tensorflow")
  image = np.random.default_rng(0).uniform(-1, 1, (101, 77, 3)).astype(np.float32)
  for height, width in [(60, 46), (42, 32), (10, 8), (101, 77), (55, 70)]:
    expected = tf.image.resize(image[None], (height, width), method="area")[0].numpy()
    got = np.einsum("hy,yxc,wx->hwc", mtcnn.area_resize_matrix(101, height), image,
                    mtcnn.area_resize_matrix(77, width))
    # A weighted mean of at most (ceil(101/8) + 1)^2 = 196 values in [-1, 1], in float32 both: each sum's
    # rounding is below 196 * 2^-24 < 1.2e-5 (weights rounded once more: 2e-5).
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)


def test_area_resize_rows_sum_to_one():
  for in_size, out_size in [(101, 60), (7, 3), (500, 11), (12, 12)]:
    # Each row spans [i * s, (i + 1) * s) with s = in_size / out_size, both ends float32 values up to in_size,
    # each rounded by at most half a float32 spacing there: the row's sum is off by at most spacing / s.
    spacing = float(np.spacing(np.float32(in_size)))
    np.testing.assert_allclose(mtcnn.area_resize_matrix(in_size, out_size).sum(axis=1), 1, rtol=0,
                               atol=spacing * out_size / in_size + 1e-6)


def test_crop_and_resize_is_tensorflows_inside_and_outside_the_image(reference_detector):
  tf = pytest.importorskip("tensorflow")
  rng = np.random.default_rng(1)
  height, width = 37, 53
  image = rng.uniform(-1, 1, (height, width, 3)).astype(np.float32)
  boxes = np.array([[0.1, 0.2, 0.6, 0.9], [-0.3, -0.1, 0.5, 0.4], [0.5, 0.7, 1.4, 1.2], [0.2, 0.2, 0.2, 0.2],
                    [0.9, 0.8, 0.1, 0.3]], np.float32)  # inside, overlapping each edge, a point, flipped
  side = mtcnn.bucket(max(height, width))
  padded = np.pad(image, ((0, side - height), (0, side - width), (0, 0)))
  for size in (24, 48):
    expected = tf.image.crop_and_resize(image[None], boxes, np.zeros(len(boxes), np.int32), (size, size)).numpy()
    got = mtcnn.crop_and_resize(jnp.asarray(padded), jnp.asarray([height, width]), jnp.asarray(boxes), size)
    # Bilinear weights of values in [-1, 1]: three float32 lerps, each within a few ulps of 1.
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=0)


def test_pnet_on_a_zero_padded_level_equals_pnet_on_the_level_alone():
  """The bucket padding changes nothing inside the true image (float64: only rounding of sums could differ)."""
  params = mtcnn_networks.load_params()["pnet"]
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    for height, width in [(23, 31), (24, 17)]:  # odd and even sides: the first pool's padding, or none
      level = rng.uniform(-1, 1, (1, height, width, 3))
      offsets, probability = mtcnn_networks.PNet().apply({"params": params64}, level)
      side = mtcnn.bucket(max(height, width))
      padded = np.pad(level, ((0, 0), (0, side - height), (0, side - width), (0, 0)))
      padded_offsets, padded_probability = mtcnn_networks.PNet().apply(
          {"params": params64}, padded, jnp.asarray([height, width]))
      h, w = probability.shape[1:]
      assert (h, w) == (-(-(height - 2) // 2) - 4, -(-(width - 2) // 2) - 4)
      np.testing.assert_allclose(padded_offsets[:, :h, :w], offsets, rtol=0, atol=1e-12)
      np.testing.assert_allclose(padded_probability[:, :h, :w], probability, rtol=0, atol=1e-12)


def _suppress_by_loops(boxes, scores, threshold, method):
  order = sorted(range(len(boxes)), key=lambda i: -scores[i])
  kept = []
  for rank, j in enumerate(order):
    bj = boxes[j]
    dropped = False
    for i in order[:rank]:
      bi = boxes[i]
      inter = max(0, min(bi[2], bj[2]) - max(bi[0], bj[0])) * max(0, min(bi[3], bj[3]) - max(bi[1], bj[1]))
      area_i, area_j = (bi[2] - bi[0]) * (bi[3] - bi[1]), (bj[2] - bj[0]) * (bj[3] - bj[1])
      denominator = area_i + area_j - inter if method == "union" else min(area_i, area_j)
      dropped |= denominator > 0 and inter / denominator > threshold
    if not dropped:
      kept.append(j)
  return kept


@hypothesis.given(st.integers(1, 40), st.sampled_from(["union", "min"]), st.floats(0.1, 0.9), st.integers(0, 2**31))
def test_suppression_keeps_what_pairwise_loops_keep(count, method, threshold, seed):
  rng = np.random.default_rng(seed)
  corners = rng.uniform(0, 50, (count, 2))
  boxes = np.concatenate([corners, corners + rng.uniform(1, 30, (count, 2))], axis=1)
  scores = rng.permutation(count) / count  # distinct, so the rank order is defined
  kept = mtcnn.suppress(boxes, scores, threshold, method)
  assert list(kept) == _suppress_by_loops(boxes, scores, threshold, method)


def test_suppression_lets_a_dropped_box_drop_another_as_the_package_does():
  """A overlaps B, B overlaps C, A does not overlap C: greedy NMS keeps A and C, the package keeps only A."""
  boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [9, 0, 19, 10]], float)  # IoU A-B 0.33, B-C 0.43, A-C 0.05
  assert list(mtcnn.suppress(boxes, np.array([0.9, 0.8, 0.7]), 0.3)) == [0]


def test_bucket_sizes_are_few_and_waste_at_most_a_third():
  sizes = {mtcnn.bucket(n) for n in range(1, 4097)}
  assert sorted(sizes)[:7] == [16, 20, 24, 32, 40, 48, 64]
  assert len(sizes) == 3 * 8 + 1  # three per doubling from 16 to 4096
  for n in range(16, 4097):
    assert n <= mtcnn.bucket(n) <= n * 4 / 3


def test_a_second_photograph_of_a_nearby_size_compiles_nothing(detector):
  image = skimage.data.astronaut()
  detector.detect(np.asarray(PIL.Image.fromarray(image).resize((400, 300))))
  sizes = mtcnn._pnet._cache_size(), mtcnn._refine._cache_size()  # pylint: disable=protected-access
  detector.detect(np.asarray(PIL.Image.fromarray(image).resize((390, 310))))
  assert (mtcnn._pnet._cache_size(), mtcnn._refine._cache_size()) == sizes  # pylint: disable=protected-access


def test_a_photograph_longer_than_max_side_is_searched_on_a_shrunk_copy_and_mapped_back(monkeypatch):
  """The astronaut blown up 4x by repeating each pixel: its area-averaged copy at 512 px is the astronaut itself
  (each 4x4 block averages 16 equal pixels), so the faces are the astronaut's exactly, moved to the big image's
  pixels (centre of pixel i -> centre of block i: 4 i + 1.5). The networks see no image larger than 512 px."""
  small = skimage.data.astronaut()
  large = np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)
  detector = mtcnn.Detector(max_side=512)
  seen = []
  pnet = mtcnn._pnet  # pylint: disable=protected-access
  monkeypatch.setattr(mtcnn, "_pnet", lambda params, image, *rest: seen.append(image.shape) or pnet(params, image, *rest))
  expected, got = detector.detect(small), detector.detect(large)
  assert len(got) == len(expected) == 1 and seen and max(shape[0] for shape in seen) <= 512
  np.testing.assert_allclose(got[0].box, expected[0].box * 4 + 1.5, atol=1e-9)
  np.testing.assert_allclose(got[0].landmarks, expected[0].landmarks * 4 + 1.5, atol=1e-9)
  assert got[0].score == expected[0].score
  with pytest.raises(ValueError, match="max_side must be None or at least twice min_face_size"):
    mtcnn.Detector(max_side=30, params={})


def test_boxes_mapped_back_stay_inside_the_photograph():
  """A face at the very edge of a long photograph: its box is clipped to the photograph, as at full size."""
  astronaut = skimage.data.astronaut()[:300, 100:400]  # the face near the top edge
  wide = np.zeros((300, 1500, 3), np.uint8)
  wide[:, :300] = astronaut
  (face,) = mtcnn.Detector(max_side=600).detect(wide)
  assert 0 <= face.box[0] < face.box[2] <= 1499 and 0 <= face.box[1] < face.box[3] <= 299


def test_photographs_without_faces_and_too_small_ones_give_no_faces(detector):
  assert detector.detect(np.zeros((120, 90, 3), np.uint8)) == []
  assert detector.detect(np.full((15, 15, 3), 128, np.uint8)) == []  # smaller than the smallest face


def test_bad_images_and_settings_are_refused_with_what_was_expected(detector):
  with pytest.raises(ValueError, match=r"RGB uint8 \[H, W, 3\].*float32 \(8, 8, 3\)"):
    detector.detect(np.zeros((8, 8, 3), np.float32))
  with pytest.raises(ValueError, match=r"uint8 \(8, 8\)"):
    detector.detect(np.zeros((8, 8), np.uint8))
  with pytest.raises(ValueError, match="min_face_size"):
    mtcnn.Detector(min_face_size=5, params={})
  with pytest.raises(ValueError, match="thresholds"):
    mtcnn.Detector(thresholds=(0.6, 0.7), params={})


def test_weights_are_read_without_tensorflow_and_checked_against_the_network():
  code = ("import sys; from amr_jax.faces import mtcnn_networks; p = mtcnn_networks.load_params(); "
          "assert 'tensorflow' not in sys.modules and 'mtcnn' not in sys.modules, sorted(sys.modules); "
          "print(sum(a.size for n in p.values() for l in n.values() for a in l.values()))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  # P-Net, R-Net and O-Net's parameter counts (the paper's networks): 6632 + 100178 + 389040.
  assert int(result.stdout) == 6632 + 100178 + 389040
  weights = [np.zeros((3, 3, 3, 10))] * 2
  with pytest.raises(ValueError, match="pnet: 2 weight arrays; the network has 13"):
    mtcnn_networks.keras_weights_to_params("pnet", weights)


def test_a_missing_package_is_named_with_the_install_command(monkeypatch):
  monkeypatch.setattr(mtcnn_networks.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match=r"pip install mtcnn==1\.0\.0"):
    mtcnn_networks.weights_dir()
