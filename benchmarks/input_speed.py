"""Input pipeline speed: dataset build times, then images per second delivered at 112 and 224 px.

  python -m benchmarks.input_speed [--fgnet_manual_dir=../shared/data/fgnet] [--repeats=5]

Measured (medians of ``--repeats`` runs, batch 64):
- building FG-NET (TFDS, from the manual directory) and the dummy CLAP2016;
- decoding the built FG-NET once into memory (aligned crop), per image size;
- the host pipeline alone (``train_batches``: index gather of uint8 arrays);
- augmentation with every operation on (flip, scale, rotation, translation,
  colour jitter, greyscale): jitted on the device (``amr_jax.data.augment``), and the
  same operations per image with PIL on the host, the alternative it replaced;
- without augmentation: the uint8 -> float conversion only.

The host pipeline is single-threaded NumPy, so its figure is per core; the
jitted augmentation uses every core XLA gives it (2 here), so it is also
reported per core.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import PIL.ImageEnhance

from amr_jax.data import augment
from amr_jax.data import decoding, input_pipeline
from amr_jax.data import tfds_builders
from benchmarks.timing import median_time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH = 64
FULL = augment.Augmentation(flip=True, scale_range=(0.9, 1.2), max_rotation_degrees=15, max_translation=0.05,
                            brightness=0.4, contrast=0.4, saturation=0.4, greyscale_probability=0.2)


def _pil_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """The same operations as FULL, per image with PIL (the host-side alternative)."""
  size = image.shape[0]
  picture = PIL.Image.fromarray(image)
  scale, angle = rng.uniform(0.9, 1.2), np.radians(rng.uniform(-15, 15))
  shift = rng.uniform(-0.05, 0.05, 2) * size
  c = (size - 1) / 2
  cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
  # PIL's AFFINE maps output (x, y) to input: x_in = a x + b y + c0, y_in = d x + e y + f.
  a, b, d, e = cos, -sin, sin, cos
  c0 = c - a * (c + shift[1]) - b * (c + shift[0])
  f = c - d * (c + shift[1]) - e * (c + shift[0])
  picture = picture.transform((size, size), PIL.Image.Transform.AFFINE, (a, b, c0, d, e, f),
                              resample=PIL.Image.Resampling.BILINEAR)
  if rng.random() < 0.5:
    picture = picture.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
  picture = PIL.ImageEnhance.Brightness(picture).enhance(rng.uniform(0.6, 1.4))
  picture = PIL.ImageEnhance.Contrast(picture).enhance(rng.uniform(0.6, 1.4))
  picture = PIL.ImageEnhance.Color(picture).enhance(rng.uniform(0.6, 1.4))
  if rng.random() < 0.2:
    picture = picture.convert("L").convert("RGB")
  return np.asarray(picture, np.float32) / 255


def main():
  parser = argparse.ArgumentParser(prog="python -m benchmarks.input_speed", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--fgnet_manual_dir", default=str(ROOT.parent / "shared" / "data" / "fgnet"))
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=20, help="batches per timed run")
  args = parser.parse_args()
  cores = os.cpu_count()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {cores} CPU cores, batch {BATCH}, "
        f"medians of {args.repeats}")

  work = pathlib.Path(tempfile.mkdtemp(prefix="input_speed_"))
  start = time.perf_counter()
  fgnet = tfds_builders.build("fgnet", manual_dir=args.fgnet_manual_dir, data_dir=work)
  fgnet_seconds = time.perf_counter() - start
  start = time.perf_counter()
  tfds_builders.build("clap2016", manual_dir=ROOT / "datasets" / "clap2016" / "dummy_data", data_dir=work)
  clap_seconds = time.perf_counter() - start
  print(f"build FG-NET (1002 images) from {args.fgnet_manual_dir}: {fgnet_seconds:.1f} s")
  print(f"build CLAP2016 dummy_data (10 images; no real copy here): {clap_seconds:.1f} s")

  print("| image size | decode FG-NET once (s) | host pipeline, no augmentation (img/s/core) | "
        "jitted augmentation (img/s, img/s/core) | PIL augmentation on the host (img/s/core) | "
        "uint8 -> float only (img/s) |")
  print("| --- | --- | --- | --- | --- | --- |")
  for size in (112, 224):
    start = time.perf_counter()
    arrays = decoding.load_fgnet_arrays(str(fgnet.data_dir), crop="aligned",
                                              image_size=size)
    decode_seconds = time.perf_counter() - start
    arrays = {"image": arrays["image"], "age": arrays["age"]}

    def host(steps=args.steps):
      stream = input_pipeline.train_batches(arrays, global_batch=BATCH, seed=0)
      for _ in range(steps):
        next(stream)

    host_rate = args.steps * BATCH / median_time(host, 0, args.repeats)

    batch = next(input_pipeline.train_batches(arrays, global_batch=BATCH, seed=0))
    images, positions = jnp.asarray(batch["image"][0]), jnp.asarray(batch["position"][0])
    device_augment = jax.jit(lambda step: augment.augment_batch(augment.example_keys(0, step, positions),
                                                                images, FULL))
    to_float = jax.jit(augment.to_float)
    device_augment(0).block_until_ready()
    to_float(images).block_until_ready()

    def device(steps=args.steps):
      for step in range(steps):
        out = device_augment(step)
      out.block_until_ready()

    def convert(steps=args.steps):
      for _ in range(steps):
        out = to_float(images)
      out.block_until_ready()

    device_rate = args.steps * BATCH / median_time(device, 0, args.repeats)
    convert_rate = args.steps * BATCH / median_time(convert, 0, args.repeats)
    rng = np.random.default_rng(0)
    host_images = np.asarray(images)
    pil_rate = BATCH / median_time(lambda: [_pil_augment(image, rng) for image in host_images], 0, args.repeats)
    print(f"| {size} | {decode_seconds:.1f} | {host_rate:,.0f} | {device_rate:,.0f}, {device_rate / cores:,.0f} | "
          f"{pil_rate:,.0f} | {convert_rate:,.0f} |")


if __name__ == "__main__":
  main()
