"""The FG-NET TFDS builder: dummy_data, a zipped manual directory, bad input, and the real FG-NET.

The builder is loaded from its file, never as `import datasets...`: Hugging Face's
`datasets` package has the same top-level name.
"""

import importlib.util
import pathlib
import shutil
import sys
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from amr_jax import fgnet

BUILDER_DIR = pathlib.Path(__file__).resolve().parents[1] / "datasets" / "fgnet"
DUMMY = BUILDER_DIR / "dummy_data"


def _load_by_path(name, path, package_dir=None):
  spec = importlib.util.spec_from_file_location(
      name, path, submodule_search_locations=[str(package_dir)] if package_dir else None)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # TFDS imports the builder's module (and its package) by name
  spec.loader.exec_module(module)
  return module


def _builder_class():
  # A package name no other installed package can have, then the builder as its submodule.
  package = "amr_jax_datasets_fgnet"
  if package not in sys.modules:
    _load_by_path(package, BUILDER_DIR / "__init__.py", BUILDER_DIR)
    _load_by_path(f"{package}.fgnet_dataset_builder", BUILDER_DIR / "fgnet_dataset_builder.py")
  return sys.modules[f"{package}.fgnet_dataset_builder"].Builder


def _build(manual_dir, data_dir):
  builder = _builder_class()(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder.as_data_source()["train"]


def test_builds_dummy_data_without_tensorflow(tmp_path):
  source = _build(DUMMY, tmp_path)
  examples = sorted((source[i] for i in range(len(source))), key=lambda e: e["file_name"])
  names = [e["file_name"].decode() for e in examples]  # text features come back as bytes
  assert names == ["001A02.JPG", "001A10.JPG", "002A33.JPG", "002A33a.JPG", "003A69.JPG"]
  assert [int(e["age"]) for e in examples] == [2, 10, 33, 33, 69]
  assert [int(e["subject_id"]) for e in examples] == [1, 1, 2, 2, 3]
  for name, example in zip(names, examples):
    assert example["image"].shape == (48, 40, 3) and example["image"].dtype == np.uint8  # greyscale stored as RGB
    want = fgnet.read_landmarks(DUMMY / "FGNET" / "points" / (name[:-4].lower() + ".pts"))
    np.testing.assert_array_equal(example["landmarks"], want)
  assert "tensorflow" not in sys.modules


def test_builds_from_fgnet_zip_in_manual_dir(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  with zipfile.ZipFile(manual / "FGNET.zip", "w") as archive:
    for path in (DUMMY / "FGNET").rglob("*"):
      archive.write(path, path.relative_to(DUMMY))
  assert len(_build(manual, tmp_path / "data")) == 5


def test_missing_or_empty_manual_dir_says_what_to_download(tmp_path):
  (tmp_path / "empty").mkdir()
  for manual in (tmp_path / "empty", tmp_path / "missing"):
    with pytest.raises(Exception, match="(?s)(does not exist or is empty|missing or empty).*yanweifu.github.io"):
      _build(manual, tmp_path / "data")


def test_undecodable_image_is_named(tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(DUMMY, manual)
  (manual / "FGNET" / "images" / "003A69.JPG").write_bytes(b"not a jpeg")
  with pytest.raises(Exception, match="003A69.JPG: cannot decode this image"):
    _build(manual, tmp_path / "data")


def test_real_fgnet(shared_dir, tmp_path):
  source = _build(shared_dir / "data" / "fgnet", tmp_path)
  assert len(source) == 1002
  ages, subjects = [], set()
  for i in range(len(source)):
    example = source[i]
    ages.append(int(example["age"]))
    subjects.add(int(example["subject_id"]))
    assert example["landmarks"].shape == (68, 2)
    if i % 100 == 0:
      assert example["image"].ndim == 3 and example["image"].shape[2] == 3
  assert len(subjects) == 82 and min(ages) == 0 and max(ages) == 69


@pytest.mark.parametrize("crop", ["aligned", "whole"])
def test_load_fgnet_arrays_from_built_dummy_data(tmp_path, crop):
  from amr_jax import input_pipeline

  _build(DUMMY, tmp_path)
  arrays = input_pipeline.load_fgnet_arrays(str(tmp_path / "fgnet" / "1.0.0"), crop=crop, image_size=32)
  assert arrays["image"].shape == (5, 32, 32, 3) and arrays["image"].dtype == np.uint8
  assert arrays["age"].tolist() == [2, 10, 33, 33, 69]
  assert arrays["subject_id"].tolist() == [1, 1, 2, 2, 3]
  assert arrays["file_name"][0] == "001A02.JPG"
  with pytest.raises(FileNotFoundError, match="not a built FG-NET dataset"):
    input_pipeline.load_fgnet_arrays(str(tmp_path / "nothing"))
