"""Subject-grouped splits: leave-one-subject-out, grouped k-fold, and validation subjects.

Every function takes the subject id of each example (in dataset order) and
returns sorted example indices, so no subject is ever on both sides of a
split. All are deterministic: the same arguments give the same split on every
machine and process.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from amr_jax import errors


class Split(NamedTuple):
  train: np.ndarray  # example indices, sorted
  test: np.ndarray
  validation: np.ndarray  # empty unless validation subjects were asked for


def _subjects(subject_ids) -> np.ndarray:
  subject_ids = np.asarray(subject_ids)
  if subject_ids.ndim != 1 or subject_ids.size == 0:
    raise ValueError(f"subject_ids must be a non-empty 1-D array; got shape {subject_ids.shape}.")
  return subject_ids


def _split(subject_ids, test_subjects, num_validation_subjects, seed) -> Split:
  in_test = np.isin(subject_ids, test_subjects)
  train_subjects = np.unique(subject_ids[~in_test])
  if not 0 <= num_validation_subjects < len(train_subjects):
    raise ValueError(f"num_validation_subjects must be in [0, {len(train_subjects) - 1}] (the training "
                     f"subjects, less one); got {num_validation_subjects}.")
  # Validation subjects come from the training subjects only: the test subjects never influence selection.
  rng = np.random.default_rng([seed, 1])
  validation_subjects = rng.permutation(train_subjects)[:num_validation_subjects]
  in_validation = np.isin(subject_ids, validation_subjects)
  return Split(np.flatnonzero(~in_test & ~in_validation), np.flatnonzero(in_test), np.flatnonzero(in_validation))


def leave_one_subject_out(subject_ids, fold: int, *, num_validation_subjects: int = 0, seed: int = 0) -> Split:
  """The split that holds out subject ``fold`` (FG-NET: 1..82), the paper's LOPO protocol.

  Raises:
    ValueError: when ``fold`` is not one of the subject ids (the message gives their range).
  """
  subject_ids = _subjects(subject_ids)
  subjects = np.unique(subject_ids)
  if fold not in subjects:
    raise ValueError(f"fold {fold!r} is not a subject id; the subjects are {subjects.min()}..{subjects.max()} "
                     f"({len(subjects)} subjects).")
  return _split(subject_ids, [fold], num_validation_subjects, seed)


def grouped_k_fold(subject_ids, num_folds: int, fold: int, *, num_validation_subjects: int = 0,
                   seed: int = 0) -> Split:
  """Fold ``fold`` (0-based) of ``num_folds`` subject-disjoint folds.

  Subjects are shuffled with ``seed`` and dealt round-robin, so fold sizes in
  subjects differ by at most one.
  """
  subject_ids = _subjects(subject_ids)
  subjects = np.unique(subject_ids)
  if not 2 <= num_folds <= len(subjects):
    raise ValueError(f"num_folds must be in [2, {len(subjects)}] (the number of subjects); got {num_folds}.")
  if not 0 <= fold < num_folds:
    raise ValueError(f"fold must be in [0, {num_folds - 1}] for {num_folds} folds; got {fold}.")
  order = np.random.default_rng([seed, 0]).permutation(subjects)
  return _split(subject_ids, order[fold::num_folds], num_validation_subjects, seed)


def parse_folds(text: str) -> list[int]:
  """``"1-8,20"`` as ``[1, 2, ..., 8, 20]`` (sorted, each once); ``""`` as ``[]`` (every fold).

  Raises:
    errors.ConfigError: naming ``config.folds`` and the part that is not a number or a range ``a-b`` with a <= b.
  """
  folds: set[int] = set()
  for part in filter(None, (p.strip() for p in str(text).split(","))):
    bounds = part.split("-")
    try:
      low, high = (int(bounds[0]), int(bounds[-1])) if len(bounds) <= 2 else (None, None)
    except ValueError:
      low = high = None
    if low is None or low < 0 or low > high:
      raise errors.ConfigError(f"config.folds: {part!r} in {text!r} is not a fold number or a range such as 1-8 "
                               "(expected e.g. \"1-8,20\").")
    folds.update(range(low, high + 1))
  return sorted(folds)
