"""run_predict.py: a folder of photographs to ages with a run_train.py model, the same as run_eval.py on its crops."""

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import PIL.Image
import pytest
import skimage.data
import tensorflow_datasets as tfds

import training_setup
from amr_jax import errors, experiment, photographs, predict, trained_model
from amr_jax.age_estimator import AgeEstimator
from amr_jax.faces import mtcnn

ROOT = training_setup.ROOT


@pytest.fixture(scope="module")
def detected_run(tmp_path_factory):
  """A quick run with the detected crop, holding out subject 1, whose two photographs are the astronaut."""
  manual = training_setup.make_synthetic_fgnet(tmp_path_factory.mktemp("manual"), subjects=3, images_per_subject=2)
  astronaut = skimage.data.astronaut()
  subject_1 = sorted((manual / "FGNET" / "images").glob("001A*"))
  PIL.Image.fromarray(astronaut).save(subject_1[0], quality=95)
  PIL.Image.fromarray(np.ascontiguousarray(astronaut[40:, ::-1])).save(subject_1[1], quality=95)
  data_dir = tmp_path_factory.mktemp("tfds")
  config = training_setup.config("fgnet_amr", "1", **{"data.crop": "detected", "data.manual_dir": str(manual),
                                                      "data.data_dir": str(data_dir)})
  workdir = tmp_path_factory.mktemp("run")
  experiment.train_and_evaluate(config, workdir)
  return workdir, manual, data_dir


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_predictions_on_the_runs_test_photographs_are_run_evals(detected_run, tmp_path, monkeypatch):
  """The test subject's photographs, as the build decoded them (PNG: no second JPEG decoder), give run_eval's ages.

  Same pixels, same detector, same crop, the same compiled evaluation step at the same batch shape (the run's
  eval_batch_size, not the smaller batch a few faces get by default): the CSVs' four decimals agree exactly.
  """
  from amr_jax import age_estimator  # pylint: disable=import-outside-toplevel

  monkeypatch.setattr(age_estimator, "_BATCH_SIZES", (training_setup.TINY["eval_batch_size"],))
  workdir, _, data_dir = detected_run
  (build,) = (data_dir / "fgnet").glob("*/dataset_info.json")
  source = tfds.builder_from_directory(str(build.parent)).as_data_source()["train"]
  photos = tmp_path / "photos"
  photos.mkdir()
  for example in (source[i] for i in range(len(source))):
    if example["subject_id"] == 1:
      PIL.Image.fromarray(example["image"]).save(photos / f"{example['file_name'].decode()}.png")
  counts = predict.predict_photographs(AgeEstimator.from_workdir(workdir), [photos], tmp_path / "ages.csv", log=print)
  assert counts == {"files": 2, "faces": 2, "no_face": 0, "bad": 0, "failed": 0}
  expected = {row["file_name"]: row for row in _rows(workdir / "test" / "predictions.csv")}
  got = _rows(tmp_path / "ages.csv")
  assert len(got) == 2 and len(expected) == 2
  for row in got:
    reference = expected[row["file"].rsplit("/", 1)[-1][:-len(".png")]]
    assert row["face"] == "0"
    assert float(row["age"]) == pytest.approx(float(reference["predicted_age"]), abs=0)
    assert float(row["age_std"]) == pytest.approx(float(reference["distribution_std"]), abs=0)
    assert float(row["age_mode"]) == pytest.approx(float(reference["mode_age"]), abs=0)


def test_one_face_runs_in_a_batch_of_one_and_gets_the_age_it_gets_among_others(detected_run, monkeypatch):
  from amr_jax.evaluation import evaluate  # pylint: disable=import-outside-toplevel

  model = AgeEstimator.from_workdir(detected_run[0])
  batches, predict_batches = [], evaluate.predict
  monkeypatch.setattr(evaluate, "predict", lambda *args, **kwargs: batches.append(args[3]) or predict_batches(
      *args, **kwargs))
  astronaut = skimage.data.astronaut()
  (alone,) = model.predict(astronaut)
  (first,), (second,) = model.predict_many([astronaut, astronaut])
  # A face per device (the tests' CPU devices), not eval_batch_size (8 here, 128 by default); two faces fill a batch
  # of one per device where there are two or more devices, else of 8.
  devices = jax.local_device_count()
  assert batches == [devices, devices if devices >= 2 else 8]
  # The same crop in a batch of 1 and of 8: float32 sums in another order, ~1e-6 of a 70-year range at most, where
  # a face mixed with padding or another face would move its age by years.
  assert alone.age == pytest.approx(first.age, abs=1e-3) and first.age == second.age


def test_a_folder_with_a_corrupt_file_a_text_file_and_a_faceless_photo_gives_a_row_each_and_goes_on(detected_run,
                                                                                                    tmp_path):
  workdir, _, _ = detected_run
  photos = tmp_path / "photos"
  (photos / "inner").mkdir(parents=True)
  PIL.Image.fromarray(skimage.data.astronaut()).save(photos / "astronaut.jpg")
  (photos / "broken.jpg").write_bytes((photos / "astronaut.jpg").read_bytes()[:600])
  (photos / "notes.txt").write_text("not a photograph")
  PIL.Image.fromarray(skimage.data.chelsea()).save(photos / "inner" / "cat.png")
  (photos / ".hidden.jpg").write_text("skipped: hidden")
  out, annotated = tmp_path / "out" / "ages.csv", tmp_path / "annotated"
  lines = []  # in process: the command line itself is run by the README example's test
  counts = predict.predict_photographs(AgeEstimator.from_workdir(workdir), [photos], out, annotate=annotated,
                                       log=lines.append, progress_every=0)
  assert counts == {"files": 4, "faces": 1, "no_face": 1, "bad": 2, "failed": 0}
  with open(out, newline="") as f:
    header = next(csv.reader(f))
  assert tuple(header) == predict.COLUMNS
  rows = {row["file"].rsplit("/", 1)[-1]: row for row in _rows(out)}
  assert set(rows) == {"astronaut.jpg", "broken.jpg", "notes.txt", "cat.png"}
  face = rows["astronaut.jpg"]
  assert face["face"] == "0" and face["note"] == "" and 0.9 < float(face["face_score"]) <= 1
  x0, y0, x1, y1 = (float(face[k]) for k in ("x0", "y0", "x1", "y1"))
  assert 150 < x0 < x1 < 300 and 40 < y0 < y1 < 200  # the astronaut's face, not the photograph
  assert 0 <= float(face["age"]) and float(face["age_std"]) >= 0 and float(face["age_mode"]).is_integer()
  assert rows["broken.jpg"]["note"].startswith("unreadable image") and rows["broken.jpg"]["age"] == ""
  assert rows["notes.txt"]["note"] == "not an image"
  assert rows["cat.png"]["note"] == "no face found" and rows["cat.png"]["age"] == ""
  for name in ("broken.jpg: unreadable image", "notes.txt: not an image", "cat.png: no face found",
               "4 file(s): 1 face(s) predicted, 1 without a face, 2 unreadable"):
    assert any(name in line for line in lines), name
  assert [line.split(" files,")[0].strip() for line in lines if " files, " in line] == ["1/4", "2/4", "3/4"]
  assert sorted(p.name for p in annotated.iterdir()) == ["astronaut_ages.jpg", "cat_ages.jpg"]
  assert PIL.Image.open(annotated / "astronaut_ages.jpg").size == (512, 512)


def test_a_run_over_all_folds_needs_a_fold_and_says_which_it_used(detected_run, tmp_path):
  workdir, _, _ = detected_run
  all_folds = tmp_path / "all"
  shutil.copytree(workdir, all_folds / "folds" / "subject_001")
  stored = json.loads((workdir / "config.json").read_text())
  (all_folds / "config.json").write_text(json.dumps({**stored, "fold": -1}))
  with pytest.raises(errors.ConfigError, match=r"one model per fold: choose one with --fold=N \(trained: subject_001\)"):
    trained_model.load_model(all_folds)
  with pytest.raises(errors.WorkdirError, match=r"--fold=2: .*subject_002 holds no checkpoint"):
    trained_model.load_model(all_folds, fold=2)
  model = trained_model.load_model(all_folds, fold=1)
  assert model.description.startswith(f"subject_001 of {all_folds}, the last checkpoint (step 2)")
  with pytest.raises(errors.WorkdirError, match="selects no checkpoint: config.model_selection is 'last'"):
    trained_model.load_model(workdir, checkpoint="selected")
  with pytest.raises(errors.ConfigError, match="leave --fold out"):
    trained_model.load_model(workdir, fold=2)


def test_mistakes_on_the_command_line_are_one_line_each(tmp_path):
  photo = tmp_path / "x.jpg"
  PIL.Image.fromarray(skimage.data.astronaut()).save(photo)
  photo_bytes = photo.read_bytes()
  (tmp_path / "empty" / ".thumbnails").mkdir(parents=True)
  (tmp_path / "empty" / ".thumbnails" / "a.jpg").write_bytes(photo_bytes)
  for args, message in [([], "give photographs or folders of them: python run_predict.py [--workdir=W] PHOTO_OR"),
                        ([f"--workdir={tmp_path}", f"--out={photo}", str(photo)],
                         "x.jpg is one of the photographs to predict; writing the CSV there would replace it"),
                        ([f"--workdir={tmp_path}", str(tmp_path / "empty")], "empty: a folder with no photographs"),
                        ([f"--workdir={tmp_path}"], "give photographs or folders of them"),
                        ([f"--workdir={tmp_path}", str(tmp_path / "y.jpg")], "y.jpg: no such file or folder"),
                        ([f"--workdir={tmp_path}", str(photo)], "holds no config.json"),
                        (["--fold=one", f"--workdir={tmp_path}", str(photo)], "--fold")]:
    result = subprocess.run([sys.executable, str(ROOT / "run_predict.py"), *args], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 1, args
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
  assert photo.read_bytes() == photo_bytes


def test_a_csv_that_cannot_be_written_leaves_the_earlier_file_whole_and_says_so(detected_run, tmp_path, monkeypatch):
  from amr_jax import atomic_files

  photo, out = tmp_path / "astronaut.jpg", tmp_path / "ages.csv"
  PIL.Image.fromarray(skimage.data.astronaut()).save(photo)
  out.write_text("an earlier CSV\n")
  model = AgeEstimator.from_workdir(detected_run[0])

  def disk_full(source, target):
    raise OSError(28, "No space left on device")

  with monkeypatch.context() as patch:
    patch.setattr(atomic_files.os, "replace", disk_full)
    with pytest.raises(errors.ConfigError, match=r"ages.csv: the CSV could not be written \(No space left on device\); "
                       r"the earlier file there is unchanged\. The 1 row\(s\) were lost"):
      predict.predict_photographs(model, [photo], out, log=lambda line: None)
  assert out.read_text() == "an earlier CSV\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ages.csv", "astronaut.jpg"]  # no temporary file left
  lines = []
  predict.predict_photographs(model, [photo], out, log=lines.append)
  assert _rows(out)[0]["file"] == str(photo)
  assert f"{out}: replaced the earlier file there." in lines


def test_a_full_disk_for_the_annotated_copies_costs_no_prediction(detected_run, tmp_path, monkeypatch):
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in ("a.jpg", "b.jpg"):
    PIL.Image.fromarray(skimage.data.astronaut()).save(photos / name)

  def disk_full(self, *args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(PIL.Image.Image, "save", disk_full)
  lines = []
  counts = predict.predict_photographs(AgeEstimator.from_workdir(detected_run[0]), [photos], tmp_path / "ages.csv",
                                       annotate=tmp_path / "annotated", log=lines.append)
  assert counts["faces"] == 2
  assert [row["note"] for row in _rows(tmp_path / "ages.csv")] == ["", ""]
  assert sum("the annotated copy could not be written (No space left on device); no more were made after it; the "
             "predictions go on." in line for line in lines) == 1
  assert counts["annotation_failure"].endswith("could not be written (No space left on device); no more were made "
                                               "after it")


def test_run_predict_on_a_disk_too_small_for_the_copies_writes_the_csv_and_exits_1(detected_run, tmp_path):
  """A file-size limit of 20 kB (writes past it fail with EFBIG, as on a full disk): the CSV (a few hundred bytes)
  is written, the annotated copy (a 512 px JPEG, about 60 kB) is not, and the exit status says so."""
  import resource  # pylint: disable=import-outside-toplevel

  photo = tmp_path / "astronaut.jpg"
  PIL.Image.fromarray(skimage.data.astronaut()).save(photo)
  out = tmp_path / "ages.csv"

  def limit():
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))

  result = subprocess.run([sys.executable, str(ROOT / "run_predict.py"), f"--workdir={detected_run[0]}", f"--out={out}",
                           f"--annotate={tmp_path / 'annotated'}", str(photo)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, preexec_fn=limit)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: {tmp_path / 'annotated' / 'astronaut_ages.jpg'}: the annotated copy could not be written (File too "
      f"large); no more were made after it; every prediction is in {out}.")
  assert [row["file"] for row in _rows(out)] == [str(photo)] and _rows(out)[0]["age"]
  assert list((tmp_path / "annotated").iterdir()) == []


def test_a_photograph_that_fails_gets_a_note_and_ctrl_c_keeps_the_rows_done(detected_run, tmp_path, monkeypatch):
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in ("a.jpg", "b.jpg", "c.jpg"):
    PIL.Image.fromarray(skimage.data.astronaut()).save(photos / name)
  detector = mtcnn.Detector()
  model = AgeEstimator.from_workdir(detected_run[0], detector=detector)
  detect = detector.detect

  def failing_on_b(image, path=iter(["a", "b", "c"])):
    if next(path) == "b":
      raise RuntimeError("a detector bug\nsecond line")
    return detect(image)

  monkeypatch.setattr(detector, "detect", failing_on_b)
  lines = []
  counts = predict.predict_photographs(model, [photos], tmp_path / "ages.csv", log=lines.append)
  assert [row["note"] for row in _rows(tmp_path / "ages.csv")] == ["", "failed: RuntimeError: a detector bug", ""]
  assert counts["failed"] == 1 and counts["faces"] == 2 and "1 failed (see their notes)" in lines[-1]

  def interrupted_on_c(image, path=iter(["a", "b", "c"])):
    if next(path) == "c":
      raise KeyboardInterrupt
    return detect(image)

  monkeypatch.setattr(detector, "detect", interrupted_on_c)
  with pytest.raises(errors.Interrupted, match=r"after 2 of 3 files; their 2 row\(s\) are in .*ages2.csv"):
    predict.predict_photographs(model, [photos], tmp_path / "ages2.csv", log=lines.append)
  assert [row["file"] for row in _rows(tmp_path / "ages2.csv")] == [str(photos / "a.jpg"), str(photos / "b.jpg")]
  monkeypatch.setattr(detector, "detect", lambda image: (_ for _ in ()).throw(KeyboardInterrupt))
  with pytest.raises(errors.Interrupted, match="before the first photograph was done; nothing written"):
    predict.predict_photographs(model, [photos], tmp_path / "ages3.csv", log=lines.append)
  assert not (tmp_path / "ages3.csv").exists()


def test_annotated_copies_never_replace_a_photograph_and_say_when_they_replace_earlier_copies(detected_run, tmp_path):
  """Annotating into the photographs' own folder, where a photograph is named as a copy of another would be."""
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in ("a.jpg", "a_ages.jpg"):
    PIL.Image.fromarray(skimage.data.astronaut()).save(photos / name)
  originals = {p.name: p.read_bytes() for p in photos.iterdir()}
  model = AgeEstimator.from_workdir(detected_run[0])
  lines = []
  predict.predict_photographs(model, [photos / "a.jpg", photos / "a_ages.jpg"], tmp_path / "ages.csv",
                              annotate=photos, log=lines.append)
  assert {name: (photos / name).read_bytes() for name in originals} == originals
  assert sorted(p.name for p in photos.iterdir()) == ["a.jpg", "a_ages.jpg", "a_ages_2.jpg", "a_ages_ages.jpg"]
  assert not any("replaced earlier files" in line for line in lines)
  annotated = tmp_path / "annotated"
  for run in range(2):
    lines = []
    predict.predict_photographs(model, [photos / "a.jpg"], tmp_path / "ages.csv", annotate=annotated, log=lines.append)
    assert (f"{annotated}: 1 annotated copies replaced earlier files of the same name." in lines) == (run == 1)
  # Copies annotated into a folder inside the folder predicted are not predicted on the next run.
  album = tmp_path / "album"
  album.mkdir()
  (photos / "a.jpg").rename(album / "a.jpg")
  for run in range(2):
    lines = []
    counts = predict.predict_photographs(model, [album], tmp_path / "ages.csv", annotate=album / "ages",
                                         log=lines.append)
    assert counts["files"] == 1 and [row["file"] for row in _rows(tmp_path / "ages.csv")] == [str(album / "a.jpg")]
    assert (f"--annotate={album / 'ages'}: its 1 file(s) in the folders given (annotated copies) are not predicted; "
            "name them to predict them." in lines) == (run == 1)
  assert sorted(p.name for p in (album / "ages").iterdir()) == ["a_ages.jpg"]
  # Annotated into a folder predicted itself: its photographs are predicted, as before.
  counts = predict.predict_photographs(model, [album, album / "ages"], tmp_path / "ages.csv", annotate=album / "ages",
                                       log=print)
  assert counts["files"] == 3  # the album's photograph, and the copy found twice
  (album / "a.jpg").unlink()
  with pytest.raises(errors.DataError, match="every file found is in the --annotate folder"):
    predict.predict_photographs(model, [album], tmp_path / "ages.csv", annotate=album / "ages", log=print)


def test_a_run_without_test_metrics_is_refused_unless_its_checkpoint_is_asked_for(detected_run, tmp_path):
  unfinished = tmp_path / "unfinished"
  shutil.copytree(detected_run[0], unfinished)
  (unfinished / "test" / "metrics.json").unlink()  # as a run stopped or diverged before its evaluation leaves it
  with pytest.raises(errors.WorkdirError, match=r"/unfinished has no test metrics: the run did not "
                     r"finish \(stopped, diverged, or still training\) and its last checkpoint is step 2; .* predict "
                     r"with that checkpoint anyway: --checkpoint=last\."):
    trained_model.load_model(unfinished)
  model = trained_model.load_model(unfinished, checkpoint="last")
  assert model.description.endswith("the last checkpoint (step 2), from a run that did not finish (no test metrics)")
  assert "did not finish" not in trained_model.load_model(detected_run[0]).description


def test_a_missing_photograph_is_named(detected_run, tmp_path):
  model = AgeEstimator.from_workdir(detected_run[0])
  with pytest.raises(errors.DataError, match="nowhere.jpg: no such file or folder"):
    predict.predict_photographs(model, [tmp_path / "nowhere.jpg"], tmp_path / "ages.csv")


def test_the_readme_example_runs_as_written(detected_run, tmp_path):
  """The README's example of a run's model, verbatim, from the repository root, on a copy of the quick run (HOME in
  tmp)."""
  text = (ROOT / "README.md").read_text()
  block = text.split("<!-- example: predict -->", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
  assert "run_predict.py" in block
  shutil.copytree(detected_run[0], tmp_path / "amr_runs" / "quick")
  env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"}
  result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  header, row = result.stdout.strip().splitlines()[-2:]
  assert tuple(header.split(",")) == predict.COLUMNS
  assert row.split(",")[0].endswith("/sample_data/grace_hopper.jpg") and row.split(",")[1] == "0"
  assert row.endswith(",")  # one face, no note
  assert (tmp_path / "amr_runs" / "annotated" / "grace_hopper_ages.jpg").is_file()


def _modes(rgb: np.ndarray) -> dict:
  """``{name: (image to save, file suffix)}`` of the modes a photograph may come in, all from ``rgb``."""
  grey = np.asarray(PIL.Image.fromarray(rgb).convert("L"))
  rgba = PIL.Image.fromarray(np.dstack([rgb, np.full(grey.shape, 255, np.uint8)]))
  return {
      "L": (PIL.Image.fromarray(grey), ".png"),
      "I;16": (PIL.Image.fromarray(grey.astype(np.uint16) * 257), ".png"),  # a 16-bit grey PNG
      "I": (PIL.Image.fromarray(grey.astype(np.int32) * 257), ".tif"),  # 16-bit values held in 32 bits
      "F 0..1": (PIL.Image.fromarray(grey.astype(np.float32) / 255), ".tif"),
      "F 0..255": (PIL.Image.fromarray(grey.astype(np.float32)), ".tif"),
      "LA": (rgba.convert("LA"), ".png"),
      "RGBA": (rgba, ".png"),
      "P": (PIL.Image.fromarray(rgb).quantize(256), ".png"),
      "CMYK": (PIL.Image.fromarray(rgb).convert("CMYK"), ".tif"),
      "1": (PIL.Image.fromarray(grey).convert("1", dither=PIL.Image.Dither.NONE), ".png"),
  }


@pytest.mark.parametrize("mode", list(_modes(np.zeros((2, 2, 3), np.uint8))))
def test_every_image_mode_becomes_8_bit_rgb_by_scaling_not_clipping(mode, tmp_path):
  rgb = skimage.data.astronaut()
  grey = np.asarray(PIL.Image.fromarray(rgb).convert("L")).astype(int)
  image, suffix = _modes(rgb)[mode]
  path = tmp_path / f"photo{suffix}"
  image.save(path)
  assert PIL.Image.open(path).mode == mode.split()[0]
  out = photographs.read_photograph(path)
  assert out.dtype == np.uint8 and out.shape == rgb.shape
  if mode in ("RGBA", "CMYK"):  # lossless round trips of the colour photograph
    np.testing.assert_array_equal(out, rgb)
  elif mode == "P":  # 256 colours: each pixel moves to its palette entry, a few grey levels on average
    assert np.abs(out.astype(int) - rgb).mean() < 6
  elif mode == "1":  # black or white, at the grey's threshold
    assert set(np.unique(out)) <= {0, 255}
    np.testing.assert_array_equal(out[..., 0] == 255, grey >= 128)
  else:  # greys: the 8-bit grey, whatever the depth (a clipped 16-bit grey would be 255 almost everywhere)
    for channel in range(3):
      np.testing.assert_array_equal(out[..., channel], grey)


def test_an_exif_rotated_photograph_is_read_upright(tmp_path):
  rgb = skimage.data.astronaut()[:, :400]  # 512 x 400: a rotation shows in the shape
  exif = PIL.Image.Exif()
  exif[0x0112] = 6  # orientation: the stored pixels must be turned 90 degrees clockwise to be upright
  PIL.Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
  out = photographs.read_photograph(tmp_path / "rotated.jpg")
  assert out.shape == (400, 512, 3)
  upright = np.rot90(rgb, k=-1)
  assert np.abs(out.astype(int) - upright).mean() < 3  # JPEG's loss only
