"""Training augmentation as jitted JAX ops on a uint8 batch, inside the training step.

Where it runs, by measurement (``python -m benchmarks.input_speed``, README
"Input pipeline"; batch 64, every operation on): on this 2-core CPU the jitted
batch delivers 530 images/s at 112 px and 138 at 224 px, the same operations
per image with PIL on the host 915 and 354 per core. Either is over 40 times
what a training step consumes on this CPU (ResNet-18 at 112 px trains at about
12 images/s), so the CPU does not decide it. On an accelerator the jitted
version runs beside the network on the accelerator, while PIL at ~900
images/s per core would tie a fast GPU to several host cores (GPU figures are
not measured here: this task had no GPU). And on the device the draws depend only on ``(seed, step, position)``,
not on host threads. So the host pipeline (:mod:`amr_jax.data.input_pipeline`)
stays a pure index gather, and this module runs on the device, under
``pmap``, in the training step.

Randomness is a function of ``(seed, step, position in the global batch)``
only: each example's key is ``fold_in(fold_in(key(seed), step), position)``.
So the augmented batch does not depend on how the batch is split over devices
or processes, and a resumed run sees exactly what an uninterrupted run sees.

The operations, each off unless its field is set (off costs nothing: the
choice is made when tracing), in the order they run:

- DLDL-v2's loss of resolution (:func:`down_and_up`): shrunk to a random whole
  number of rows in ``downscale_range`` (fractions of the side), enlarged back;
  its key is folded in apart, so the other operations draw as they did before it;
- one affine warp (bilinear, black outside) combining scale jitter (zoom
  ``s ~ U[scale_range]``, ``s > 1`` zooms in, the random-resized-crop of a
  square face crop), rotation (``U[-max_rotation_degrees, +...]``, positive is
  counter-clockwise on screen) and translation (``U[-max_translation,
  +max_translation]`` of the side, each axis);
- horizontal flip with probability 1/2;
- colour jitter as torchvision's ``ColorJitter`` (without hue): brightness,
  contrast and saturation factors ``U[1 - x, 1 + x]``; brightness multiplies,
  contrast blends with the mean grey level, saturation with the image's grey
  version; applied in that fixed order, clipped to [0, 1] between steps;
- greyscale (Rec. 601 luma in all three channels) with ``greyscale_probability``.

Float images are augmented in their own dtype. uint8 images become JAX's
default float type: float32, or float64 under ``jax_enable_x64`` (the exact
equality tests of the training step run there).

Hand-written rather than dm-pix, by measurement: dm-pix's ``affine_transform``
was 47x slower on XLA:CPU than the 2-D bilinear warp here (it interpolates over
the channel axis too), and its HSV-based saturation/hue, fused under ``jit``
after a warp, picked the wrong hue branch for 4% of pixels (float equality
tests in the RGB->HSV conversion), changing colours by up to 0.89. Hue jitter
is left out for that reason.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Which augmentations to apply, and how strongly; the default applies none."""

  flip: bool = False
  scale_range: tuple[float, float] = (1.0, 1.0)
  max_rotation_degrees: float = 0.0
  max_translation: float = 0.0
  brightness: float = 0.0
  contrast: float = 0.0
  saturation: float = 0.0
  greyscale_probability: float = 0.0
  # DLDL-v2's resolution loss: the image shrunk to a side drawn from this range (fractions of its side; the
  # official (112, 224) of 224 px is (0.5, 1.0)), then enlarged back; (1, 1) is off.
  downscale_range: tuple[float, float] = (1.0, 1.0)

  def __post_init__(self):
    low, high = self.scale_range
    if not 0 < low <= high:
      raise ValueError(f"scale_range must be (low, high) with 0 < low <= high; got {self.scale_range}.")
    low, high = self.downscale_range
    if not 0 < low <= high <= 1:
      raise ValueError(f"downscale_range must be (low, high) with 0 < low <= high <= 1; got {self.downscale_range}.")
    for name in ("max_rotation_degrees", "max_translation", "brightness", "contrast", "saturation"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}.")
    for name in ("brightness", "contrast", "saturation"):
      if getattr(self, name) > 1:
        raise ValueError(f"{name} must be in [0, 1] (factors U[1 - x, 1 + x]); got {getattr(self, name)}.")
    if not 0 <= self.greyscale_probability <= 1:
      raise ValueError(f"greyscale_probability must be in [0, 1]; got {self.greyscale_probability}.")

  @property
  def warps(self) -> bool:
    return self.scale_range != (1.0, 1.0) or self.max_rotation_degrees > 0 or self.max_translation > 0


def to_float(images: jax.Array) -> jax.Array:
  """uint8 images to floats in [0, 1] (the evaluation view: no augmentation).

  The floats are JAX's default float type: float32, or float64 under ``jax_enable_x64``.
  """
  return images.astype(jnp.result_type(float)) / 255.0


def flip_left_right(images: jax.Array) -> jax.Array:
  """Mirrors ``[..., H, W, C]`` images (test-time flip averaging)."""
  return images[..., ::-1, :]


def example_keys(seed: int | jax.Array, step: int | jax.Array, positions: jax.Array) -> jax.Array:
  """One key per example from ``(seed, step, position in the global batch)``."""
  step_key = jax.random.fold_in(jax.random.key(seed), step)
  return jax.vmap(lambda position: jax.random.fold_in(step_key, position))(positions)


def augment_batch(keys: jax.Array, images: jax.Array, augmentation: Augmentation) -> jax.Array:
  """Augments ``images`` ``[B, H, W, 3]`` (uint8 or float in [0, 1]) with one key each; floats in [0, 1].

  uint8 images are converted with :func:`to_float`; float images keep their dtype.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be [batch, height, width, 3]; got shape {images.shape}.")
  if keys.shape[:1] != images.shape[:1]:
    raise ValueError(f"need one key per image; got {keys.shape[0]} keys for {images.shape[0]} images.")
  if images.dtype == jnp.uint8:
    images = to_float(images)
  return jax.vmap(lambda key, image: augment_image(key, image, augmentation))(keys, images)


def augment_image(key: jax.Array, image: jax.Array, augmentation: Augmentation) -> jax.Array:
  """One float ``[H, W, 3]`` image in [0, 1], augmented with ``key``."""
  a = augmentation
  uniform = functools.partial(jax.random.uniform, dtype=image.dtype)
  (flip_key, scale_key, angle_key, shift_key, brightness_key, contrast_key, saturation_key,
   grey_key) = jax.random.split(key, 8)
  if a.downscale_range != (1.0, 1.0):
    # A key of its own, folded in: the other operations keep the keys they had before this one existed.
    image = down_and_up(image, jax.random.fold_in(key, 8), a.downscale_range)
  if a.warps:
    scale = uniform(scale_key, minval=a.scale_range[0], maxval=a.scale_range[1])
    angle = uniform(angle_key, minval=-1.0, maxval=1.0) * math.radians(a.max_rotation_degrees)
    shift = uniform(shift_key, (2,), minval=-1.0, maxval=1.0) * a.max_translation
    image = warp(image, scale=scale, angle=angle, shift=shift)
  if a.flip:
    image = jnp.where(jax.random.bernoulli(flip_key), flip_left_right(image), image)
  if a.brightness:
    image = image * uniform(brightness_key, minval=1 - a.brightness, maxval=1 + a.brightness)
  if a.contrast:
    factor = uniform(contrast_key, minval=1 - a.contrast, maxval=1 + a.contrast)
    image = jnp.clip(image, 0.0, 1.0)
    mean = jnp.mean(greyscale(image))
    image = mean + factor * (image - mean)
  if a.saturation:
    factor = uniform(saturation_key, minval=1 - a.saturation, maxval=1 + a.saturation)
    image = jnp.clip(image, 0.0, 1.0)
    grey = greyscale(image)
    image = grey + factor * (image - grey)
  if a.greyscale_probability:
    image = jnp.where(jax.random.bernoulli(grey_key, a.greyscale_probability),
                      jnp.broadcast_to(greyscale(image), image.shape), image)
  return jnp.clip(image, 0.0, 1.0)


def down_and_up(image: jax.Array, key: jax.Array, side_range: tuple[float, float]) -> jax.Array:
  """Shrinks a ``[H, W, C]`` image to a random whole number of rows ``n`` and back (bicubic, antialiased).

  ``n`` is uniform over the whole numbers in ``[side_range[0] * H, side_range[1] * H]`` (at least 1), as DLDL-v2's
  code draws the short side; the columns shrink by the same factor ``n / H``. The array keeps its shape (``jit``
  needs it): the small image fills its top-left corner, its last row and column are repeated beyond, and the
  enlargement reads that corner only.
  """
  height, width = image.shape[:2]
  low = max(1, math.ceil(side_range[0] * height - 1e-9))
  high = max(low, math.floor(side_range[1] * height + 1e-9))
  rows = jax.random.randint(key, (), low, high + 1)
  factor = rows.astype(image.dtype) / height
  spatial = (0, 1)
  small = jax.image.scale_and_translate(image, image.shape, spatial, jnp.stack([factor, factor]),
                                        jnp.zeros(2, image.dtype), "cubic", antialias=True)
  columns = jnp.maximum(1, jnp.floor(factor * width).astype(jnp.int32))
  small = small[jnp.minimum(jnp.arange(height), rows - 1)][:, jnp.minimum(jnp.arange(width), columns - 1)]
  return jax.image.scale_and_translate(small, image.shape, spatial, jnp.stack([1 / factor, 1 / factor]),
                                       jnp.zeros(2, image.dtype), "cubic", antialias=True)


def greyscale(image: jax.Array) -> jax.Array:
  """Rec. 601 luma ``[..., 1]`` (0.299 R + 0.587 G + 0.114 B, as PIL and torchvision)."""
  return image @ jnp.array([[0.299], [0.587], [0.114]], image.dtype)


def warp(image: jax.Array, *, scale: jax.Array | float, angle: jax.Array | float,
         shift: jax.Array | tuple[float, float]) -> jax.Array:
  """Zooms by ``scale``, rotates by ``angle`` (radians, counter-clockwise on screen) about the centre,
  then moves by ``shift`` (fractions of height and width, down and right); bilinear, black outside."""
  height, width = image.shape[:2]
  dtype = image.dtype
  centre = jnp.array([(height - 1) / 2, (width - 1) / 2], dtype)
  cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
  # Output (row, col) to input (row, col): undo the shift, then the rotation and zoom. With rows
  # growing downwards a counter-clockwise turn on screen is [[c, -s], [s, c]] from input to
  # output, so the inverse (its transpose) maps output to input.
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=dtype), jnp.arange(width, dtype=dtype), indexing="ij")
  y = rows - centre[0] - jnp.asarray(shift, dtype)[0] * height
  x = cols - centre[1] - jnp.asarray(shift, dtype)[1] * width
  return _bilinear(image, cos * y + sin * x + centre[0], -sin * y + cos * x + centre[1])


def _bilinear(image: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """``image`` sampled at fractional ``(rows, cols)``; zero outside.

  Four whole-pixel gathers. dm-pix's ``affine_transform`` interpolates over the
  channel axis too (eight corners, one gather per value) and measured 47x
  slower on XLA:CPU (608 vs 13 ms for 64 images at 112 px).
  """
  height, width = image.shape[:2]
  row0, col0 = jnp.floor(rows), jnp.floor(cols)
  row_frac, col_frac = rows - row0, cols - col0
  row0, col0 = row0.astype(jnp.int32), col0.astype(jnp.int32)
  out = jnp.zeros(rows.shape + image.shape[2:], image.dtype)
  for row_step, row_weight in ((0, 1 - row_frac), (1, row_frac)):
    for col_step, col_weight in ((0, 1 - col_frac), (1, col_frac)):
      r, c = row0 + row_step, col0 + col_step
      inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
      pixels = image[jnp.clip(r, 0, height - 1), jnp.clip(c, 0, width - 1)]
      out = out + (row_weight * col_weight * inside)[..., None] * pixels
  return out
