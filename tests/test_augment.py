"""Device-side augmentation: geometry proven on marked pixels, colour ranges, determinism, pmap independence."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amr_jax.data import augment
from amr_jax.data.augment import Augmentation

SIZE = 33  # odd: the centre is a pixel


def _dot(row, col, size=SIZE):
  image = np.zeros((size, size, 3), np.float32)
  image[row, col] = 1.0
  return image


def _peak(image):
  return np.unravel_index(np.argmax(np.asarray(image)[..., 0]), image.shape[:2])


def _random_images(n=16, size=SIZE, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_no_augmentation_is_the_float_image():
  images = _random_images()
  out = jax.jit(augment.augment_batch, static_argnums=2)(
      augment.example_keys(0, 0, jnp.arange(16)), images, Augmentation())
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, images.astype(np.float32) / 255, rtol=1e-6)  # XLA may multiply by 1/255


def test_rotation_is_counter_clockwise_on_screen_about_the_centre():
  c = SIZE // 2
  turned = augment.warp(_dot(c, c + 10), scale=1.0, angle=math.pi / 2, shift=(0.0, 0.0))
  assert _peak(turned) == (c - 10, c)  # right of centre goes up
  np.testing.assert_allclose(turned[c - 10, c, 0], 1.0, atol=1e-5)


def test_zoom_moves_points_away_from_the_centre_and_shift_moves_down_right():
  c = SIZE // 2
  assert _peak(augment.warp(_dot(c + 4, c - 3), scale=2.0, angle=0.0, shift=(0.0, 0.0))) == (c + 8, c - 6)
  shifted = augment.warp(_dot(c, c), scale=1.0, angle=0.0, shift=(5 / SIZE, -2 / SIZE))
  assert _peak(shifted) == (c + 5, c - 2)
  assert float(jnp.sum(shifted)) == pytest.approx(3.0, abs=1e-4)  # whole-pixel moves keep the dot intact


def test_warp_equals_scipy_affine_transform():
  scipy_ndimage = pytest.importorskip("scipy.ndimage")  # installed with scikit-image (requirements.txt)
  image = np.random.default_rng(1).random((SIZE, SIZE + 6, 3)).astype(np.float32)
  scale, angle, shift = 1.15, 0.3, (0.04, -0.07)
  ours = np.asarray(augment.warp(image, scale=scale, angle=angle, shift=shift))
  cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
  inverse = np.array([[cos, sin], [-sin, cos]])
  centre = np.array([(SIZE - 1) / 2, (SIZE + 5) / 2])
  offset = centre - inverse @ (centre + np.array(shift) * image.shape[:2])
  # Where the sample point lies inside the image; scipy and we differ in the half pixel past the edge.
  rows, cols = np.meshgrid(np.arange(SIZE), np.arange(SIZE + 6), indexing="ij")
  source = np.einsum("ij,jhw->ihw", inverse, np.stack([rows, cols])) + offset[:, None, None]
  inside = (source[0] >= 0) & (source[0] <= SIZE - 1) & (source[1] >= 0) & (source[1] <= SIZE + 5)
  assert inside.mean() > 0.6
  for channel in range(3):
    theirs = scipy_ndimage.affine_transform(image[..., channel], inverse, offset=offset, order=1,
                                            mode="constant", cval=0.0)
    np.testing.assert_allclose(ours[..., channel][inside], theirs[inside], atol=1e-5)


def test_warp_fills_black_outside_the_image():
  out = augment.warp(np.ones((SIZE, SIZE, 3), np.float32), scale=0.5, angle=0.0, shift=(0.0, 0.0))
  assert float(out[0, 0, 0]) == 0.0 and float(out[SIZE // 2, SIZE // 2, 0]) == 1.0


def test_flip_happens_about_half_the_time_and_is_an_exact_mirror():
  images = _random_images(64)
  out = np.asarray(augment.augment_batch(augment.example_keys(3, 7, jnp.arange(64)), images,
                                         Augmentation(flip=True)))
  floats = images.astype(np.float32) / 255
  same = [np.array_equal(o, f) for o, f in zip(out, floats)]
  mirrored = [np.array_equal(o, f[:, ::-1]) for o, f in zip(out, floats)]
  assert all(s or m for s, m in zip(same, mirrored))
  assert 16 < sum(mirrored) < 48


def test_brightness_factor_is_one_per_image_within_range():
  images = np.full((32, 8, 8, 3), 100, np.uint8)
  out = np.asarray(augment.augment_batch(augment.example_keys(0, 0, jnp.arange(32)), images,
                                         Augmentation(brightness=0.4)))
  factors = out[:, 0, 0, 0] / (100 / 255)
  assert np.all(factors >= 0.6 - 1e-6) and np.all(factors <= 1.4 + 1e-6) and np.ptp(factors) > 0.4
  np.testing.assert_allclose(out, np.broadcast_to(out[:, :1, :1, :1], out.shape), rtol=1e-6)


def test_greyscale_gives_rec601_luma_in_every_channel():
  images = _random_images(4)
  out = np.asarray(augment.augment_batch(augment.example_keys(0, 0, jnp.arange(4)), images,
                                         Augmentation(greyscale_probability=1.0)))
  luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255
  for channel in range(3):
    np.testing.assert_allclose(out[..., channel], luma, atol=1e-5)


FULL = Augmentation(flip=True, scale_range=(0.9, 1.2), max_rotation_degrees=15, max_translation=0.05,
                    brightness=0.4, contrast=0.4, saturation=0.4, greyscale_probability=0.2,
                    downscale_range=(0.5, 1.0))


def test_down_and_up_keeps_flat_images_and_full_size_and_loses_fine_detail():
  flat = jnp.full((SIZE, SIZE, 3), 0.7)
  keys = augment.example_keys(0, 0, jnp.arange(4))
  with jax.enable_x64(True):
    for key in keys:  # no dark border: the small image's edge is repeated, not zeros
      np.testing.assert_allclose(augment.down_and_up(flat.astype(jnp.float64), key, (0.5, 1.0)), 0.7, atol=1e-12)
    image = jnp.asarray(np.random.default_rng(0).random((SIZE, SIZE, 3)))
    np.testing.assert_allclose(augment.down_and_up(image, keys[0], (1.0, 1.0)), image, atol=1e-12)
    # At half of 32 px (exactly 16 rows) a pixel-wide checkerboard, the finest detail there is, keeps under a tenth
    # of its contrast, and the result is a plain bicubic resize to half and back, away from the border the two
    # handle differently (repeated edge here, renormalised weights there).
    board = jnp.asarray(np.indices((32, 32)).sum(0) % 2, jnp.float64)[..., None] * jnp.ones(3)
    assert float(jnp.abs(augment.down_and_up(board, keys[0], (0.5, 0.5)) - 0.5).max()) < 0.05
    smooth = jnp.asarray(np.random.default_rng(1).random((16, 16, 3)))
    big = jax.image.resize(smooth, (32, 32, 3), "cubic")
    expected = jax.image.resize(jax.image.resize(big, smooth.shape, "cubic", antialias=True), big.shape, "cubic")
    inner = slice(4, 28)
    np.testing.assert_allclose(augment.down_and_up(big, keys[0], (0.5, 0.5))[inner, inner], expected[inner, inner],
                               atol=1e-12)


def test_everything_together_is_deterministic_in_range_and_depends_on_seed_step_position():
  images = _random_images(8)
  run = jax.jit(lambda seed, step, positions: augment.augment_batch(
      augment.example_keys(seed, step, positions), images, FULL))
  first = np.asarray(run(1, 5, jnp.arange(8)))
  np.testing.assert_array_equal(first, run(1, 5, jnp.arange(8)))
  assert first.min() >= 0 and first.max() <= 1 and np.isfinite(first).all()
  for other in (run(2, 5, jnp.arange(8)), run(1, 6, jnp.arange(8)), run(1, 5, jnp.arange(8, 16))):
    assert not np.allclose(first, other)


# Same random draws, so only rounding may differ between two compiled programs. In float64 each output value
# is a few dozen operations on values in [0, 1] away from the input, so rounding stays below 1e-14; a wrong
# draw moves pixels by whole grey levels (1/255).
FLOAT64_ATOL = 1e-12


def test_pmap_over_devices_equals_one_device_for_the_same_positions(cpu_devices):
  images, positions = _random_images(8), jnp.arange(8)
  with jax.enable_x64(True):
    whole = augment.augment_batch(augment.example_keys(4, 2, positions), images, FULL)
    split = jax.pmap(lambda imgs, pos: augment.augment_batch(augment.example_keys(4, 2, pos), imgs, FULL),
                     axis_name="batch", devices=cpu_devices)(images.reshape(4, 2, SIZE, SIZE, 3), positions.reshape(4, 2))
  assert whole.dtype == jnp.float64
  np.testing.assert_allclose(np.asarray(split).reshape(whole.shape), whole, rtol=0, atol=FLOAT64_ATOL)


def test_jit_equals_eager():
  # dm-pix's HSV saturation failed this after a warp (wrong hue branch under fusion).
  images, keys = _random_images(8), augment.example_keys(4, 2, jnp.arange(8))
  with jax.enable_x64(True):
    eager = augment.augment_batch(keys, images, FULL)
    jitted = jax.jit(augment.augment_batch, static_argnums=2)(keys, images, FULL)
  assert jitted.dtype == jnp.float64
  np.testing.assert_allclose(jitted, eager, rtol=0, atol=FLOAT64_ATOL)


def test_saturation_and_contrast_match_torchvision_definitions():
  image = np.random.default_rng(2).random((8, 8, 3)).astype(np.float32)
  grey = image @ np.array([0.299, 0.587, 0.114], np.float32)
  key = augment.example_keys(0, 0, jnp.arange(1))[0]
  for field, make in (("saturation", lambda f: grey[..., None] + f * (image - grey[..., None])),
                      ("contrast", lambda f: grey.mean() + f * (image - grey.mean()))):
    out = np.asarray(augment.augment_image(key, image, Augmentation(**{field: 0.5})))
    factors = np.linspace(0.5, 1.5, 100001)
    errors = [np.abs(np.clip(make(f), 0, 1) - out).max() for f in factors[::100]]
    best = factors[::100][int(np.argmin(errors))]
    assert min(errors) < 2e-3 and 0.5 <= best <= 1.5, (field, min(errors))


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="scale_range"):
    Augmentation(scale_range=(1.2, 1.0))
  with pytest.raises(ValueError, match="brightness must be in"):
    Augmentation(brightness=1.5)
  with pytest.raises(ValueError, match="greyscale_probability"):
    Augmentation(greyscale_probability=2)
  with pytest.raises(ValueError, match=r"downscale_range must be \(low, high\) with 0 < low <= high <= 1"):
    Augmentation(downscale_range=(0.5, 1.5))
  with pytest.raises(ValueError, match="one key per image"):
    augment.augment_batch(augment.example_keys(0, 0, jnp.arange(3)), _random_images(4), FULL)
  with pytest.raises(ValueError, match=r"\[batch, height, width, 3\]"):
    augment.augment_batch(augment.example_keys(0, 0, jnp.arange(4)), _random_images(4)[..., 0], FULL)
