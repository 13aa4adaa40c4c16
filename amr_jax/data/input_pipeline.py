"""Batches for ``pmap`` from an in-memory dataset: deterministic, resumable, sharded by process.

FG-NET is small (1002 images; about 40 MB as 112 px uint8), so it is decoded
once into NumPy arrays (:mod:`amr_jax.data.decoding`) and batches are cut from them; nothing is decoded
again per epoch.

Training order depends only on ``(seed, step)``: the epoch of global step
``s`` is ``s // steps_per_epoch`` and its permutation is drawn from
``(seed, epoch)``, so a run resumed at step ``s`` sees exactly the batches an
uninterrupted run sees. Augmentation runs on the device, in the training step
(:mod:`amr_jax.data.augment` says why). Each process takes its own contiguous slice of every
global batch, and reshapes it to ``[local_devices, per_device_batch, ...]``.

Evaluation visits every example exactly once: the last batch is padded with
copies of example 0 and a ``mask`` marks the real examples.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np


Batch = dict[str, np.ndarray]


def _check(arrays: Mapping[str, np.ndarray]) -> int:
  if not arrays:
    raise ValueError("arrays must hold at least one field (e.g. image, age).")
  lengths = {name: len(value) for name, value in arrays.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"every field must have one entry per example; got lengths {lengths}.")
  (length,) = set(lengths.values())
  if length == 0:
    raise ValueError("the dataset is empty.")
  return length


def _shard_shape(global_batch: int, num_devices: int, process_count: int) -> tuple[int, int]:
  if global_batch % (num_devices * process_count):
    raise ValueError(f"global batch size {global_batch} must be divisible by the number of devices "
                     f"({num_devices} per process x {process_count} processes).")
  per_process = global_batch // process_count
  return per_process, per_process // num_devices


def train_batches(arrays: Mapping[str, np.ndarray], *, global_batch: int, seed: int, start_step: int = 0,
                  num_devices: int = 1, process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
  """Endless training batches, each field shaped ``[num_devices, per_device_batch, ...]``.

  Besides the fields of ``arrays``, each batch has ``position``: every
  example's place in the global batch (0..global_batch-1), which keys its
  augmentation (:func:`amr_jax.data.augment.example_keys`) independently of how
  the batch is split over devices and processes.

  Every epoch is a fresh permutation; the last ``len % global_batch`` examples
  of each permutation are left out of that epoch (they are in other epochs).

  Args:
    arrays: fields of equal length (``image``, ``age``, ...).
    global_batch: examples per step over all processes and devices.
    seed: the order's seed.
    start_step: the global step of the first batch (resume here).
    num_devices: local devices of this process.
    process_index, process_count: this process's slice of each global batch.
  """
  length = _check(arrays)
  for batch in train_batch_indices(length, global_batch=global_batch, seed=seed, start_step=start_step,
                                   num_devices=num_devices, process_index=process_index,
                                   process_count=process_count):
    index = batch.pop("index")
    yield {**{name: value[index] for name, value in arrays.items()}, **batch}


def train_batch_indices(length: int, *, global_batch: int, seed: int, start_step: int = 0, num_devices: int = 1,
                        process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
  """The batches of :func:`train_batches` as ``index`` (into the ``length`` examples) and ``position``.

  Folds trained at once gather their batches from images held once, by these indices.
  """
  if length <= 0:
    raise ValueError("the dataset is empty.")
  per_process, per_device = _shard_shape(global_batch, num_devices, process_count)
  steps_per_epoch = length // global_batch
  if steps_per_epoch == 0:
    raise ValueError(f"global batch size {global_batch} is larger than the dataset ({length} examples).")
  position = np.arange(process_index * per_process, (process_index + 1) * per_process, dtype=np.int32)
  step, order, order_epoch = start_step, None, None
  while True:
    epoch, place = divmod(step, steps_per_epoch)
    if epoch != order_epoch:
      order, order_epoch = np.random.default_rng([seed, epoch]).permutation(length), epoch
    start = place * global_batch + process_index * per_process
    index = order[start:start + per_process]
    yield {"index": index.reshape(num_devices, per_device), "position": position.reshape(num_devices, per_device)}
    step += 1


def eval_batches(arrays: Mapping[str, np.ndarray], *, global_batch: int, num_devices: int = 1,
                 process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
  """Every example once, in order, in padded batches with a boolean ``mask`` field."""
  length = _check(arrays)
  per_process, per_device = _shard_shape(global_batch, num_devices, process_count)
  for start in range(0, length, global_batch):
    indices = np.arange(start, start + global_batch)[process_index * per_process:(process_index + 1) * per_process]
    mask = indices < length
    indices = np.where(mask, indices, 0)
    batch = {name: value[indices] for name, value in arrays.items()}
    batch["mask"] = mask
    yield {name: value.reshape(num_devices, per_device, *value.shape[1:]) for name, value in batch.items()}

