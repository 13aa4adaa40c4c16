"""amr_jax.data.clap2016: the APPA-REAL release layout, gt_avg CSVs and ignore lists (no TFDS, no images decoded)."""

import hashlib
import pathlib
import re
import shutil

import pytest

from amr_jax import errors
from amr_jax.data import clap2016

DUMMY = pathlib.Path(__file__).resolve().parents[1] / "datasets" / "clap2016" / "dummy_data"
RELEASE = DUMMY / "appa-real-release"
HEADER = "file_name,num_ratings,apparent_age_avg,apparent_age_std,real_age\n"


def _csv(tmp_path, text, name="gt_avg_train.csv"):
  path = tmp_path / name
  path.write_text(text)
  return path


def test_find_root_in_manual_dir_release_folder_or_below(tmp_path):
  assert clap2016.find_root(DUMMY) == RELEASE  # the zip's top-level folder inside the manual directory
  assert clap2016.find_root(RELEASE) == RELEASE
  shutil.copytree(RELEASE, tmp_path / "CLAP" / "appa-real-release")
  assert clap2016.find_root(tmp_path) == tmp_path / "CLAP" / "appa-real-release"


def test_find_root_errors_say_what_is_missing(tmp_path):
  with pytest.raises(errors.MissingDataError, match="(?s)holds no CLAP2016 release folder.*appa-real-release.zip"):
    clap2016.find_root(tmp_path)
  with pytest.raises(errors.MissingDataError, match="no such directory"):
    clap2016.find_root(tmp_path / "missing")
  shutil.copytree(RELEASE, tmp_path / "a")
  shutil.rmtree(tmp_path / "a" / "test")
  (tmp_path / "a" / "gt_avg_valid.csv").unlink()
  with pytest.raises(FileNotFoundError, match="incomplete CLAP2016 release folder, missing test/, gt_avg_valid.csv"):
    clap2016.find_root(tmp_path)
  shutil.copytree(RELEASE, tmp_path / "b")
  shutil.copytree(RELEASE, tmp_path / "c")
  with pytest.raises(errors.DataError, match="holds 2 CLAP2016 release folders"):
    clap2016.find_root(tmp_path)


def test_read_split_follows_the_csv():
  images = clap2016.read_split(RELEASE, "train", crop="face")
  assert [image.file_name for image in images] == [f"00000{i}.jpg" for i in range(5)]
  first = images[0]
  assert (first.num_ratings, first.apparent_age_mean, first.apparent_age_std, first.real_age) == (36, 4.2222222,
                                                                                                  1.146423, 4)
  assert first.path("face") == RELEASE / "train" / "000000.jpg_face.jpg"
  assert first.path("whole") == RELEASE / "train" / "000000.jpg"
  assert [len(clap2016.read_split(RELEASE, split)) for split in ("valid", "test")] == [2, 3]
  with pytest.raises(ValueError, match="unknown crop 'aligned'"):
    first.path("aligned")
  with pytest.raises(ValueError, match="unknown split 'val'") as raised:
    clap2016.read_split(RELEASE, "val")
  # A wrong argument in code is a bug, not bad data: it must not be reported as a one-line RunError.
  assert not isinstance(raised.value, errors.RunError)


def test_read_split_names_a_listed_image_missing_on_disk(tmp_path):
  shutil.copytree(RELEASE, tmp_path / "r")
  (tmp_path / "r" / "valid" / "000006.jpg_face.jpg").unlink()
  assert len(clap2016.read_split(tmp_path / "r", "valid", crop="whole")) == 2  # the whole photo is there
  with pytest.raises(errors.MissingDataError,
                     match=r"000006.jpg_face.jpg: missing, but .*gt_avg_valid.csv, row 3 lists"):
    clap2016.read_split(tmp_path / "r", "valid", crop="face")


def test_csv_tolerates_bom_blank_lines_column_order_extra_columns_and_whole_floats(tmp_path):
  path = _csv(tmp_path, "\ufeffreal_age,file_name,extra,num_ratings,apparent_age_std,apparent_age_avg\r\n"
              "4,000000.jpg,x,36.0,1.5,4.2222222\r\n\r\n7,000001.jpg,y,40,0,6.5\r\n\r\n")
  rows = clap2016.read_gt_avg_csv(path)
  assert [number for number, _ in rows] == [2, 4]
  assert rows[0][1] == {"file_name": "000000.jpg", "num_ratings": 36, "apparent_age_mean": 4.2222222,
                        "apparent_age_std": 1.5, "real_age": 4}


@pytest.mark.parametrize("text, message", [
    ("file_name,num_ratings,apparent_age_avg,apparent_age_std\n000000.jpg,36,4.2,1.1\n",
     "header lacks column(s) real_age; expected the header file_name,num_ratings,apparent_age_avg,"),
    (HEADER + "000000.jpg,36,4.2,1.1,4\n000001.jpg,38,21.07\n",
     "gt_avg_train.csv, row 3: missing field 'apparent_age_std'"),
    (HEADER + "000000.jpg,36,,1.1,4\n", "row 2: missing field 'apparent_age_avg'"),
    (HEADER + "000000.jpg,36,abc,1.1,4\n", "row 2: apparent_age_avg 'abc' is not a number"),
    (HEADER + "000000.jpg,36,4.2,nan,4\n", "row 2: apparent_age_std 'nan' is not a number"),
    (HEADER + "000000.jpg,36,4.2,1.1,4.5\n", "row 2: real_age '4.5' is not a whole non-negative number"),
    (HEADER + "000000.jpg,-3,4.2,1.1,4\n", "row 2: num_ratings '-3' is not a whole non-negative number"),
    (HEADER + "../000000.jpg,36,4.2,1.1,4\n", "row 2: file_name '../000000.jpg' is not a plain file name"),
    (HEADER + "000000.jpg,36,4.2,1.1,4\n000000.jpg,36,4.2,1.1,4\n", "row 3: 000000.jpg is already listed in row 2"),
    ("", "header lacks column(s) file_name, num_ratings"),
    (HEADER + "000000.jpg,36,-35,1.1,4\n", "row 2: apparent_age_avg '-35' is out of range (expected 0 to 120 years)."),
    (HEADER + "000000.jpg,36,161.9,1.1,4\n", "row 2: apparent_age_avg '161.9' is out of range (expected 0 to 120"),
    (HEADER + "000000.jpg,36,4.2,-0.5,4\n", "row 2: apparent_age_std '-0.5' is out of range (expected 0 to 120"),
    (HEADER + "000000.jpg,36,4.2,120.5,4\n", "row 2: apparent_age_std '120.5' is out of range (expected 0 to 120"),
    (HEADER + "000000.jpg,36,4.2,1.1,-4\n", "row 2: real_age '-4' is out of range (expected 0 to 120 years)."),
    (HEADER + "000000.jpg,36,4.2,1.1,121\n", "row 2: real_age '121' is out of range (expected 0 to 120 years)."),
])
def test_csv_errors_name_file_and_row(tmp_path, text, message):
  with pytest.raises(errors.DataError, match=re.escape(message)):
    clap2016.read_gt_avg_csv(_csv(tmp_path, text))


def test_ages_at_the_ends_of_the_plausible_range_are_kept(tmp_path):
  assert clap2016.MAX_PLAUSIBLE_AGE == 120
  rows = clap2016.read_gt_avg_csv(_csv(tmp_path, HEADER + "000000.jpg,36,120,0,120\n000001.jpg,3,0,120.0,0\n"))
  assert [(r["apparent_age_mean"], r["apparent_age_std"], r["real_age"]) for _, r in rows] == [(120, 0, 120),
                                                                                                 (0, 120, 0)]


def test_missing_csv_is_named(tmp_path):
  with pytest.raises(errors.MissingDataError, match="gt_avg_test.csv: missing"):
    clap2016.read_gt_avg_csv(tmp_path / "gt_avg_test.csv")


def test_read_ignore_list(tmp_path):
  dummy = clap2016.read_ignore_list(DUMMY / "ignore_list.txt")
  assert dummy.names == ("000003.jpg", "000008.jpg", "999999.jpg")  # the blank line is skipped
  assert dummy.sha256 == hashlib.sha256((DUMMY / "ignore_list.txt").read_bytes()).hexdigest()
  path = tmp_path / "list.txt"
  path.write_text("  000001.jpg \r\n000001.jpg\n\n")
  assert clap2016.read_ignore_list(path).names == ("000001.jpg",)  # repeats count once
  path.write_text("000001.jpg\nimg_name,age\n")
  with pytest.raises(errors.DataError, match=r"list.txt, line 2: expected one image name \(e.g. 000025.jpg\), got"):
    clap2016.read_ignore_list(path)
  with pytest.raises(errors.MissingDataError, match="nothing.txt: ignore list missing"):
    clap2016.read_ignore_list(tmp_path / "nothing.txt")


def test_real_ignore_list_has_118_train_names(shared_dir):
  ignore = clap2016.read_ignore_list(shared_dir / "data" / "clap2016" / "ignore_list.txt")
  assert len(ignore.names) == 118
  assert all(re.fullmatch(r"\d{6}\.jpg", name) for name in ignore.names)


def test_apply_ignore_list_drops_train_only_and_reports_the_rest():
  images = {split: clap2016.read_split(RELEASE, split) for split in clap2016.SPLITS}
  result = clap2016.apply_ignore_list(images, ["000003.jpg", "000008.jpg", "999999.jpg"])
  assert [image.file_name for image in result.train] == ["000000.jpg", "000001.jpg", "000002.jpg", "000004.jpg"]
  assert result.dropped == ("000003.jpg",)
  assert result.not_in_train == {"000008.jpg": "test", "999999.jpg": "no split"}
