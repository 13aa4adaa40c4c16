"""FG-NET: 1002 face images of 82 subjects aged 0-69, with 68 manual landmarks each.

Built from a manual directory (the data cannot be downloaded without a
browser): ``tfds build datasets/fgnet --manual_dir=DIR --data_dir=DIR``, or
from Python (see README.md). Written as array_record, read with
``tfds.data_source`` or ``builder.as_data_source()`` without TensorFlow.

One ``train`` split: folds (leave-one-subject-out, grouped k-fold) are chosen
at load time with :mod:`amr_jax.folds` on the ``subject_id`` feature.
"""

import io
import pathlib
import zipfile

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from amr_jax import fgnet

_MANUAL = f"""\
{fgnet.DOWNLOAD_INSTRUCTIONS}
The manual directory may hold the extracted `FGNET/` folder or `FGNET.zip` itself."""


class Builder(tfds.core.GeneratorBasedBuilder):
  """FG-NET with subject ids and landmarks."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: whole images, RGB, 68 landmarks."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            # The original JPEG bytes; the 175 greyscale images are stored as RGB (re-encoded, quality 95).
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "age": np.int32,
            "subject_id": np.int32,
            "file_name": tfds.features.Text(),
            # (x, y) pixel coordinates in the stored image, FG-NET's 68-point markup.
            "landmarks": tfds.features.Tensor(shape=(fgnet.NUM_LANDMARKS, 2), dtype=np.float32),
        }),
        supervised_keys=("image", "age"),
        homepage="https://yanweifu.github.io/FG_NET_data/",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = _manual_root(pathlib.Path(dl_manager.manual_dir), pathlib.Path(dl_manager.download_dir))
    return {"train": self._generate_examples(root)}

  def _generate_examples(self, root):
    for image in fgnet.index_images(root):
      yield image.file_name, {
          "image": _rgb_jpeg_bytes(image.image_path),
          "age": image.age,
          "subject_id": image.subject_id,
          "file_name": image.file_name,
          "landmarks": fgnet.read_landmarks(image.landmarks_path),
      }


def _manual_root(manual_dir: pathlib.Path, download_dir: pathlib.Path) -> pathlib.Path:
  """The FG-NET folder in the manual directory, or in FGNET.zip there (extracted under ``download_dir``)."""
  # TFDS itself rejects a missing or empty manual directory, quoting MANUAL_DOWNLOAD_INSTRUCTIONS.
  try:
    return fgnet.find_root(manual_dir)
  except FileNotFoundError:
    archives = sorted(manual_dir.glob("*.zip"))
    if not archives:
      raise
  extracted = download_dir / "fgnet_extracted"  # the manual directory may be read-only
  for archive in archives:
    try:
      with zipfile.ZipFile(archive) as handle:
        handle.extractall(extracted)
    except zipfile.BadZipFile as error:
      raise ValueError(f"{archive}: not a readable zip archive ({error}).") from error
  return fgnet.find_root(extracted)


def _rgb_jpeg_bytes(path: pathlib.Path) -> bytes:
  data = path.read_bytes()
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      image.load()
      if image.mode == "RGB" and image.format == "JPEG":
        return data
      buffer = io.BytesIO()
      image.convert("RGB").save(buffer, format="JPEG", quality=95)
      return buffer.getvalue()
  except (OSError, PIL.UnidentifiedImageError) as error:
    raise ValueError(f"{path}: cannot decode this image ({error}).") from error
