"""One decoder for both datasets: a built TFDS split's examples, in file-name order, as uint8 crops and labels.

Both datasets are small enough to decode once into memory. The crop is one of

* ``"aligned"``: the eye-aligned face on the annotated eyes (FG-NET's 68 landmarks,
  :func:`amr_jax.faces.face_crop.aligned_face_crop`);
* ``"detected"``: the same on the eyes MTCNN finds (:mod:`amr_jax.data.detected_crops`; detected once and cached
  beside the build);
* ``"whole"`` (and CLAP2016's ``"face"``, whose build holds the release's face crops): the whole image squashed to a
  square (:func:`amr_jax.faces.face_crop.whole_image`), as the AMR paper.

Every result has ``image`` (uint8 ``[N, size, size, 3]``) and ``file_name``, and the dataset's labels:
FG-NET ``age`` and ``subject_id`` (int32); CLAP2016 ``age`` (the apparent-age mean) and ``age_std`` (float32) and
``real_age`` (int32); SCUT-FBP5500 ``age`` (the training label: the mean attractiveness score) and ``age_std`` (the
raters' spread), ``cv_fold`` (int32, 1..5) and ``split_60_40`` (bytes, ``b"train"`` or ``b"test"``). ``age`` and
``age_std`` are the label and its spread whatever the dataset labels.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from amr_jax import errors
from amr_jax.faces import face_crop

# Each dataset's label arrays: name -> (the TFDS feature, dtype).
LABELS = {
    "fgnet": {"age": ("age", np.int32), "subject_id": ("subject_id", np.int32)},
    "clap2016": {"age": ("apparent_age_mean", np.float32), "age_std": ("apparent_age_std", np.float32),
                 "real_age": ("real_age", np.int32)},
    "scut_fbp5500": {"age": ("score_mean", np.float32), "age_std": ("score_std", np.float32),
                     "cv_fold": ("cv_fold", np.int32), "split_60_40": ("split_60_40", "S5")},
}
CROPS = ("aligned", "detected", "whole", "face")


def decode_examples(examples: Sequence[dict[str, Any]], dataset: str, *, crop: str, image_size: int,
                    cache_dir: str, detection_prefix: str = "", eye_distance: float = 0.35, eye_y: float = 0.4,
                    log: Callable[[str], None] = print, log_prefix: str = "") -> dict[str, np.ndarray]:
  """``examples`` (TFDS dicts, in the order wanted) as crops and the ``dataset``'s labels.

  Args:
    cache_dir: where the ``detected`` crop's detections are cached (the build's folder).
    detection_prefix: put before each file name in that cache (CLAP2016's split, whose file names repeat).
    log, log_prefix: where the ``detected`` crop's progress and rule counts go, and what each line starts with.
  """
  if crop not in CROPS:
    raise ValueError(f"crop must be one of {', '.join(CROPS)}; got {crop!r}.")
  names = [example["file_name"].decode() for example in examples]
  if crop == "detected":
    from amr_jax.data import detected_crops  # pylint: disable=import-outside-toplevel  # loads MTCNN's weights

    photographs = [example["image"] for example in examples]
    found = detected_crops.detect_all(photographs, [detection_prefix + name for name in names], cache_dir, log=log)
    made = detected_crops.crops(photographs, found, image_size, eye_distance=eye_distance, eye_y=eye_y)
    log(log_prefix + detected_crops.summary(made))
    images = np.asarray(made.images)
  elif crop == "aligned":
    images = np.stack([face_crop.aligned_face_crop(e["image"], e["landmarks"], image_size, eye_distance=eye_distance,
                                                   eye_y=eye_y)[0] for e in examples])
  else:
    images = np.stack([face_crop.whole_image(e["image"], image_size) for e in examples])
  labels = {name: np.array([e[feature] for e in examples], dtype) for name, (feature, dtype) in LABELS[dataset].items()}
  return {"image": images, **labels, "file_name": np.array(names)}


def sorted_examples(source, what: str) -> list[dict[str, Any]]:
  """Every example of a TFDS data source, by file name; an empty source is refused, naming ``what``."""
  examples = sorted((source[i] for i in range(len(source))), key=lambda e: e["file_name"])
  if not examples:
    raise errors.DataError(f"{what} is empty.")
  return examples


def load_fgnet_arrays(dataset_dir: str, *, crop: str = "aligned", image_size: int = 112,
                      eye_distance: float = 0.35, eye_y: float = 0.4, log=print) -> dict[str, np.ndarray]:
  """A built FG-NET TFDS dataset (``<data_dir>/fgnet/1.0.0``), decoded once: ``image``, ``age``, ``subject_id``,
  ``file_name``, ordered by file name. ``crop``: ``"aligned"``, ``"detected"`` or ``"whole"``."""
  import tensorflow_datasets as tfds  # only for loading; reading needs no TensorFlow

  from amr_jax.data import tfds_builders  # pylint: disable=import-outside-toplevel

  if crop not in ("aligned", "detected", "whole"):
    raise ValueError(f"crop must be 'aligned', 'detected' or 'whole'; got {crop!r}.")
  try:
    builder = tfds.builder_from_directory(dataset_dir)
  except Exception as error:
    raise errors.MissingDataError(f"{dataset_dir}: not a built FG-NET dataset (build it as "
                                  f"amr_jax/data/dataset_cards/fgnet/README.md shows): {error}") from error
  tfds_builders.check_file_format(builder, tfds_builders.rebuild_command("fgnet"))
  examples = sorted_examples(builder.as_data_source()["train"], f"{dataset_dir}: split 'train'")
  return decode_examples(examples, "fgnet", crop=crop, image_size=image_size, cache_dir=dataset_dir,
                         eye_distance=eye_distance, eye_y=eye_y, log=log)


def scut_fbp5500_arrays(builder, image_size: int) -> dict[str, np.ndarray]:
  """The built SCUT-FBP5500 (one split of all 5500 faces, 350 px squares), decoded once, by file name."""
  examples = sorted_examples(builder.as_data_source()["train"], f"{builder.data_dir}: split 'train'")
  return decode_examples(examples, "scut_fbp5500", crop="whole", image_size=image_size, cache_dir=builder.data_dir)


def clap2016_arrays(builder, split: str, image_size: int, crop: str = "whole") -> dict[str, np.ndarray]:
  """A built CLAP2016 split decoded once (``crop``: ``"face"``, ``"whole"`` or ``"detected"``), by file name."""
  examples = sorted_examples(builder.as_data_source()[split], f"{builder.data_dir}: split {split!r}")
  return decode_examples(examples, "clap2016", crop=crop, image_size=image_size, cache_dir=builder.data_dir,
                         detection_prefix=f"{split}/", log=lambda line: print(line, flush=True),
                         log_prefix=f"CLAP2016 {split}: ")
