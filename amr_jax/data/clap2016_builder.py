"""The CLAP2016 TFDS builder: ChaLearn LAP 2016 apparent age (the APPA-REAL release), 7591 images in train/valid/test.

Built from a manual directory holding ``appa-real-release/`` or
``appa-real-release.zip`` (or, when it holds neither, from the public zip):
from Python with :func:`amr_jax.data.tfds_builders.build`, or in a checkout with
``tfds build datasets/clap2016 --config=face --manual_dir=DIR --data_dir=DIR``
(that file subclasses :class:`Builder`). Written as array_record, read with
``builder.as_data_source()`` without TensorFlow. The dataset's README (its
TFDS description) and CITATIONS.bib are in ``dataset_cards/clap2016/`` beside
this module.

Configs: ``face`` (default; the release's face crops) and ``whole`` (the whole
photographs). Options that change the content (an ignore list, a ``min_size``
other than 32) give a derived config with its own name, e.g.
``face_ignore_<sha256 prefix>``, so such a build never shares a prepared
directory with a plain one. From the command line pass them as JSON:
``--config='{"name": "face", "ignore_list": "/path/ignore_list.txt"}'``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from absl import logging
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from amr_jax import errors
from amr_jax.data import builder_common, clap2016, dataset_sources

# Tried only when the manual directory holds no copy (see amr_jax.data.dataset_sources).
DOWNLOAD_URL = clap2016.DOWNLOAD_URL

# The reference code drops an image when its RGB array has fewer than 3 * 32 * 32
# values, i.e. fewer pixels than a 32x32 image (a 20x60 image is kept).
DEFAULT_MIN_SIZE = 32
# Where the AMR code's instructions put the list; found there, it is announced, never applied unasked.
IGNORE_LIST_FILE_NAME = "ignore_list.txt"

_CROP_FILES = {"face": "NNNNNN.jpg_face.jpg, the release's face crop (detected, rotated, 40% margin)",
               "whole": "NNNNNN.jpg, the whole photograph"}


@dataclasses.dataclass(eq=False)
class Clap2016Config(tfds.core.BuilderConfig):
  """Which image file to store, and which images to leave out.

  Attributes:
    crop: ``"face"`` or ``"whole"``; ``None`` takes it from ``name`` (so the
      command line's ``--config='{"name": "face", ...}'`` works).
    min_size: images with fewer pixels than a ``min_size`` x ``min_size``
      image are dropped from every split; 0 keeps all.
    ignore_list: path of a file of train image names to drop (one per line).
  """

  crop: str | None = None
  min_size: int = DEFAULT_MIN_SIZE
  ignore_list: str | None = None


class Builder(tfds.core.GeneratorBasedBuilder):
  """CLAP2016 (APPA-REAL release) with apparent-age mean, std, rating count and real age."""

  name = "clap2016"  # else TFDS names a class called Builder after its package: "amr_jax"
  pkg_dir_path = builder_common.card_dir("clap2016")  # README.md and CITATIONS.bib
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: face or whole images, RGB; optional ignore list; "
                            "images with fewer pixels than 32x32 dropped."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = clap2016.DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      Clap2016Config(name=crop, crop=crop, description=f"{_CROP_FILES[crop]}; no ignore list; "
                     f"images with fewer pixels than {DEFAULT_MIN_SIZE}x{DEFAULT_MIN_SIZE} dropped.")
      for crop in clap2016.CROPS
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "face"

  def __init__(self, *, ignore_list: str | os.PathLike | None = None, min_size: int | None = None,
               config: str | Clap2016Config | None = None, file_format=None, **kwargs):
    """Like any TFDS builder, plus the options that select images.

    Args:
      ignore_list: path of an ignore list (one train image name per line),
        e.g. yu4u/age-gender-estimation's 118-name ``ignore_list.txt``.
      min_size: drop images with fewer pixels than ``min_size**2`` (default 32; 0 keeps all).
      config: ``"face"`` (default), ``"whole"``, or a :class:`Clap2016Config`.
      file_format: array_record unless another is asked for (training reads array_record only).
      **kwargs: passed to ``tfds.core.GeneratorBasedBuilder`` (``data_dir``, ...).
    """
    config, self._ignore_list = _resolve_config(config, ignore_list=ignore_list, min_size=min_size)
    super().__init__(config=config, file_format=file_format, **kwargs)
    builder_common.default_file_format(self, file_format)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            # The original JPEG bytes; greyscale, CMYK or non-JPEG files are re-encoded as RGB JPEG (quality 95).
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "apparent_age_mean": np.float32,  # gt_avg_<split>.csv's apparent_age_avg
            "apparent_age_std": np.float32,
            "real_age": np.int32,  # whole years in the release
            "num_ratings": np.int32,
            "file_name": tfds.features.Text(),  # NNNNNN.jpg, whichever crop is stored
        }),
        supervised_keys=("image", "apparent_age_mean"),
        homepage="https://chalearnlap.cvc.uab.cat/dataset/26/description/",
        # What was dropped (and why) is known only once the data is read: filled by _split_generators.
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = dataset_sources.raw_data_root(dl_manager, name="clap2016", find_root=clap2016.find_root,
                                         instructions=clap2016.DOWNLOAD_INSTRUCTIONS, download_url=DOWNLOAD_URL)
    builder_common.record_source(self.data_dir, dataset_sources.manual_dir_or_none(dl_manager))
    config = self.builder_config
    self._announce_unused_ignore_list(dl_manager, root)
    images = {split: clap2016.read_split(root, split, crop=config.crop) for split in clap2016.SPLITS}
    report = {"crop": config.crop, "csv_rows": {split: len(images[split]) for split in images}}
    if self._ignore_list is not None:
      images, report["ignore_list"] = _apply_ignore_list(images, self._ignore_list)
    images, report["dropped_too_small"] = _drop_small_images(images, config.crop, config.min_size)
    report["min_size"] = config.min_size
    self.info.metadata.update(report)
    return {split: self._generate_examples(images[split]) for split in clap2016.SPLITS}

  def _generate_examples(self, images):
    for image in images:
      yield image.file_name, {
          "image": dataset_sources.rgb_jpeg_bytes(image.path(self.builder_config.crop)),
          "apparent_age_mean": image.apparent_age_mean,
          "apparent_age_std": image.apparent_age_std,
          "real_age": image.real_age,
          "num_ratings": image.num_ratings,
          "file_name": image.file_name,
      }

  def _announce_unused_ignore_list(self, dl_manager, root: pathlib.Path) -> None:
    if self._ignore_list is not None:
      return
    folders = [folder for folder in (dataset_sources.manual_dir_or_none(dl_manager), root) if folder]
    for path in dict.fromkeys((folder / IGNORE_LIST_FILE_NAME).resolve() for folder in folders):
      if path.is_file():
        logging.warning("clap2016: %s is NOT applied: config %r builds without an ignore list. To apply it, "
                        "pass ignore_list=%r (Python) or --config='{\"name\": \"%s\", \"ignore_list\": \"%s\"}' "
                        "(tfds build); that build gets its own config name and directory.",
                        path, self.builder_config.name, str(path), self.builder_config.crop, path)


def _resolve_config(config, *, ignore_list, min_size) -> tuple[str | Clap2016Config, clap2016.IgnoreList | None]:
  """The config to build (a registered name, or a derived config named after its options) and the list."""
  if config is None:
    config = Builder.DEFAULT_BUILDER_CONFIG_NAME
  if isinstance(config, str):
    crop, config_ignore, config_min = config, None, DEFAULT_MIN_SIZE
  elif isinstance(config, Clap2016Config):
    crop, config_ignore, config_min = config.crop or config.name, config.ignore_list, config.min_size
  else:
    raise TypeError(f"config must be a name or a Clap2016Config, got {type(config).__name__}.")
  if crop not in clap2016.CROPS:
    raise ValueError(f"unknown CLAP2016 config {crop!r}; expected one of {', '.join(clap2016.CROPS)}, with "
                     "ignore_list= / min_size= for the derived ones (to read a prepared one directly, use "
                     "tfds.builder_from_directory on its folder).")
  ignore_list = ignore_list if ignore_list is not None else config_ignore
  min_size = min_size if min_size is not None else config_min
  if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
    raise ValueError(f"min_size must be a whole number >= 0 (0 keeps every image), got {min_size!r}.")
  if ignore_list is None and min_size == DEFAULT_MIN_SIZE:
    return crop, None
  parsed = clap2016.read_ignore_list(ignore_list) if ignore_list is not None else None
  return Clap2016Config(name=_derived_name(crop, min_size, parsed), crop=crop, min_size=min_size,
                        ignore_list=str(parsed.path) if parsed else None,
                        description=_derived_description(crop, min_size, parsed)), parsed


def _derived_name(crop: str, min_size: int, ignore_list: clap2016.IgnoreList | None) -> str:
  # The list's hash, not its path, names the directory: two different lists can never share one.
  name = crop if min_size == DEFAULT_MIN_SIZE else f"{crop}_min{min_size}"
  return f"{name}_ignore_{ignore_list.sha256[:12]}" if ignore_list else name


def _derived_description(crop: str, min_size: int, ignore_list: clap2016.IgnoreList | None) -> str:
  size = (f"images with fewer pixels than {min_size}x{min_size} dropped" if min_size else "no image dropped for size")
  listed = (f"train without the images named in ignore list {ignore_list.path} (sha256 {ignore_list.sha256}, "
            f"{len(ignore_list.names)} names)" if ignore_list else "no ignore list")
  return f"{_CROP_FILES[crop]}; {listed}; {size}. Dropped file names: metadata.json."


def _apply_ignore_list(images: dict, ignore_list: clap2016.IgnoreList) -> tuple[dict, dict]:
  result = clap2016.apply_ignore_list(images, ignore_list.names)
  logging.warning("clap2016: ignore list %s (sha256 %s, %d names) drops %d train images: %s",
                  ignore_list.path, ignore_list.sha256, len(ignore_list.names), len(result.dropped),
                  ", ".join(result.dropped) or "none")
  if result.not_in_train:
    logging.warning("clap2016: %d names of ignore list %s are not train images, so nothing is dropped for them "
                    "(the list applies to train only): %s", len(result.not_in_train), ignore_list.path,
                    ", ".join(f"{name} ({split})" for name, split in result.not_in_train.items()))
  report = {"path": str(ignore_list.path), "sha256": ignore_list.sha256, "count": len(ignore_list.names),
            "dropped_from_train": list(result.dropped), "not_in_train": result.not_in_train}
  return {**images, "train": list(result.train)}, report


def _drop_small_images(images: dict, crop: str, min_size: int) -> tuple[dict, dict]:
  kept, dropped = {}, {}
  for split, split_images in images.items():
    small = {image.file_name for image in split_images if _pixel_count(image.path(crop)) < min_size * min_size}
    kept[split] = [image for image in split_images if image.file_name not in small]
    dropped[split] = [image.file_name for image in split_images if image.file_name in small]
  count = sum(map(len, dropped.values()))
  if count:
    logging.warning("clap2016: dropped %d images with fewer pixels than %dx%d (%s files), as the reference code "
                    "does: %s", count, min_size, min_size, crop,
                    "; ".join(f"{split}: {', '.join(names)}" for split, names in dropped.items() if names))
  return kept, dropped


def _pixel_count(path: pathlib.Path) -> int:
  # Reads the header only: cheap enough to size every image before writing any.
  try:
    with PIL.Image.open(path) as image:
      width, height = image.size
  except (OSError, PIL.UnidentifiedImageError) as error:
    raise errors.DataError(f"{path}: cannot decode this image ({error}).") from error
  return width * height

