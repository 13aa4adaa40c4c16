"""The SCUT-FBP5500 TFDS builder: 5500 faces rated for attractiveness (1 to 5) by 60 raters each.

Built from a manual directory holding ``SCUT-FBP5500_v2/`` or its zip (the
release has no direct download link, so a manual directory with no copy is
refused with instructions): from Python with
:func:`amr_jax.data.tfds_builders.build`, or in a checkout with
``tfds build datasets/scut_fbp5500 --manual_dir=DIR --data_dir=DIR`` (that file
subclasses :class:`Builder`). Written as array_record, read with
``builder.as_data_source()`` without TensorFlow. The dataset's README (its
TFDS description) and CITATIONS.bib are in ``dataset_cards/scut_fbp5500/``
beside this module.

One ``train`` split holding every image: the published splits (5-fold
cross-validation, 60%/40%) are chosen at load time from the per-image
``cv_fold`` and ``split_60_40`` features, as FG-NET's folds are from
``subject_id``. The layout and its checks are :mod:`amr_jax.data.scut_fbp5500`'s.
"""

import collections

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from amr_jax.data import builder_common, dataset_sources, scut_fbp5500


class Builder(tfds.core.GeneratorBasedBuilder):
  """SCUT-FBP5500 with the mean and spread of the raters' scores, subsets and published splits."""

  name = "scut_fbp5500"  # else TFDS names a class called Builder after its package: "amr_jax"
  pkg_dir_path = builder_common.card_dir("scut_fbp5500")  # README.md and CITATIONS.bib
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: the 350x350 images, RGB; All_labels.txt's score, the raters' "
                            "spread and count; subset, 5-fold and 60/40 split of each image."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = scut_fbp5500.DOWNLOAD_INSTRUCTIONS

  def __init__(self, *, file_format=None, **kwargs):
    """Like any TFDS builder; ``file_format`` is array_record unless another is asked for (training reads
    array_record only)."""
    super().__init__(file_format=file_format, **kwargs)
    builder_common.default_file_format(self, file_format)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            # The original JPEG bytes; greyscale, CMYK or non-JPEG files are re-encoded as RGB JPEG (quality 95).
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "score_mean": np.float32,  # All_labels.txt's score, 1..5
            "score_std": np.float32,  # the raters' Rating values' population standard deviation (ddof=0)
            "num_ratings": np.int32,
            "file_name": tfds.features.Text(),  # e.g. AF1.jpg
            "subset": tfds.features.Text(),  # AF, AM, CF or CM: Asian/Caucasian, female/male
            "cv_fold": np.int32,  # 1..5: the cross_validation_<k> whose test_<k>.txt lists the image
            "split_60_40": tfds.features.Text(),  # "train" or "test"
        }),
        supervised_keys=("image", "score_mean"),
        homepage=scut_fbp5500.HOMEPAGE,
        # What the ratings file held, and where its means disagree with the labels: filled by _split_generators.
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = dataset_sources.raw_data_root(dl_manager, name="scut_fbp5500", find_root=scut_fbp5500.find_root,
                                         instructions=scut_fbp5500.DOWNLOAD_INSTRUCTIONS)
    builder_common.record_source(self.data_dir, dataset_sources.manual_dir_or_none(dl_manager))
    release = scut_fbp5500.read_release(root)
    self.info.metadata.update(_report(release))
    if release.disagreements:
      # Kept, not refused: the release's labels are what published results were measured against.
      logging.warning("scut_fbp5500: the scores of %d image(s) in %s differ from the mean of their ratings in %s "
                      "by more than %g; the scores are kept (listed in metadata.json, label_rating_disagreements): "
                      "%s",
                      len(release.disagreements), scut_fbp5500.LABELS_FILE, release.ratings.path.name,
                      scut_fbp5500.MEAN_TOLERANCE, scut_fbp5500.describe_names(release.disagreements))
    return {"train": self._generate_examples(release.images)}

  def _generate_examples(self, images):
    for image in images:
      yield image.file_name, {
          "image": dataset_sources.rgb_jpeg_bytes(image.path),
          "score_mean": image.score_mean,
          "score_std": image.score_std,
          "num_ratings": image.num_ratings,
          "file_name": image.file_name,
          "subset": image.subset,
          "cv_fold": image.cv_fold,
          "split_60_40": image.split_60_40,
      }


def _report(release: scut_fbp5500.ScutRelease) -> dict:
  """The build's metadata.json: counts per subset, what the ratings file held, and the label/rating
  disagreements."""
  subsets = collections.Counter(image.subset for image in release.images)
  ratings = release.ratings
  return {
      "num_images": len(release.images),
      "subset_counts": {subset: subsets[subset] for subset in scut_fbp5500.SUBSETS},
      "ratings_file": ratings.path.name,
      "rating_sheets": list(ratings.sheets),
      "ratings_read": ratings.rows,
      "duplicate_ratings_skipped": ratings.duplicates,
      "score_std_ddof": 0,
      "disagreement_tolerance": scut_fbp5500.MEAN_TOLERANCE,
      "label_rating_disagreements": release.disagreements,
  }
