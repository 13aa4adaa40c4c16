"""The FG-NET TFDS builder: 1002 face images of 82 subjects aged 0-69, with 68 manual landmarks each.

Built from a manual directory holding ``FGNET/`` or ``FGNET.zip`` (or, when it
holds neither, from the public ``FGNET.zip``): from Python with
:func:`amr_jax.data.tfds_builders.build`, or in a checkout with
``tfds build datasets/fgnet --manual_dir=DIR --data_dir=DIR`` (that file
subclasses :class:`Builder`). Written as array_record unless another
``file_format`` is asked for, read with
``tfds.data_source`` or ``builder.as_data_source()`` without TensorFlow.
The dataset's README (its TFDS description) and CITATIONS.bib are in
``dataset_cards/fgnet/`` beside this module.

One ``train`` split: folds (leave-one-subject-out, grouped k-fold) are chosen
at load time with :mod:`amr_jax.data.folds` on the ``subject_id`` feature.
"""


import numpy as np
import tensorflow_datasets as tfds

from amr_jax.data import builder_common, dataset_sources, fgnet

# Tried only when the manual directory holds no copy (see amr_jax.data.dataset_sources).
DOWNLOAD_URL = "https://yanweifu.github.io/FG_NET_data/FGNET.zip"

_MANUAL = fgnet.DOWNLOAD_INSTRUCTIONS


class Builder(tfds.core.GeneratorBasedBuilder):
  """FG-NET with subject ids and landmarks."""

  name = "fgnet"  # else TFDS names a class called Builder after its package: "amr_jax"
  pkg_dir_path = builder_common.card_dir("fgnet")  # README.md and CITATIONS.bib
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: whole images, RGB, 68 landmarks."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format, **kwargs)
    builder_common.default_file_format(self, file_format)

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
    root = dataset_sources.raw_data_root(dl_manager, name="fgnet", find_root=fgnet.find_root,
                                         instructions=_MANUAL, download_url=DOWNLOAD_URL)
    builder_common.record_source(self.data_dir, dataset_sources.manual_dir_or_none(dl_manager))
    return {"train": self._generate_examples(root)}

  def _generate_examples(self, root):
    for image in fgnet.index_images(root):
      yield image.file_name, {
          "image": dataset_sources.rgb_jpeg_bytes(image.image_path),
          "age": image.age,
          "subject_id": image.subject_id,
          "file_name": image.file_name,
          "landmarks": fgnet.read_landmarks(image.landmarks_path),
      }

