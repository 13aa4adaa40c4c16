"""The SCUT-FBP5500 TFDS builder and its layout reader: dummy_data, the CSV ratings, damaged copies, the zip, the CLI.

The builder is amr_jax.data.scut_fbp5500_builder's; nothing imports the datasets/ folder as
`import datasets...`: Hugging Face's `datasets` package has the same top-level name.
The release has no download link, so no test can reach the internet.
"""

import csv
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import openpyxl
import PIL.Image
import pytest

from amr_jax import errors
from amr_jax.data import scut_fbp5500, scut_fbp5500_ratings, tfds_builders

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILDER_DIR = ROOT / "datasets" / "scut_fbp5500"
DUMMY = BUILDER_DIR / "dummy_data"
RELEASE = DUMMY / "SCUT-FBP5500_v2"
CV = "train_test_files/5_folders_cross_validations_files"
SPLIT_60_40 = "train_test_files/split_of_60%training and 40%testing"

# What the dummy data holds (see datasets/scut_fbp5500/make_dummy_data.py).
NAMES = ["AF1.jpg", "AF2.jpg", "AF3.jpg", "AM1.jpg", "AM2.jpg", "CF1.jpg", "CF2.jpg", "CM1.jpg", "CM2.jpg", "CM3.jpg"]
TEST_60_40 = {"AF3.jpg", "AM2.jpg", "CF2.jpg", "CM3.jpg"}
METADATA = {"num_images": 10, "subset_counts": {"AF": 3, "AM": 2, "CF": 2, "CM": 3},
            "ratings_file": "All_Ratings.xlsx", "rating_sheets": ["Asian", "Caucasian"], "ratings_read": 39,
            "duplicate_ratings_skipped": 0, "score_std_ddof": 0, "disagreement_tolerance": 1e-3,
            "label_rating_disagreements": {"CF2.jpg": {"label": 3.5, "ratings_mean": 2.5}}}


def _build(manual_dir, data_dir):
  return tfds_builders.build("scut_fbp5500", manual_dir=manual_dir, data_dir=data_dir)


def _examples(builder):
  """file name -> example (text features come back as bytes)."""
  source = builder.as_data_source()["train"]
  return {(example := source[i])["file_name"].decode(): example for i in range(len(source))}


def _population_std(values):
  mean = sum(values) / len(values)
  return math.sqrt(sum((value - mean) ** 2 for value in values) / len(values))


def _decoded(path):
  with PIL.Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def dummy_build(tmp_path_factory):
  return _build(DUMMY, tmp_path_factory.mktemp("data"))


def test_build_holds_every_image_with_its_score_spread_subset_and_splits(dummy_build):
  features = dummy_build.info.features  # np_dtype: `.dtype` is a TensorFlow dtype and imports TensorFlow
  assert [features[name].np_dtype for name in ("score_mean", "score_std", "num_ratings", "cv_fold")] == [
      np.float32, np.float32, np.int32, np.int32]
  assert dummy_build.info.supervised_keys == ("image", "score_mean")
  assert list(dummy_build.info.splits) == ["train"]
  examples = _examples(dummy_build)
  assert sorted(examples) == NAMES
  af3 = examples["AF3.jpg"]  # ratings 5, 4, 4, 5: mean 4.5, each 0.5 from it
  assert af3["score_mean"] == np.float32(4.5) and af3["num_ratings"] == 4
  assert af3["score_std"] == np.float32(_population_std([5, 4, 4, 5])) == np.float32(0.5)
  assert (af3["subset"], af3["cv_fold"], af3["split_60_40"]) == (b"AF", 3, b"test")
  assert af3["image"].shape == (32, 24, 3) and af3["image"].dtype == np.uint8  # 24 wide, 32 high
  np.testing.assert_array_equal(af3["image"], _decoded(RELEASE / "Images" / "AF3.jpg"))
  # AF1: Rating 3, 4, 3, 2; its `original Rating` column says 3, 1, 3, 2, which must not be read.
  af1 = examples["AF1.jpg"]
  assert (af1["score_mean"], af1["score_std"]) == (np.float32(3.0), np.float32(_population_std([3, 4, 3, 2])))
  assert af1["score_std"] != np.float32(_population_std([3, 1, 3, 2]))
  # AM2: three raters; the score is All_labels.txt's 6-decimal value, the spread ddof=0 (not sqrt(1/3)).
  am2 = examples["AM2.jpg"]
  assert (am2["score_mean"], am2["num_ratings"]) == (np.float32(3.333333), 3)
  assert am2["score_std"] == np.float32(math.sqrt(2 / 9))
  # CF2: All_labels.txt's 3.5 is kept although its ratings' mean is 2.5.
  assert examples["CF2.jpg"]["score_mean"] == np.float32(3.5)
  assert examples["CF2.jpg"]["score_std"] == np.float32(0.5)
  assert examples["CM2.jpg"]["image"].shape == (24, 24, 3)  # a greyscale file, stored as RGB
  folds = {k: sorted(name for name, e in examples.items() if e["cv_fold"] == k) for k in range(1, 6)}
  assert folds == {1: ["AF1.jpg", "CM1.jpg"], 2: ["AF2.jpg", "CF1.jpg"], 3: ["AF3.jpg", "CM2.jpg"],
                   4: ["AM1.jpg", "CF2.jpg"], 5: ["AM2.jpg", "CM3.jpg"]}
  assert {name for name, e in examples.items() if e["split_60_40"] == b"test"} == TEST_60_40
  assert {name: e["subset"].decode() for name, e in examples.items()} == {name: name[:2] for name in NAMES}
  assert "tensorflow" not in sys.modules


def test_metadata_records_counts_ratings_and_the_disagreement(dummy_build):
  assert dict(dummy_build.info.metadata) == METADATA
  assert json.loads((pathlib.Path(dummy_build.data_dir) / "metadata.json").read_text()) == METADATA
  assert dummy_build.info.homepage == "https://github.com/HCIILAB/SCUT-FBP5500-Database-Release"
  assert dummy_build.info.description.startswith("# SCUT-FBP5500 (TFDS builder)")
  assert "arXiv:1801.06345" in dummy_build.info.citation


def _release_copy(tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(RELEASE, manual / "SCUT-FBP5500_v2")
  return manual, manual / "SCUT-FBP5500_v2"


def _workbook_rows():
  """The dummy workbook's sheets' rows, header first, as values."""
  workbook = openpyxl.load_workbook(RELEASE / "All_Ratings.xlsx", read_only=True)
  try:
    return {sheet.title: [list(row) for row in sheet.iter_rows(values_only=True)] for sheet in workbook.worksheets}
  finally:
    workbook.close()


def _write_csv(path, header, rows, delimiter=","):
  with path.open("w", newline="") as handle:
    csv.writer(handle, delimiter=delimiter).writerows([header, *rows])


def _rating_rows():
  """Every sheet's rating rows, in workbook order."""
  return [row for rows in _workbook_rows().values() for row in rows[1:]]


def _ratings_as_csv(release, header=("Rater", "Filename", "Rating", "original Rating"), delimiter=",", rows=None):
  """Replaces the copy's workbook with All_Ratings.csv: ``rows``, else the rows of every sheet."""
  _write_csv(release / "All_Ratings.csv", header, _rating_rows() if rows is None else rows, delimiter)
  (release / "All_Ratings.xlsx").unlink()


def _rating_out_of_range(release):
  rows = _rating_rows()
  rows[12][2] = 7  # the CSV's row 14, after the header
  _ratings_as_csv(release, rows=rows)


@pytest.mark.parametrize("header, delimiter, bare_names", [
    (("Rater", "Filename", "Rating", "original Rating"), ",", False),
    (("RATER", "File_Name", "rating", "Original  Rating"), ";", False),  # other case, spacing, separator
    (("Rater", "Filename", "Rating", "original Rating"), ",", True),  # "AF1" for AF1.jpg
], ids=["as-exported", "semicolons-other-case", "names-without-extension"])
def test_csv_ratings_build_the_same_dataset(dummy_build, tmp_path, header, delimiter, bare_names, caplog):
  manual, release = _release_copy(tmp_path)
  rows = [[row[0], row[1].removesuffix(".jpg"), *row[2:]] if bare_names else row for row in _rating_rows()]
  _ratings_as_csv(release, header, delimiter, rows=rows)
  builder = _build(manual, tmp_path / "data")
  assert dict(builder.info.metadata) == {**METADATA, "ratings_file": "All_Ratings.csv", "rating_sheets": []}
  got, want = _examples(builder), _examples(dummy_build)
  assert sorted(got) == NAMES
  for name in NAMES:
    assert got[name].keys() == want[name].keys()
    for key in want[name]:
      np.testing.assert_array_equal(got[name][key], want[name][key], err_msg=f"{name} {key}")
  assert "the scores of 1 image(s) in train_test_files/All_labels.txt differ from the mean" in caplog.text
  assert "All_Ratings.csv by more than 0.001" in caplog.text and "CF2.jpg (1 image)" in caplog.text


def test_a_copy_lacking_several_parts_is_refused_once_naming_them_all(tmp_path):
  manual, release = _release_copy(tmp_path)
  shutil.rmtree(release / "Images")
  (release / "All_Ratings.xlsx").unlink()
  (release / "train_test_files" / "All_labels.txt").unlink()
  (release / CV / "cross_validation_3" / "test_3.txt").unlink()
  (release / SPLIT_60_40 / "train.txt").unlink()
  missing = ["Images/", "All_Ratings.xlsx or All_Ratings.csv", "train_test_files/All_labels.txt",
             f"{SPLIT_60_40}/train.txt", f"{CV}/cross_validation_3/test_3.txt"]
  with pytest.raises(errors.MissingDataError) as raised:
    _build(manual, tmp_path / "data")
  first_line = str(raised.value).splitlines()[0]  # the line the one-line `error:` report shows
  assert f"{release}: incomplete SCUT-FBP5500 release folder, missing {', '.join(missing)}." in first_line
  assert "Get SCUT-FBP5500_v2" in str(raised.value)
  with pytest.raises(errors.MissingDataError, match=f"missing {', '.join(missing)}"):
    scut_fbp5500.read_release(release)  # the reader given the folder itself says the same


def _append(path, text):
  with path.open("a", newline="") as handle:
    handle.write(text)


def _set_line(path, number, text):
  lines = path.read_text().splitlines()
  lines[number - 1] = text
  path.write_text("\n".join(lines) + "\n")


def _drop_line(path, name):
  path.write_text("".join(line for line in path.read_text().splitlines(True) if not line.startswith(name + " ")))


def _workbook_header(release, sheet, column, value):
  workbook = openpyxl.load_workbook(release / "All_Ratings.xlsx")
  workbook[sheet].cell(row=1, column=column, value=value)
  workbook.save(release / "All_Ratings.xlsx")


@pytest.mark.parametrize("damage, error, message", [
    (lambda r: _set_line(r / "train_test_files/All_labels.txt", 3, "AF3.jpg"), errors.DataError,
     r"All_labels.txt, line 3: expected '<file name> <score>' separated by a space \(e.g. 'AF1.jpg 2.716667'\), "
     r"got 'AF3.jpg'"),
    (lambda r: _set_line(r / "train_test_files/All_labels.txt", 7, "CF2.jpg 3,5"), errors.DataError,
     r"All_labels.txt, line 7: score '3,5' is not a number from 1 to 5"),
    (lambda r: _set_line(r / f"{SPLIT_60_40}/test.txt", 2, "AM2.jpg 5.2"), errors.DataError,
     r"test.txt, line 2: score '5.2' is not a number from 1 to 5"),
    (lambda r: _set_line(r / "train_test_files/All_labels.txt", 1, "XF1.jpg 3.0"), errors.DataError,
     r"All_labels.txt, line 1: 'XF1.jpg' is not an image name of the release"),
    (lambda r: _append(r / "train_test_files/All_labels.txt", "AF2.jpg 2.0\r\n"), errors.DataError,
     r"All_labels.txt, line 11: AF2.jpg is already listed on line 2"),
], ids=["one-field", "decimal-comma", "split-file-score-out-of-range", "unknown-subset", "listed-twice"])
def test_a_malformed_line_is_named_by_file_and_line(tmp_path, damage, error, message):
  _assert_damaged_copy_is_refused(tmp_path, damage, error, message)


def _assert_damaged_copy_is_refused(tmp_path, damage, error, message):
  manual, release = _release_copy(tmp_path)
  damage(release)
  with pytest.raises(error, match=message):
    _build(manual, tmp_path / "data")


def test_overlapping_cross_validation_test_files_are_refused_naming_the_image(tmp_path):
  manual, release = _release_copy(tmp_path)
  _append(release / CV / "cross_validation_2" / "test_2.txt", "AF1.jpg 3.000000\r\n")  # AF1 is fold 1's
  with pytest.raises(errors.DataError) as raised:
    _build(manual, tmp_path / "data")
  test_1, test_2 = (release / CV / f"cross_validation_{k}" / f"test_{k}.txt" for k in (1, 2))
  assert str(raised.value) == ("each image must be in exactly one of the 5-fold cross-validation test files, but 1 "
                               f"image(s) are in several: AF1.jpg in {test_1} and {test_2}.")


@pytest.mark.parametrize("damage, error, message", [
    (lambda r: _drop_line(r / CV / "cross_validation_4" / "test_4.txt", "CF2.jpg"), errors.DataError,
     r"together must list every labelled image once; CF2.jpg \(1 image\) of All_labels.txt are in none"),
    (lambda r: _append(r / CV / "cross_validation_1" / "train_1.txt", "CM1.jpg 1.250000\r\n"), errors.DataError,
     r"train_1.txt: must list exactly the labelled images that .*test_1.txt does not; it also lists CM1.jpg"),
    (lambda r: _drop_line(r / CV / "cross_validation_5" / "train_5.txt", "AF2.jpg"), errors.DataError,
     r"train_5.txt: must list exactly the labelled images that .*test_5.txt does not; it lacks AF2.jpg \(1 image\)"),
    (lambda r: _append(r / SPLIT_60_40 / "test.txt", "AF1.jpg 3.0\n"), errors.DataError,
     r"exactly one of the 60%/40% train and test files, .*: AF1.jpg in .*train.txt and .*test.txt"),
    (lambda r: _append(r / SPLIT_60_40 / "test.txt", "AF9.jpg 3.0\n"), errors.DataError,
     r"test.txt: list AF9.jpg \(1 image\) that All_labels.txt does not"),
    (lambda r: [(r / "Images" / name).unlink() for name in ("CM1.jpg", "AF2.jpg")], errors.MissingDataError,
     r"Images: AF2.jpg, CM1.jpg \(2 images\) listed in .*All_labels.txt but absent"),
    (lambda r: shutil.copy(r / "Images" / "AF1.jpg", r / "Images" / "AF4.jpg"), errors.DataError,
     r"Images: AF4.jpg \(1 image\) with no label in .*All_labels.txt"),
    (lambda r: _ratings_as_csv(r, rows=[row for row in _rating_rows() if row[1] != "CM3.jpg"]), errors.DataError,
     r"All_Ratings.csv: no ratings for CM3.jpg \(1 image\)"),
    (_rating_out_of_range, errors.DataError, r"All_Ratings.csv, row 14: Rating '7' is not a number from 1 to 5"),
    (lambda r: _workbook_header(r, "Caucasian", 3, "Score"), errors.DataError,
     r"All_Ratings.xlsx, sheet 'Caucasian', row 1: found the headers 'Rater', 'Filename', 'Score', 'original "
     r"Rating'; expected the header row to have one file name column \(Filename\) and one Rating column"),
], ids=["image-in-no-cv-test-file", "train-k-repeats-test-k", "train-k-lacks-an-image", "60-40-overlap",
        "split-lists-unlabelled-image", "labelled-images-absent", "image-without-label", "image-without-ratings",
        "rating-out-of-range", "workbook-header-without-rating"])
def test_inconsistent_copies_are_refused_naming_the_file_and_images(tmp_path, damage, error, message):
  _assert_damaged_copy_is_refused(tmp_path, damage, error, message)


def test_ratings_repeated_on_another_sheet_count_once_and_a_conflict_is_refused(tmp_path):
  """A workbook with an overall sheet besides the per-subset ones holds each rating twice."""
  _, release = _release_copy(tmp_path)
  workbook = openpyxl.load_workbook(release / "All_Ratings.xlsx")
  everything = workbook.create_sheet("ALL")
  for row in _rating_rows():
    everything.append(row)
  everything.insert_rows(1)
  for column, name in enumerate(("Rater", "Filename", "Rating", "original Rating"), start=1):
    everything.cell(row=1, column=column, value=name)
  workbook.save(release / "All_Ratings.xlsx")
  result = scut_fbp5500.read_release(release)
  assert (result.ratings.rows, result.ratings.duplicates, result.ratings.sheets) == (39, 39, ("Asian", "Caucasian"))
  assert {image.file_name: image.num_ratings for image in result.images}["AM2.jpg"] == 3
  everything.cell(row=2, column=3, value=1)  # rater 1's AF1.jpg: 3 on sheet Asian
  workbook.save(release / "All_Ratings.xlsx")
  with pytest.raises(errors.DataError, match=r"sheet 'ALL', row 2: rater 1 rates AF1.jpg 1, but .*sheet 'Asian', "
                                             r"row 2 gives 3; each rater rates an image once"):
    scut_fbp5500.read_release(release)


def test_ratings_file_errors_name_the_file(tmp_path):
  path = tmp_path / "All_Ratings.xlsx"
  path.write_bytes(b"not a workbook")
  with pytest.raises(errors.DataError, match="All_Ratings.xlsx: not a readable .xlsx workbook"):
    scut_fbp5500_ratings.read_ratings(path)
  _write_csv(tmp_path / "All_Ratings.csv", ("Rater", "Filename", "Rating"), [])
  with pytest.raises(errors.DataError, match=r"All_Ratings.csv: holds no ratings"):
    scut_fbp5500_ratings.read_ratings(tmp_path / "All_Ratings.csv")
  _write_csv(tmp_path / "All_Ratings.csv", ("Rater", "Filename", "original Rating"), [(1, "AF1.jpg", 3)])
  with pytest.raises(errors.DataError, match=r"found the headers 'Rater', 'Filename', 'original Rating'; expected"):
    scut_fbp5500_ratings.read_ratings(tmp_path / "All_Ratings.csv")  # `original Rating` is not `Rating`
  with pytest.raises(errors.MissingDataError, match="holds neither All_Ratings.xlsx nor All_Ratings.csv"):
    scut_fbp5500_ratings.ratings_path(tmp_path / "elsewhere")


def test_find_root_accepts_the_folder_or_its_parent_and_refuses_two_copies(tmp_path):
  assert scut_fbp5500.find_root(DUMMY) == RELEASE
  assert scut_fbp5500.find_root(RELEASE) == RELEASE
  shutil.copytree(RELEASE, tmp_path / "a" / "SCUT-FBP5500_v2")
  shutil.copytree(RELEASE, tmp_path / "b" / "SCUT-FBP5500_v2")
  with pytest.raises(errors.DataError, match="holds 2 SCUT-FBP5500 release folders"):
    scut_fbp5500.find_root(tmp_path)
  with pytest.raises(errors.MissingDataError, match="holds no SCUT-FBP5500 release folder"):
    scut_fbp5500.find_root(tmp_path / "a" / "SCUT-FBP5500_v2" / "Images")


@pytest.mark.parametrize("manual", ["empty", "missing"])
def test_no_manual_copy_is_refused_with_what_to_get_and_no_download(tmp_path, manual):
  (tmp_path / "empty").mkdir()
  with pytest.raises(errors.MissingDataError) as raised:
    _build(tmp_path / manual, tmp_path / "data")
  message = str(raised.value)
  assert f"manual directory {tmp_path / manual} is missing or empty" in message
  assert "download of" not in message  # the release has no download link: nothing is tried
  assert "Get SCUT-FBP5500_v2" in message and "https://github.com/HCIILAB/SCUT-FBP5500-Database-Release" in message


def test_builds_from_the_zip_in_the_manual_dir(tmp_path):
  (tmp_path / "manual").mkdir()
  with zipfile.ZipFile(tmp_path / "manual" / "SCUT-FBP5500_v2.zip", "w") as archive:
    for file in sorted(RELEASE.rglob("*")):
      archive.write(file, file.relative_to(DUMMY))  # the real zip's top-level SCUT-FBP5500_v2/ folder
    # A zip made on macOS also holds resource forks under __MACOSX/, never a release folder.
    archive.writestr("__MACOSX/SCUT-FBP5500_v2/Images/._AF1.jpg", b"resource fork")
  builder = _build(tmp_path / "manual", tmp_path / "data")
  assert sorted(_examples(builder)) == NAMES


def test_tfds_command_line_builds_it_as_array_record(tmp_path):
  """`tfds build datasets/scut_fbp5500` from the repository root (it imports TensorFlow), without --file_format."""
  command = [sys.executable, "-m", "tensorflow_datasets.scripts.cli.main", "build", str(BUILDER_DIR.relative_to(ROOT)),
             f"--manual_dir={DUMMY}", f"--data_dir={tmp_path}"]
  result = subprocess.run(command, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  folder = tmp_path / "scut_fbp5500" / "1.0.0"
  assert [path.name for path in folder.glob("scut_fbp5500-train.*")] == [
      "scut_fbp5500-train.array_record-00000-of-00001"]
  builder = tfds_builders.builder_class("scut_fbp5500")(data_dir=tmp_path)  # the Python API finds it
  assert builder.is_prepared() and builder.info.file_format.value == "array_record"
  assert sorted(_examples(builder)) == NAMES
  assert builder.info.metadata["label_rating_disagreements"] == METADATA["label_rating_disagreements"]
