"""Writes dummy_data/: random-noise images in the APPA-REAL release layout (not CLAP2016 data).

Deterministic (fixed seed), so the files can be regenerated:
``python datasets/clap2016/make_dummy_data.py``. The tests in
tests/test_datasets_clap2016.py rely on the names, sizes and labels below.
"""

import csv
import pathlib
import shutil

import numpy as np
import PIL.Image

DUMMY = pathlib.Path(__file__).resolve().parent / "dummy_data"
RELEASE = DUMMY / "appa-real-release"  # the folder the real zip extracts to
HEADER = ("file_name", "num_ratings", "apparent_age_avg", "apparent_age_std", "real_age")

WHOLE = (40, 48)  # (width, height) of the whole photos
FACE = (36, 36)  # 1296 pixels: kept with min_size 32 (1024)
TINY_FACE = (24, 20)  # 480 pixels: dropped from the face config with min_size 32
THIN_FACE = (20, 60)  # 1200 pixels: narrower than 32 but kept, as the reference code's pixel count keeps it

# split -> rows (file_name, num_ratings, apparent_age_avg, apparent_age_std, real_age), written verbatim,
# plus what is special about the image: its face size, and whether the whole photo / face crop is greyscale
# ("L") or CMYK.
IMAGES = {
    "train": [
        (("000000.jpg", "36", "4.2222222", "1.1464230", "4"), FACE, "RGB", "RGB"),
        (("000001.jpg", "38", "21.078947", "3.9549589", "18"), FACE, "L", "RGB"),
        (("000002.jpg", "41", "35.0", "4.0", "33"), FACE, "RGB", "L"),
        (("000003.jpg", "39", "61.868421", "6.3081751", "67"), FACE, "RGB", "RGB"),  # in the ignore list
        (("000004.jpg", "37", "9.5405405", "2.0102346", "10"), TINY_FACE, "RGB", "RGB"),
    ],
    "valid": [
        (("000005.jpg", "40", "27.3", "5.7201398", "25"), THIN_FACE, "RGB", "RGB"),
        (("000006.jpg", "35", "0.9714286", "0.2835394", "1"), FACE, "RGB", "CMYK"),
    ],
    "test": [
        (("000007.jpg", "42", "48.761905", "7.1298871", "50"), FACE, "RGB", "RGB"),
        (("000008.jpg", "38", "15.5", "2.4612034", "16"), FACE, "RGB", "RGB"),  # in the ignore list: kept
        (("000009.jpg", "36", "73.138889", "8.6670612", "80"), TINY_FACE, "RGB", "RGB"),
    ],
}
# A train name (dropped), a test name and a name in no split (both reported, neither dropped), a blank line.
IGNORE_LIST = "000003.jpg\n000008.jpg\n\n999999.jpg\n"


def _noise_jpeg(path: pathlib.Path, size: tuple[int, int], mode: str, rng: np.random.Generator) -> None:
  width, height = size
  pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  PIL.Image.fromarray(pixels).convert(mode).save(path, format="JPEG", quality=75)


def _per_rating_rows(rows, rng):
  # Imitates gt_<split>.csv (one row per rating); the builder must not read it, so a few rows suffice.
  for file_name, _, mean, _, real_age in rows:
    for _ in range(3):
      guess = max(0, round(float(mean)) + int(rng.integers(-3, 4)))
      yield (file_name, real_age, guess, int(rng.integers(18, 70)),
             "female" if rng.integers(2) else "male")


def main() -> None:
  rng = np.random.default_rng(2016)
  shutil.rmtree(DUMMY, ignore_errors=True)
  for split, images in IMAGES.items():
    (RELEASE / split).mkdir(parents=True)
    for row, face_size, whole_mode, face_mode in images:
      _noise_jpeg(RELEASE / split / row[0], WHOLE, whole_mode, rng)
      _noise_jpeg(RELEASE / split / f"{row[0]}_face.jpg", face_size, face_mode, rng)
    with (RELEASE / f"gt_avg_{split}.csv").open("w", newline="") as handle:
      csv.writer(handle, lineterminator="\n").writerows([HEADER] + [row for row, *_ in images])
    with (RELEASE / f"gt_{split}.csv").open("w", newline="") as handle:
      writer = csv.writer(handle, lineterminator="\n")
      writer.writerow(("file_name", "real_age", "apparent_age", "worker_age", "worker_gender"))
      writer.writerows(_per_rating_rows([row for row, *_ in images], rng))
  # The release has a .mat file of face-detector output next to each image; one placeholder shows it is ignored.
  (RELEASE / "train" / "000000.jpg.mat").write_bytes(b"placeholder, not a MATLAB file\n")
  (DUMMY / "ignore_list.txt").write_text(IGNORE_LIST)


if __name__ == "__main__":
  main()
