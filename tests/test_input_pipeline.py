"""pmap-shaped batches: shapes for 1, 2 and 4 devices, resume determinism, process shards, padded evaluation."""

import itertools

import numpy as np
import pytest

from amr_jax.data import input_pipeline


def _arrays(n=50):
  return {"image": np.arange(n * 4 * 4 * 3, dtype=np.uint8).reshape(n, 4, 4, 3) % 251,
          "age": np.arange(n, dtype=np.int32)}


@pytest.mark.parametrize("num_devices", [1, 2, 4])
def test_train_batch_shapes(num_devices):
  batch = next(input_pipeline.train_batches(_arrays(), global_batch=8, seed=0, num_devices=num_devices))
  assert batch["image"].shape == (num_devices, 8 // num_devices, 4, 4, 3)
  assert batch["age"].shape == (num_devices, 8 // num_devices)


def test_each_epoch_is_a_permutation_and_epochs_differ():
  stream = input_pipeline.train_batches(_arrays(48), global_batch=8, seed=3)
  epochs = [np.concatenate([next(stream)["age"].reshape(-1) for _ in range(6)]) for _ in range(2)]
  assert sorted(epochs[0]) == list(range(48)) and sorted(epochs[1]) == list(range(48))
  assert not np.array_equal(epochs[0], epochs[1])


def test_resumed_stream_equals_uninterrupted_stream():
  arrays = _arrays(50)  # 6 steps per epoch, 2 examples left out per epoch
  whole = [b["age"] for b in itertools.islice(input_pipeline.train_batches(arrays, global_batch=8, seed=7), 20)]
  resumed = [b["age"] for b in itertools.islice(
      input_pipeline.train_batches(arrays, global_batch=8, seed=7, start_step=13), 7)]
  for a, b in zip(whole[13:], resumed):
    np.testing.assert_array_equal(a, b)
  other_seed = next(input_pipeline.train_batches(arrays, global_batch=8, seed=8))["age"]
  assert not np.array_equal(whole[0], other_seed)


def test_processes_read_disjoint_slices_of_the_same_global_batch():
  arrays = _arrays(64)
  single = next(input_pipeline.train_batches(arrays, global_batch=16, seed=1, num_devices=4))["age"].reshape(-1)
  parts = [next(input_pipeline.train_batches(arrays, global_batch=16, seed=1, num_devices=2, process_index=i,
                                             process_count=2))["age"].reshape(-1) for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), single)


@pytest.mark.parametrize("num_devices,process_count", [(1, 1), (4, 1), (2, 2)])
def test_position_is_the_place_in_the_global_batch(num_devices, process_count):
  positions = [next(input_pipeline.train_batches(_arrays(64), global_batch=16, seed=1, num_devices=num_devices,
                                                 process_index=i, process_count=process_count))["position"]
               for i in range(process_count)]
  assert positions[0].shape == (num_devices, 16 // num_devices // process_count)
  np.testing.assert_array_equal(np.concatenate([p.reshape(-1) for p in positions]), np.arange(16))


def test_eval_sees_every_example_exactly_once():
  arrays = _arrays(50)
  seen = []
  for batch in input_pipeline.eval_batches(arrays, global_batch=16, num_devices=4):
    assert batch["image"].shape == (4, 4, 4, 4, 3) and batch["mask"].shape == (4, 4)
    seen.extend(batch["age"][batch["mask"]].tolist())
  assert seen == list(range(50))  # 4 batches, the last with 14 padded slots masked out


def test_bad_arguments():
  with pytest.raises(ValueError, match=r"global batch size 10 must be divisible by the number of devices \(4"):
    next(input_pipeline.train_batches(_arrays(), global_batch=10, seed=0, num_devices=4))
  with pytest.raises(ValueError, match="larger than the dataset"):
    next(input_pipeline.train_batches(_arrays(5), global_batch=8, seed=0))
  with pytest.raises(ValueError, match="one entry per example"):
    next(input_pipeline.eval_batches({"image": np.zeros((3, 2)), "age": np.zeros(4)}, global_batch=2))
