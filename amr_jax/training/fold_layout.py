"""Where the folds trained at once live: on every device (data parallel), or each device its own folds.

A group of folds is trained by one ``pmap``-ped step over stacked fold states
(:func:`amr_jax.training.step_functions.folds_train_step`). Its arrays are laid out in one of two
ways, chosen by ``config.folds_over_devices``:

- **data parallel** (``False``): every device holds every fold of the group
  (arrays ``[devices, folds, ...]``); each fold's global batch is split over the
  devices and its gradients and BatchNorm statistics are averaged over them
  every step. A fold's result is the one it gets trained alone on the same
  devices.
- **folds over devices** (``True``): each device holds its own folds (arrays
  ``[devices, folds per device, ...]``) and each fold's whole batch; nothing
  crosses devices during training. A fold's result is the one it gets trained
  alone on one device. The group is padded to a whole number of folds per device
  with idle slots that never change.

The step's inputs come from the host per fold ("slot") and go out per fold;
this module stacks and unstacks them, so the training loop never needs to know
the layout.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import jax
import numpy as np

from amr_jax.data import input_pipeline


@jax.jit
def _take(arrays: list[jax.Array], place) -> list[jax.Array]:
  return [x[0, place] for x in arrays]


def _same(tree):
  return tree


class FoldLayout:
  """The devices of this process, and how a group's folds are spread over them.

  Args:
    over_devices: each device trains its own folds (``config.folds_over_devices``).
    devices: the local devices (default: all of this process's).
  """

  def __init__(self, over_devices: bool, devices: Sequence[Any] | None = None):
    self.over_devices = bool(over_devices)
    # pmap's devices: None (its default) spans every process's devices, so the data-parallel step averages over
    # them all; a list confines it to those.
    self.pmap_devices = None if devices is None else list(devices)
    self.devices = list(devices if devices is not None else jax.local_devices())
    # The step's pmap axis: "batch" is the one train_step averages over; folds over devices average over nothing.
    self.axis_name = "folds" if self.over_devices else "batch"

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  def describe(self) -> str:
    if self.over_devices:
      return f"each of {self.num_devices} device(s) training its own folds"
    return f"data parallel over {jax.device_count()} device(s)"

  def num_slots(self, num_folds: int) -> int:
    """Slots for ``num_folds`` folds: as many, or (folds over devices) the next multiple of the device count."""
    if self.over_devices:
      return -(-num_folds // self.num_devices) * self.num_devices
    return num_folds

  # ---- host -> devices

  def per_slot(self, values: Sequence[Any]) -> Any:
    """One value (tree) per slot, without a device axis, laid out as the step takes them."""
    def lay_out(*xs):
      stacked = np.stack([np.asarray(x) for x in xs])
      if self.over_devices:
        return stacked.reshape(self.num_devices, -1, *stacked.shape[1:])
      return np.broadcast_to(stacked, (self.num_devices, *stacked.shape))
    return jax.tree.map(lay_out, *values)

  def on_devices(self, tree: Any) -> Any:
    """A host tree with a leading device axis put on the devices, laid out as the step's outputs are.

    (``pmap`` caches its program by the inputs' layout: inputs laid out otherwise would compile the step twice.)
    """
    return jax.pmap(_same, axis_name=self.axis_name, devices=self.pmap_devices)(tree)

  def states(self, states: Sequence[Any]) -> Any:
    """The slots' (host) training states stacked on the devices."""
    return self.on_devices(self.per_slot(states))

  def everywhere(self, tree: Any) -> Any:
    """``tree`` held whole by every device (the training images, gathered from by index)."""
    return self.on_devices(jax.tree.map(lambda x: np.broadcast_to(x, (self.num_devices, *np.shape(x))), tree))

  def batch_indices(self, length: int, *, global_batch: int, seed: int, start_step: int) -> Iterator[dict]:
    """A fold's batches (``index`` into its ``length`` training examples, ``position``), as one slot needs them."""
    if self.over_devices:  # the whole global batch on the fold's device
      batches = input_pipeline.train_batch_indices(length, global_batch=global_batch, seed=seed,
                                                   start_step=start_step)
      return ({name: value[0] for name, value in batch.items()} for batch in batches)
    return input_pipeline.train_batch_indices(length, global_batch=global_batch, seed=seed, start_step=start_step,
                                              num_devices=self.num_devices, process_index=jax.process_index(),
                                              process_count=jax.process_count())

  def batches(self, per_slot: Sequence[dict]) -> dict:
    """The slots' batches (from :meth:`batch_indices`) as the step takes them."""
    if self.over_devices:
      return self.per_slot(per_slot)
    return jax.tree.map(lambda *xs: np.stack(xs, axis=1), *per_slot)  # [devices, folds, per device batch]

  # ---- devices -> host

  def _shard(self, x: jax.Array, slot: int) -> tuple[jax.Array, int]:
    """The one-device array ``[1, folds, ...]`` that holds slot ``slot``, and the slot's place in it."""
    if self.over_devices:
      device, place = divmod(slot, x.shape[1])
      (shard,) = [s for s in x.addressable_shards if s.index[0].start == device]
      return shard.data, place
    return x.addressable_shards[0].data, slot  # every device holds every fold

  def fold(self, tree: Any, slot: int) -> Any:
    """Slot ``slot``'s part of a stacked tree (a fold's state), on one device."""
    leaves, structure = jax.tree.flatten(tree)
    if not leaves:
      return tree
    shards = [self._shard(x, slot) for x in leaves]
    # One compiled gather for the whole tree, the place an argument: indexed leaf by leaf, every leaf's shape was
    # traced and compiled again (about 3 s for a small model's state at a fold's first save).
    return jax.tree.unflatten(structure, _take([shard for shard, _ in shards], np.int32(shards[0][1])))

  def values(self, tree: Any) -> Any:
    """Per-slot values of the step's outputs (its metrics) on the host, each leaf ``[slots]``."""
    def per_slot(x):
      if self.over_devices:
        return np.asarray(jax.device_get(x)).reshape(-1, *x.shape[2:])
      return np.asarray(jax.device_get(x.addressable_shards[0].data[0]))
    return jax.tree.map(per_slot, tree)
