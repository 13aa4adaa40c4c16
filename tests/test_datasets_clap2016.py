"""The CLAP2016 TFDS builder: dummy_data in both configs, the ignore list, small images, bad input, sources, CLI.

The builder is amr_jax.data.clap2016_builder's; nothing imports the datasets/ folder as
`import datasets...`: Hugging Face's `datasets` package has the same top-level name.
No test reaches the internet: an autouse fixture points the builder's
DOWNLOAD_URL at a closed local port unless a test serves the zip itself.
"""

import csv
import hashlib
import io
import json
import os
import pathlib
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import PIL.Image
import pytest

from amr_jax.data import tfds_builders
import local_http
import training_setup

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILDER_DIR = ROOT / "datasets" / "clap2016"
DUMMY = BUILDER_DIR / "dummy_data"
RELEASE = DUMMY / "appa-real-release"
DUMMY_IGNORE = DUMMY / "ignore_list.txt"
UNREACHABLE = "http://127.0.0.1:1/appa-real-release.zip"

# What the dummy data must give (see datasets/clap2016/make_dummy_data.py).
FACE_NAMES = {"train": ["000000.jpg", "000001.jpg", "000002.jpg", "000003.jpg"],  # 000004: 24x20 face, dropped
              "valid": ["000005.jpg", "000006.jpg"],  # 000005: 20x60 face, 1200 pixels, kept
              "test": ["000007.jpg", "000008.jpg"]}  # 000009: 24x20 face, dropped
ALL_NAMES = {"train": [f"00000{i}.jpg" for i in range(5)], "valid": ["000005.jpg", "000006.jpg"],
             "test": ["000007.jpg", "000008.jpg", "000009.jpg"]}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
  """The builder module, with its download pointed at a closed port."""
  module = sys.modules[tfds_builders.builder_class("clap2016").__module__]
  monkeypatch.setattr(module, "DOWNLOAD_URL", UNREACHABLE)
  return module


def _build(manual_dir, data_dir, **kwargs):
  return tfds_builders.build("clap2016", manual_dir=manual_dir, data_dir=data_dir, **kwargs)


def _examples(builder):
  """split -> file name -> example."""
  sources = builder.as_data_source()
  return {split: {(e := source[i])["file_name"].decode(): e for i in range(len(source))}  # text comes back as bytes
          for split, source in sources.items()}


def _csv_rows(split):
  with (RELEASE / f"gt_avg_{split}.csv").open(newline="") as handle:
    return {row["file_name"]: row for row in csv.DictReader(handle)}


def _decoded(path):
  with PIL.Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def _reencoded(path):
  """What the builder must store for a greyscale or CMYK file: RGB JPEG, quality 95."""
  buffer = io.BytesIO()
  with PIL.Image.open(path) as image:
    image.convert("RGB").save(buffer, format="JPEG", quality=95)
  return _decoded(buffer)


@pytest.fixture(scope="module")
def plain_builds(tmp_path_factory):
  """The face and whole configs of dummy_data, built into one data_dir."""
  data_dir = tmp_path_factory.mktemp("plain")
  return {config: _build(DUMMY, data_dir, config=config) for config in ("face", "whole")}


def test_face_config_matches_the_csv_and_reads_without_tensorflow(plain_builds):
  builder = plain_builds["face"]
  features = builder.info.features  # np_dtype: `.dtype` is a TensorFlow dtype and imports TensorFlow
  assert [features[name].np_dtype for name in ("apparent_age_mean", "apparent_age_std", "real_age", "num_ratings")] == [
      np.float32, np.float32, np.int32, np.int32]
  examples = _examples(builder)
  assert {split: sorted(names) for split, names in examples.items()} == FACE_NAMES
  for split, by_name in examples.items():
    rows = _csv_rows(split)
    for name, example in by_name.items():
      row = rows[name]
      # Scalars come back as Python numbers, holding the stored float32 values.
      assert example["apparent_age_mean"] == np.float32(row["apparent_age_avg"])
      assert example["apparent_age_std"] == np.float32(row["apparent_age_std"])
      assert example["real_age"] == int(row["real_age"]) and example["num_ratings"] == int(row["num_ratings"])
      path = RELEASE / split / f"{name}_face.jpg"
      # The greyscale and CMYK crops are re-encoded as RGB JPEG; the others are stored verbatim.
      want = _reencoded(path) if name in ("000002.jpg", "000006.jpg") else _decoded(path)
      assert example["image"].dtype == np.uint8
      np.testing.assert_array_equal(example["image"], want)
  assert examples["valid"]["000005.jpg"]["image"].shape == (60, 20, 3)
  assert examples["train"]["000002.jpg"]["image"].shape == (36, 36, 3)  # greyscale stored as RGB
  assert "tensorflow" not in sys.modules


def test_whole_config_reads_the_whole_photos(plain_builds):
  examples = _examples(plain_builds["whole"])
  assert {split: sorted(names) for split, names in examples.items()} == ALL_NAMES  # no whole photo is small
  for split, by_name in examples.items():
    for name, example in by_name.items():
      np.testing.assert_array_equal(example["image"][..., 0].shape, (48, 40))
      want = (_reencoded if name == "000001.jpg" else _decoded)(RELEASE / split / name)  # 000001: greyscale
      np.testing.assert_array_equal(example["image"], want)
  face = _examples(plain_builds["face"])["train"]["000000.jpg"]["image"]
  assert face.shape != examples["train"]["000000.jpg"]["image"].shape
  assert plain_builds["whole"].data_dir != plain_builds["face"].data_dir
  assert "tensorflow" not in sys.modules


def test_small_images_are_dropped_from_every_split_and_recorded(plain_builds, tmp_path, caplog):
  metadata = plain_builds["face"].info.metadata
  assert metadata["dropped_too_small"] == {"train": ["000004.jpg"], "valid": [], "test": ["000009.jpg"]}
  assert metadata["min_size"] == 32 and "ignore_list" not in metadata
  assert json.loads((pathlib.Path(plain_builds["face"].data_dir) / "metadata.json").read_text()) == dict(metadata)
  builder = _build(DUMMY, tmp_path, config="face", min_size=0)
  assert pathlib.Path(builder.data_dir).parent.name == "face_min0"  # never the default build's folder
  assert {split: sorted(names) for split, names in _examples(builder).items()} == ALL_NAMES
  caplog.clear()
  _build(DUMMY, tmp_path, config="face")
  assert "dropped 2 images with fewer pixels than 32x32 (face files)" in caplog.text
  assert "train: 000004.jpg; test: 000009.jpg" in caplog.text


def test_ignore_list_drops_train_names_only_reports_the_rest_and_builds_elsewhere(plain_builds, caplog):
  data_dir = pathlib.Path(plain_builds["face"].data_dir).parents[2]
  caplog.clear()
  builder = _build(DUMMY, data_dir, config="face", ignore_list=DUMMY_IGNORE)
  sha = hashlib.sha256(DUMMY_IGNORE.read_bytes()).hexdigest()
  assert pathlib.Path(builder.data_dir).parent.name == f"face_ignore_{sha[:12]}"
  examples = _examples(builder)
  assert sorted(examples["train"]) == ["000000.jpg", "000001.jpg", "000002.jpg"]
  assert sorted(examples["test"]) == FACE_NAMES["test"]  # 000008.jpg is listed but is a test image: kept
  assert sorted(examples["valid"]) == FACE_NAMES["valid"]
  # The plain build in the same data_dir is untouched and still has the ignored image.
  assert "000003.jpg" in _examples(plain_builds["face"])["train"]
  assert builder.data_dir != plain_builds["face"].data_dir
  report = builder.info.metadata["ignore_list"]
  assert report == {"path": str(DUMMY_IGNORE), "sha256": sha, "count": 3, "dropped_from_train": ["000003.jpg"],
                    "not_in_train": {"000008.jpg": "test", "999999.jpg": "no split"}}
  assert f"sha256 {sha}, 3 names" in builder.info.config_description
  assert "drops 1 train images: 000003.jpg" in caplog.text
  assert "000008.jpg (test), 999999.jpg (no split)" in caplog.text


def test_plain_build_announces_an_ignore_list_it_does_not_apply(tmp_path, caplog):
  _build(DUMMY, tmp_path, config="whole")  # dummy_data holds ignore_list.txt, as the AMR instructions lay it out
  assert f"{DUMMY_IGNORE} is NOT applied" in caplog.text


def test_config_folders_follow_the_options(tmp_path):
  cls = tfds_builders.builder_class("clap2016")
  folder = lambda **kwargs: pathlib.Path(cls(data_dir=tmp_path, **kwargs).data_dir).parent.name  # noqa: E731
  other = tmp_path / "other.txt"
  other.write_text("000003.jpg\n")
  same = tmp_path / "copy.txt"
  shutil.copy(DUMMY_IGNORE, same)
  assert folder() == "face" and folder(config="whole") == "whole"
  assert folder(ignore_list=same) == folder(ignore_list=DUMMY_IGNORE)  # same bytes, same folder
  assert len({folder(), folder(ignore_list=DUMMY_IGNORE), folder(ignore_list=other), folder(min_size=16),
              folder(min_size=16, ignore_list=other), folder(config="whole", ignore_list=other)}) == 6
  copy = pickle.loads(pickle.dumps(cls(data_dir=tmp_path, config="whole", ignore_list=other)))  # as Beam does
  assert pathlib.Path(copy.data_dir).parent.name == folder(config="whole", ignore_list=other)
  config = cls.builder_config_cls(name="whole", ignore_list=str(other))  # what `tfds build --config=JSON` passes
  assert cls(data_dir=tmp_path, config=config).builder_config.name == folder(config="whole", ignore_list=other)
  with pytest.raises(ValueError, match="unknown CLAP2016 config 'aligned'; expected one of face, whole"):
    cls(data_dir=tmp_path, config="aligned")
  with pytest.raises(ValueError, match="min_size must be a whole number >= 0"):
    cls(data_dir=tmp_path, min_size=-1)
  with pytest.raises(FileNotFoundError, match="missing.txt: ignore list missing"):
    cls(data_dir=tmp_path, ignore_list=tmp_path / "missing.txt")


def test_real_ignore_list_names_no_dummy_train_image(shared_dir, tmp_path, caplog):
  real = shared_dir / "data" / "clap2016" / "ignore_list.txt"
  builder = _build(DUMMY, tmp_path, ignore_list=real)
  assert builder.builder_config.name == f"face_ignore_{hashlib.sha256(real.read_bytes()).hexdigest()[:12]}"
  assert "118 names" in builder.info.config_description
  report = builder.info.metadata["ignore_list"]
  assert report["count"] == 118 and report["dropped_from_train"] == [] and len(report["not_in_train"]) == 118
  assert "118 names of ignore list" in caplog.text


def _release_copy(tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(RELEASE, manual / "appa-real-release")
  return manual, manual / "appa-real-release"


def _truncate(path, size=300):
  path.write_bytes(path.read_bytes()[:size])


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "train" / "000001.jpg_face.jpg").write_bytes(b"not a jpeg"),
     r"train/000001.jpg_face.jpg: cannot decode this image"),
    (lambda r: _truncate(r / "test" / "000007.jpg_face.jpg"),
     r"test/000007.jpg_face.jpg: cannot decode this image"),  # the header reads, the pixels do not
    (lambda r: (r / "valid" / "000006.jpg_face.jpg").unlink(),
     r"valid/000006.jpg_face.jpg: missing, but .*gt_avg_valid.csv, row 3 lists 000006.jpg"),
    (lambda r: (r / "gt_avg_test.csv").write_text(
        "file_name,num_ratings,apparent_age_avg,apparent_age_std,real_age\n000007.jpg,42,48.761905\n"),
     r"gt_avg_test.csv, row 2: missing field 'apparent_age_std'"),
    (lambda r: (r / "gt_avg_train.csv").write_text("file_name,apparent_age_avg\n000000.jpg,4.2\n"),
     r"gt_avg_train.csv: header lacks column\(s\) num_ratings, apparent_age_std, real_age"),
    (lambda r: shutil.rmtree(r / "valid"), r"incomplete CLAP2016 release folder, missing valid/"),
], ids=["garbage-image", "truncated-image", "listed-image-missing", "csv-row-short", "csv-header-short",
        "split-folder-missing"])
def test_bad_input_is_named(tmp_path, damage, message):
  manual, release = _release_copy(tmp_path)
  damage(release)
  with pytest.raises(Exception, match=message):
    _build(manual, tmp_path / "data")


@pytest.mark.parametrize("manual", ["empty", "missing"])
def test_no_manual_copy_and_no_download_says_both_and_what_to_get(tmp_path, manual):
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError) as error:
    _build(tmp_path / manual, tmp_path / "data")
  message = str(error.value)
  assert f"manual directory {tmp_path / manual} is missing or empty" in message
  assert f"download of {UNREACHABLE} failed: URLError" in message
  assert "Get appa-real-release.zip" in message and "extracted `appa-real-release/` folder" in message
  assert "tensorflow" not in sys.modules


def _zip_release(path):
  with zipfile.ZipFile(path, "w") as archive:
    for file in sorted(RELEASE.rglob("*")):
      archive.write(file, file.relative_to(DUMMY))  # the real zip's top-level appa-real-release/ folder
  return path


def test_builds_from_the_zip_in_the_manual_dir(tmp_path):
  (tmp_path / "manual").mkdir()
  _zip_release(tmp_path / "manual" / "appa-real-release.zip")
  builder = _build(tmp_path / "manual", tmp_path / "data", config="face")
  assert {split: len(source) for split, source in builder.as_data_source().items()} == {"train": 4, "valid": 2,
                                                                                          "test": 2}


_DOWNLOAD_SCRIPT = textwrap.dedent("""\
    import json, sys
    from amr_jax.data import tfds_builders
    url, manual_dir, data_dir = sys.argv[1:]
    sys.modules[tfds_builders.builder_class("clap2016").__module__].DOWNLOAD_URL = url
    builder = tfds_builders.build("clap2016", manual_dir=manual_dir, data_dir=data_dir)
    sizes = {split: len(source) for split, source in builder.as_data_source().items()}
    print(json.dumps({"sizes": sizes, "tensorflow_imported": "tensorflow" in sys.modules}))
    """)


@pytest.fixture(scope="module")
def download_build(tmp_path_factory):
  """Builds, in a child process, from a zip served on 127.0.0.1 with an empty manual directory.

  A child process, so that its check that nothing imported TensorFlow sees
  this build alone.
  """
  tmp_path = tmp_path_factory.mktemp("download")
  (tmp_path / "served").mkdir()
  (tmp_path / "empty").mkdir()
  _zip_release(tmp_path / "served" / "appa-real-release.zip")
  with local_http.serve_folder(tmp_path / "served") as base_url:
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    result = subprocess.run([sys.executable, "-c", _DOWNLOAD_SCRIPT, base_url + "appa-real-release.zip",
                             str(tmp_path / "empty"), str(tmp_path / "data")],
                            capture_output=True, text=True, timeout=120, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_builds_from_the_download_when_the_manual_dir_is_empty(download_build):
  assert download_build["sizes"] == {"train": 4, "valid": 2, "test": 2}


def test_download_path_does_not_import_tensorflow(download_build):
  assert not download_build["tensorflow_imported"]


def test_tfds_command_line_builds_plain_and_ignore_list_configs(tmp_path):
  """`tfds build` (it imports TensorFlow) with --config=face, and with the JSON form that passes an ignore list.

  No --file_format: the builder makes array_record the default, what training reads.
  """
  command = [sys.executable, "-m", "tensorflow_datasets.scripts.cli.main", "build", str(BUILDER_DIR),
             f"--manual_dir={RELEASE}"]
  json_config = json.dumps({"name": "face", "ignore_list": str(DUMMY_IGNORE)})
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  runs = {name: subprocess.Popen(command + [f"--config={config}", f"--data_dir={tmp_path / name}"], cwd=ROOT,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for name, config in (("plain", "face"), ("ignored", json_config))}  # in parallel: each imports TF
  for name, run in runs.items():
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, f"{name}: {output[-3000:]}"
  sha = hashlib.sha256(DUMMY_IGNORE.read_bytes()).hexdigest()
  assert (tmp_path / "ignored" / "clap2016" / f"face_ignore_{sha[:12]}" / "1.0.0" / "dataset_info.json").is_file()
  # The Python API finds what the command line prepared, in the folder its options name.
  cls = tfds_builders.builder_class("clap2016")
  plain = cls(data_dir=tmp_path / "plain", config="face")
  ignored = cls(data_dir=tmp_path / "ignored", config="face", ignore_list=DUMMY_IGNORE)
  assert plain.is_prepared() and ignored.is_prepared()
  assert {builder.info.file_format.value for builder in (plain, ignored)} == {"array_record"}
  assert {split: len(source) for split, source in plain.as_data_source().items()} == {"train": 4, "valid": 2,
                                                                                        "test": 2}
  assert len(ignored.as_data_source()["train"]) == 3
  assert ignored.info.metadata["ignore_list"]["dropped_from_train"] == ["000003.jpg"]


def test_a_build_in_another_format_is_refused_with_the_command_that_rebuilds_it(tmp_path):
  """The ignore-list build's rebuild command is the JSON --config form (the command line test above runs it)."""
  training_setup.build_in_tfrecord("clap2016", RELEASE, tmp_path, config="face", ignore_list=DUMMY_IGNORE)
  options = json.dumps({"name": "face", "ignore_list": str(DUMMY_IGNORE)})
  with pytest.raises(ValueError, match=re.escape(
      f"holds a tfrecord build of clap2016; amr_jax reads array_record. Delete that folder and rebuild it with "
      f"`tfds build datasets/clap2016 --config='{options}' --manual_dir={RELEASE} --data_dir={tmp_path}`")):
    tfds_builders.build("clap2016", config="face", ignore_list=DUMMY_IGNORE, manual_dir=RELEASE, data_dir=tmp_path)
