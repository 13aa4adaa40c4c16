"""The FG-NET TFDS builder: dummy_data, a zipped manual directory, bad input, and the real FG-NET; and, for both
datasets, the datasets/<name>/ files that `tfds build` reads.

The builder is amr_jax.data.fgnet_builder's; nothing imports the datasets/ folder as
`import datasets...`: Hugging Face's `datasets` package has the same top-level name.
"""

import importlib.util
import pathlib
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from amr_jax.data import fgnet, tfds_builders
import local_http

BUILDER_DIR = pathlib.Path(__file__).resolve().parents[1] / "datasets" / "fgnet"
DUMMY = BUILDER_DIR / "dummy_data"


def _builder_module():
  return sys.modules[tfds_builders.builder_class("fgnet").__module__]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Tests never reach the internet: the public URL becomes a closed loopback port unless a test serves one."""
  monkeypatch.setattr(_builder_module(), "DOWNLOAD_URL", "http://127.0.0.1:1/FGNET.zip")


def _build(manual_dir, data_dir):
  return tfds_builders.build("fgnet", manual_dir=manual_dir, data_dir=data_dir).as_data_source()["train"]


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


def _zip_dummy_data(path):
  with zipfile.ZipFile(path, "w") as archive:
    for file in (DUMMY / "FGNET").rglob("*"):
      archive.write(file, file.relative_to(DUMMY))


def test_builds_from_fgnet_zip_in_manual_dir(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  _zip_dummy_data(manual / "FGNET.zip")
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
  from amr_jax.data import decoding

  _build(DUMMY, tmp_path)
  arrays = decoding.load_fgnet_arrays(str(tmp_path / "fgnet" / "1.0.0"), crop=crop, image_size=32)
  assert arrays["image"].shape == (5, 32, 32, 3) and arrays["image"].dtype == np.uint8
  assert arrays["age"].tolist() == [2, 10, 33, 33, 69]
  assert arrays["subject_id"].tolist() == [1, 1, 2, 2, 3]
  assert arrays["file_name"][0] == "001A02.JPG"
  with pytest.raises(FileNotFoundError, match="not a built FG-NET dataset"):
    decoding.load_fgnet_arrays(str(tmp_path / "nothing"))


@pytest.fixture
def dummy_zip_server(tmp_path):
  """A loopback HTTP server offering the dummy data as FGNET.zip; yields its URL."""
  served = tmp_path / "served"
  served.mkdir()
  _zip_dummy_data(served / "FGNET.zip")
  with local_http.serve_folder(served) as base_url:
    yield base_url + "FGNET.zip"


def test_downloads_when_manual_dir_is_empty(tmp_path, dummy_zip_server, monkeypatch):
  monkeypatch.setattr(_builder_module(), "DOWNLOAD_URL", dummy_zip_server)
  (tmp_path / "empty").mkdir()
  assert len(_build(tmp_path / "empty", tmp_path / "data")) == 5


def test_manual_copy_is_used_before_the_download(tmp_path, dummy_zip_server, monkeypatch):
  monkeypatch.setattr(_builder_module(), "DOWNLOAD_URL", dummy_zip_server)
  (tmp_path / "manual").mkdir()
  (tmp_path / "manual" / "notes.txt").write_text("no FG-NET here")
  with pytest.raises(FileNotFoundError, match="(?s)manual directory .*manual holds no usable copy.*yanweifu"):
    _build(tmp_path / "manual", tmp_path / "data")  # an unusable manual copy is an error, not a download
  assert not (tmp_path / "data" / "downloads" / "fgnet" / "FGNET.zip").exists()


def test_a_non_zip_download_is_refused_and_not_kept(tmp_path, dummy_zip_server, monkeypatch):
  monkeypatch.setattr(_builder_module(), "DOWNLOAD_URL", dummy_zip_server.replace("FGNET.zip", ""))
  with pytest.raises(FileNotFoundError, match="did not return a zip archive"):
    _build(tmp_path / "missing", tmp_path / "data")
  assert not list((tmp_path / "data" / "downloads" / "fgnet").iterdir())


def test_failed_download_and_no_manual_copy_explains_both(tmp_path):
  with pytest.raises(FileNotFoundError, match=(r"(?s)manual directory .*missing or empty.*"
                                               r"download of http://127.0.0.1:1/FGNET.zip failed.*yanweifu.github.io")):
    _build(tmp_path / "missing", tmp_path / "data")


_READ_WITHOUT_TENSORFLOW = """
import sys
import tensorflow_datasets as tfds
from amr_jax.data import tfds_builders
tfds_builders.build("fgnet", manual_dir=sys.argv[1], data_dir=sys.argv[2])
source = tfds.builder_from_directory(sys.argv[2] + "/fgnet/1.0.0").as_data_source()["train"]
print(len(source), source[0]["image"].shape, sorted(int(source[i]["age"]) for i in range(len(source))),
      "tensorflow" in sys.modules)
"""


def test_building_and_reading_never_import_tensorflow(tmp_path):
  # A fresh process, so no other test's imports count; TensorFlow is installed for the TFDS command line only.
  result = subprocess.run([sys.executable, "-c", _READ_WITHOUT_TENSORFLOW, str(DUMMY), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split("\n")[-2] == "5 (48, 40, 3) [2, 10, 33, 33, 69] False"


# A checkout's datasets/fgnet, or the installed package's builder (no checkout needed).
@pytest.mark.parametrize("dataset", [["datasets/fgnet"], ["fgnet", "--imports=amr_jax.data.fgnet_builder"]])
def test_tfds_command_line_builds_it_with_hugging_face_datasets_installed(tmp_path, dataset):
  # `datasets/` shares its name with Hugging Face's package; both must keep working side by side.
  repo = BUILDER_DIR.parents[1]
  hugging_face = subprocess.run([sys.executable, "-c", "import datasets; print(datasets.__file__)"],
                                cwd=repo, capture_output=True, text=True, timeout=120)
  assert hugging_face.returncode == 0 and "site-packages" in hugging_face.stdout, hugging_face
  tfds_cli = pathlib.Path(sys.executable).with_name("tfds")
  # TFDS's own command, without --file_format: the builder makes it array_record, what training reads.
  result = subprocess.run([str(tfds_cli), "build", *dataset, f"--manual_dir={DUMMY}",
                           f"--data_dir={tmp_path}"], cwd=repo, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert [p.name for p in (tmp_path / "fgnet" / "1.0.0").glob("fgnet-train.*")] == [
      "fgnet-train.array_record-00000-of-00001"]
  source = tfds.builder_from_directory(str(tmp_path / "fgnet" / "1.0.0")).as_data_source()["train"]
  assert sorted(source[i]["file_name"].decode() for i in range(len(source)))[0] == "001A02.JPG"
  assert len(source) == 5


@pytest.mark.parametrize("name", tfds_builders.NAMES)
def test_the_file_tfds_build_reads_subclasses_the_package_builder_and_registers_nothing(name, tmp_path):
  """`tfds build datasets/<name>` takes the one builder class its file defines: a subclass of amr_jax's, with the
  same name, folder and metadata. Imported plainly (not in TFDS's skip_registration), it registers nothing."""
  package_class = tfds_builders.builder_class(name)  # registered in TFDS under `name`
  # Loaded as `tfds build datasets/<name>` loads it: module <name>.<name>_dataset_builder, from the file.
  module_name = f"{name}.{name}_dataset_builder"
  spec = importlib.util.spec_from_file_location(module_name, BUILDER_DIR.parent / name / f"{name}_dataset_builder.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module
  try:
    spec.loader.exec_module(module)
    thin = module.Builder  # a second class named `name`: no duplicate error
    assert tfds.core.community.builder_cls_from_module(module_name) is thin  # what `tfds build` picks
  finally:
    sys.modules.pop(module_name, None)
  assert issubclass(thin, package_class) and thin.name == package_class.name == name
  assert tfds.builder_cls(name) is package_class
  metadata = package_class.get_metadata()
  assert thin.get_metadata() == metadata
  assert metadata.description.startswith("# ") and "(TFDS builder)" in metadata.description.splitlines()[0]
  assert metadata.citation.startswith("@")
  built_in = {"fgnet": tmp_path / "fgnet" / "1.0.0", "clap2016": tmp_path / "clap2016" / "face" / "1.0.0",
              "scut_fbp5500": tmp_path / "scut_fbp5500" / "1.0.0"}[name]
  assert {pathlib.Path(cls(data_dir=tmp_path).data_dir) for cls in (package_class, thin)} == {built_in}


_FULL_DISK_BUILD = """
import resource, sys
from amr_jax import errors
from amr_jax.data import tfds_builders
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))  # a write past 20 kB fails: EFBIG
try:
  tfds_builders.build("fgnet", manual_dir=sys.argv[1], data_dir=sys.argv[2])
except errors.StorageError as error:
  print(f"error: {error}", file=sys.stderr)
  sys.exit(1)
"""


def test_a_build_that_cannot_be_written_is_refused_in_one_line_and_leaves_nothing(tmp_path):
  """TFDS reports a failed write as a RuntimeError deep in its array_record writer: it comes out as one line."""
  result = subprocess.run([sys.executable, "-c", _FULL_DISK_BUILD, str(DUMMY), str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  (line,) = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.startswith("error: ")]
  assert line == (f"error: data_dir {tmp_path / 'data'}: the fgnet dataset could not be written there (File too "
                  "large); TFDS keeps no incomplete build. Free space there, or build into another folder "
                  "(config.data.data_dir), then run again.")
  assert not list((tmp_path / "data" / "fgnet").iterdir())


def test_a_manual_dir_that_is_the_zip_itself_is_named_by_the_builder_too(tmp_path):
  """`tfds build datasets/fgnet --manual_dir=FGNET.zip` goes to the builder without amr_jax's own check."""
  from amr_jax import errors

  _zip_dummy_data(tmp_path / "FGNET.zip")
  builder = tfds_builders.builder_class("fgnet")(data_dir=str(tmp_path / "data"))
  with pytest.raises(errors.DataError, match=f"manual directory {tmp_path / 'FGNET.zip'} is a file; give the folder "
                     f"it lies in \\({tmp_path}\\)"):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "FGNET.zip")))
