"""FG-NET layout reading on the real copy in ../shared, bad-input errors, and subject-grouped folds."""

import numpy as np
import pytest

from amr_jax import errors
from amr_jax.data import fgnet, folds


@pytest.fixture(scope="module")
def real_index(shared_dir):
  return fgnet.index_images(fgnet.find_root(shared_dir / "data" / "fgnet"))


def test_real_fgnet_has_1002_images_of_82_subjects_aged_0_to_69(real_index):
  assert len(real_index) == 1002
  subjects = {image.subject_id for image in real_index}
  assert subjects == set(range(1, 83))
  ages = [image.age for image in real_index]
  assert min(ages) == 0 and max(ages) == 69
  assert sum(image.file_name[-5].lower() in "ab" for image in real_index) == 28  # second photos at one age


def test_real_fgnet_landmarks(real_index):
  for image in real_index[::50]:
    points = fgnet.read_landmarks(image.landmarks_path)
    assert points.shape == (68, 2) and points.dtype == np.float32
    assert np.all(points > -50) and np.all(points < 2000)


def test_image_names():
  assert fgnet.parse_image_name("078A11.JPG") == (78, 11)
  assert fgnet.parse_image_name("013A05a.JPG") == (13, 5)
  with pytest.raises(ValueError, match=r"78_11\.jpg: not an FG-NET image name"):
    fgnet.parse_image_name("78_11.jpg")


def _tree(tmp_path, names, pts_text=None):
  root = tmp_path / "FGNET"
  (root / "images").mkdir(parents=True)
  (root / "points").mkdir()
  body = "\n".join(f"{i}.5 {2 * i}.25" for i in range(68))
  for name in names:
    (root / "images" / name).write_bytes(b"jpeg")
    stem = name.rsplit(".", 1)[0].lower()
    (root / "points" / f"{stem}.pts").write_text(pts_text or f"version: 1\nn_points: 68\n{{\n{body}\n}}\n")
  return root


def test_index_of_a_small_tree(tmp_path):
  root = _tree(tmp_path, ["002A10.JPG", "001A02.JPG", "001A02a.JPG"])
  assert fgnet.find_root(tmp_path) == root  # found from the parent directory
  index = fgnet.index_images(root)
  assert [i.file_name for i in index] == ["001A02.JPG", "001A02a.JPG", "002A10.JPG"]
  np.testing.assert_allclose(fgnet.read_landmarks(index[0].landmarks_path)[3], [3.5, 6.25])


def test_bad_input_names_the_file(tmp_path):
  with pytest.raises(errors.MissingDataError, match="(?s)holds no FG-NET folder.*yanweifu.github.io"):
    fgnet.find_root(tmp_path)
  with pytest.raises(errors.MissingDataError, match="no such directory"):
    fgnet.find_root(tmp_path / "missing")
  root = _tree(tmp_path, ["001A02.JPG"])
  (root / "images" / "extra.JPG").write_bytes(b"x")
  with pytest.raises(errors.DataError, match="extra.JPG: not an FG-NET image name"):
    fgnet.index_images(root)
  (root / "images" / "extra.JPG").unlink()
  (root / "images" / "003A01.JPG").write_bytes(b"x")
  with pytest.raises(errors.MissingDataError, match=r"003A01.JPG: no landmark file points/003a01.pts"):
    fgnet.index_images(root)
  bad = root / "points" / "bad.pts"
  bad.write_text("version: 1\n{\n1 2\nthree 4\n}\n")
  with pytest.raises(errors.DataError, match=r"bad.pts, line 4: expected 'x y'"):
    fgnet.read_landmarks(bad)
  bad.write_text("version: 1\n{\n1 2\n}\n")
  with pytest.raises(errors.DataError, match="bad.pts: expected 68 points, found 1"):
    fgnet.read_landmarks(bad)
  with pytest.raises(errors.MissingDataError, match="gone.pts: landmark file missing"):
    fgnet.read_landmarks(root / "points" / "gone.pts")
  _tree(tmp_path / "second", ["001A02.JPG"])
  with pytest.raises(errors.DataError, match="holds 2 FG-NET folders"):
    fgnet.find_root(tmp_path)


def test_leave_one_subject_out_on_real_fgnet(real_index):
  subject_ids = np.array([image.subject_id for image in real_index])
  held_out_count = np.zeros(len(subject_ids), int)
  for subject in range(1, 83):
    split = folds.leave_one_subject_out(subject_ids, subject)
    assert set(subject_ids[split.test]) == {subject}
    assert subject not in set(subject_ids[split.train])
    assert len(split.train) + len(split.test) == 1002 and len(split.validation) == 0
    held_out_count[split.test] += 1
  assert np.all(held_out_count == 1)  # every image held out exactly once over the 82 folds


def test_validation_subjects_come_from_training_subjects_only(real_index):
  subject_ids = np.array([image.subject_id for image in real_index])
  split = folds.leave_one_subject_out(subject_ids, 17, num_validation_subjects=8, seed=3)
  train, test, validation = (set(subject_ids[s]) for s in split)
  assert test == {17} and len(validation) == 8 and len(train) == 73
  assert not (train & validation) and not (validation & test)
  again = folds.leave_one_subject_out(subject_ids, 17, num_validation_subjects=8, seed=3)
  assert all(np.array_equal(a, b) for a, b in zip(split, again))  # deterministic


def test_grouped_k_fold_partitions_subjects():
  subject_ids = np.repeat(np.arange(1, 83), 3)
  seen = []
  for fold in range(5):
    split = folds.grouped_k_fold(subject_ids, 5, fold, seed=0)
    assert not set(subject_ids[split.train]) & set(subject_ids[split.test])
    seen.append(split.test)
  tested = np.concatenate(seen)
  assert sorted(tested) == list(range(len(subject_ids)))
  sizes = [len(set(subject_ids[s])) for s in seen]
  assert max(sizes) - min(sizes) <= 1
  assert not np.array_equal(folds.grouped_k_fold(subject_ids, 5, 0, seed=1).test, seen[0])


def test_fold_errors():
  with pytest.raises(ValueError, match=r"fold 99 is not a subject id; the subjects are 1..3"):
    folds.leave_one_subject_out([1, 2, 3], 99)
  with pytest.raises(ValueError, match=r"fold must be in \[0, 2\]"):
    folds.grouped_k_fold([1, 2, 3], 3, 3)
  with pytest.raises(ValueError, match="num_validation_subjects must be in"):
    folds.leave_one_subject_out([1, 2, 3], 1, num_validation_subjects=2)
