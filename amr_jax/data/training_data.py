"""A run's data: build the TFDS dataset if needed, decode it once, and cut the fold's splits.

Both datasets are small enough to hold decoded in memory (FG-NET: 1002
images; CLAP2016: 7591), so each is decoded once per process into uint8
arrays of the run's image size, and every fold of a protocol is a set of
index arrays into them (:mod:`amr_jax.data.folds`).

Every array dict has ``image`` (uint8 ``[N, S, S, 3]``), ``age`` (float32,
the training label and the metrics compare with: FG-NET's real age,
CLAP2016's apparent-age mean, SCUT-FBP5500's mean attractiveness score) and ``file_name``; FG-NET adds
``subject_id``, CLAP2016 ``age_std`` (the votes' spread, for the
epsilon-error) and ``real_age``, SCUT-FBP5500 ``age_std`` (the raters' spread), ``cv_fold`` and ``split_60_40``
(its release's five folds and its 60/40 split).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import numpy as np

from amr_jax import errors, losses
from amr_jax.data import folds as folds_lib
from amr_jax.data import decoding, scut_fbp5500, tfds_builders

Arrays = dict[str, np.ndarray]
PROTOCOLS = {"fgnet": ("lopo", "kfold"), "clap2016": ("splits",), "scut_fbp5500": ("kfold", "splits")}
CROPS = {"fgnet": ("whole", "aligned", "detected"), "clap2016": ("face", "whole", "detected"),
         "scut_fbp5500": ("whole",)}
# SCUT-FBP5500's folds are its release's: kfold's fold f tests on cross_validation_{f + 1}.
SCUT_FBP5500_FOLDS = scut_fbp5500.NUM_FOLDS
# The TFDS build each crop decodes from: "detected" crops CLAP2016's whole photographs.
_BUILD_CONFIGS = {"face": "face", "whole": "whole", "detected": "whole"}


class LazySplit:
  """A split decoded when first read, then held: CLAP2016's test split, which a run reads once training has ended.

  Attributes:
    count: its number of examples (from the dataset's metadata, without reading it).
  """

  def __init__(self, load: Callable[[], dict[str, np.ndarray]], count: int, where: str):
    self._load, self.count, self.where, self._arrays = load, count, where, None

  def __call__(self) -> Arrays:
    """The split's arrays.

    Raises:
      errors.DataError: naming the split, when its files cannot be read (the run's checkpoints are kept: the same
        command evaluates them once the files are back).
    """
    if self._arrays is None:
      try:
        self._arrays = self._load()
      except errors.DataError:
        raise
      except Exception as error:  # whatever TFDS raises for a missing or damaged file
        raise errors.DataError(f"{self.where} cannot be read ({type(error).__name__}: {error}). The trained "
                               "checkpoints are kept: restore or rebuild the dataset (same data_dir), then run the "
                               "same command to evaluate them.") from None
    return self._arrays


@dataclasses.dataclass
class Fold:
  """One fold's training, validation (possibly empty) and test examples.

  The training examples are ``train_indices`` into ``train_source``, the arrays every fold of a run shares, so
  folds trained at once hold the images once and each gathers its own batches by index. The test examples are
  ``test_split``: arrays, or a :class:`LazySplit` that ``test`` reads.
  """

  name: str  # e.g. "subject 17", "fold 2 of 5", "test split"
  train_source: Arrays
  train_indices: np.ndarray
  validation: Arrays
  test_split: Arrays | LazySplit

  @property
  def test(self) -> Arrays:
    return self.test_split() if isinstance(self.test_split, LazySplit) else self.test_split

  @property
  def num_test(self) -> int:
    return self.test_split.count if isinstance(self.test_split, LazySplit) else len(self.test_split["age"])

  @property
  def train(self) -> Arrays:
    """The training examples as arrays of their own (a copy)."""
    return {name: value[self.train_indices] for name, value in self.train_source.items()}

  @property
  def num_train(self) -> int:
    return len(self.train_indices)


def _dirs(data) -> tuple[str, str]:
  data_dir = os.path.expanduser(data.data_dir or "~/tensorflow_datasets")
  manual_dir = os.path.expanduser(data.manual_dir or os.path.join(data_dir, "downloads", "manual"))
  return data_dir, manual_dir


def prepare(data, *, is_builder_process: bool = True, barrier=None):
  """Builds the dataset unless it is already built from the same raw files; returns the TFDS builder.

  With several processes, only the builder process builds; the others wait
  at ``barrier`` (a no-argument callable) and then find it built.
  """
  data_dir, manual_dir = _dirs(data)
  # An empty manual_dir means "the build as it is": its source is not compared with the default folder.
  kwargs: dict[str, Any] = {"check_manual_dir": bool(data.manual_dir)}
  config_name = None
  if data.name == "clap2016":
    config_name = _BUILD_CONFIGS[data.crop]
    if data.ignore_list:
      kwargs["ignore_list"] = os.path.expanduser(data.ignore_list)
  if is_builder_process:
    builder = tfds_builders.build(data.name, manual_dir=manual_dir, data_dir=data_dir, config=config_name, **kwargs)
  if barrier is not None:
    barrier()
  if not is_builder_process:
    builder = tfds_builders.build(data.name, manual_dir=manual_dir, data_dir=data_dir, config=config_name, **kwargs)
  return builder


def load_arrays(data, image_size: int, builder) -> dict[str, Arrays]:
  """The decoded dataset: ``{"all": arrays}`` for FG-NET; ``{split: arrays}`` for CLAP2016, whose ``test`` is a
  :class:`LazySplit`, decoded when first read.

  FG-NET's images are one TFDS split, decoded together; a fold's test subjects are only indexed.
  """
  if data.name == "fgnet":
    arrays = decoding.load_fgnet_arrays(os.fspath(builder.data_dir), crop=data.crop, image_size=image_size)
    arrays["age"] = arrays["age"].astype(np.float32)
    return {"all": arrays}
  if data.name == "scut_fbp5500":
    return {"all": decoding.scut_fbp5500_arrays(builder, image_size)}
  dataset: dict[str, Any] = {split: decoding.clap2016_arrays(builder, split, image_size, data.crop)
                             for split in ("train", "valid")}
  dataset["test"] = LazySplit(functools.partial(decoding.clap2016_arrays, builder, "test", image_size, data.crop),
                              builder.info.splits["test"].num_examples, f"{builder.data_dir}: split 'test'")
  return dataset


# The DLDL-v2 code makes an annotator spread of 0 (every guess equal) this, i.e. a one-hot target.
SIGMA_FLOOR = 1e-10
SIGMA_FIELDS = {"clap2016": ("age_std",), "fgnet": (), "scut_fbp5500": ("age_std",)}


def training_arrays(config, source: Arrays) -> Arrays:
  """What the training step gathers its batches from: ``image``, ``age``, and ``sigma`` with ``config.sigma_field``.

  ``sigma`` is the field floored at ``SIGMA_FLOOR`` (1e-10), as the DLDL-v2 code floors it.
  """
  arrays = {"image": source["image"], "age": source["age"]}
  if config.sigma_field:
    arrays["sigma"] = np.maximum(source[config.sigma_field], SIGMA_FLOOR).astype(source["age"].dtype)
  return arrays


def check_labels(config, dataset: dict[str, Arrays]) -> None:
  """Refuses labels whose class would be clamped: ``round((age - start_age) / label_step)`` outside
  ``0..num_classes - 1``.

  The losses clamp such labels silently (:func:`amr_jax.losses.label_class`); a run must not. The test is
  :func:`amr_jax.losses.check_label_range`'s; this names the image.

  Raises:
    errors.DataError: naming the dataset, how many images, the first of them with its age, and the range.
  """
  low, step = config.start_age, config.label_step
  high = low + step * (config.num_classes - 1)
  grid = (f"{config.num_classes} classes of ages {low:g}..{high:g} (config.start_age, config.num_classes)" if step == 1
          else f"{config.num_classes} classes of labels {low:g}..{high:g} in steps of {step:g} (config.start_age, "
          "config.label_step, config.num_classes)")
  noun = "age" if step == 1 else "label"
  for split, arrays in dataset.items():
    if isinstance(arrays, LazySplit):  # the test split, read after training; its ages are never made classes
      continue
    try:
      losses.check_label_range(arrays["age"], config.num_classes, start_age=low, label_step=step)
    except losses.LabelRangeError as error:
      name = arrays["file_name"][error.index] if "file_name" in arrays else f"example {error.index}"
      where = config.data.name if split == "all" else f"{config.data.name} {split}"
      classes = np.round((np.asarray(arrays["age"], np.float64) - low) / step)
      advice = (f"raise config.num_classes to {int(np.max(classes)) + 1}" if np.min(classes) >= 0
                else "lower config.start_age")
      raise errors.DataError(
          f"{where}: {error.count} image(s) have {noun}s outside the {grid}, e.g. {name} with {noun} "
          f"{error.label:g}; their labels would be clamped. To train on them, {advice}.") from None


def fold_ids(config, dataset: dict[str, Arrays]) -> list[int]:
  """The folds a run covers: ``[config.fold]``; those of ``config.folds``; or all of them."""
  if config.protocol == "splits":
    return [-1]
  every = all_fold_ids(config, dataset)
  if config.fold != -1:
    if config.fold not in every:
      raise errors.ConfigError(f"config.fold={config.fold} is not a fold of protocol {config.protocol!r}; "
                               f"valid: {every[0]}..{every[-1]} or -1 (all).")
    return [config.fold]
  if not config.get("folds", ""):
    return every
  wanted = folds_lib.parse_folds(config.folds)
  unknown = sorted(set(wanted) - set(every))
  if unknown:
    raise errors.ConfigError(f"config.folds={config.folds!r} names folds that protocol {config.protocol!r} does not "
                             f"have: {', '.join(map(str, unknown))} (valid: {every[0]}..{every[-1]}).")
  return wanted


def all_fold_ids(config, dataset: dict[str, Arrays]) -> list[int]:
  """Every fold of the protocol: the subject ids (``lopo``), or ``0..num_folds - 1`` (``kfold``)."""
  if config.protocol == "lopo":
    return [int(s) for s in np.unique(dataset["all"]["subject_id"])]
  return list(range(config.num_folds))


def fold_name(config, fold: int) -> str:
  if config.protocol == "lopo":
    return f"subject {fold}"
  if config.protocol == "kfold":
    return f"fold {fold} of {config.num_folds}"
  return "test split"


def _fold_indices(config, dataset: dict[str, Arrays], fold: int) -> folds_lib.Split:
  if config.data.name == "scut_fbp5500":
    return _release_split(dataset["all"], config.protocol, fold)
  kwargs = {"num_validation_subjects": config.num_validation_subjects, "seed": config.seed}
  subject_ids = dataset["all"]["subject_id"]
  try:
    if config.protocol == "lopo":
      return folds_lib.leave_one_subject_out(subject_ids, fold, **kwargs)
    return folds_lib.grouped_k_fold(subject_ids, config.num_folds, fold, **kwargs)
  except ValueError as error:  # its messages start with the config field's name
    raise errors.ConfigError(f"config.{error}") from None


def _release_split(arrays: Arrays, protocol: str, fold: int) -> folds_lib.Split:
  """SCUT-FBP5500's own splits: fold ``f`` of its five (``kfold``), or its 60/40 split (``splits``); no
  validation images (the release has none)."""
  is_test = arrays["cv_fold"] == fold + 1 if protocol == "kfold" else arrays["split_60_40"] == b"test"
  return folds_lib.Split(train=np.flatnonzero(~is_test), validation=np.zeros(0, np.int64), test=np.flatnonzero(is_test))


def num_train_examples(config, dataset: dict[str, Arrays], fold: int) -> int:
  """The size of ``fold``'s training set, without gathering its images."""
  if config.protocol == "splits" and config.data.name == "clap2016":
    return len(dataset["train"]["age"])
  return len(_fold_indices(config, dataset, fold).train)


def fold_splits(config, dataset: dict[str, Arrays], fold: int) -> Fold:
  """Training, validation and test arrays of ``fold``; validation subjects never include the test subjects."""
  if config.protocol == "splits" and config.data.name == "clap2016":
    train = dataset["train"]
    return Fold(fold_name(config, fold), train, np.arange(len(train["age"])), dataset["valid"], dataset["test"])
  arrays = dataset["all"]
  split = _fold_indices(config, dataset, fold)
  take = lambda indices: {name: value[indices] for name, value in arrays.items()}  # noqa: E731
  return Fold(fold_name(config, fold), arrays, split.train, take(split.validation), take(split.test))
