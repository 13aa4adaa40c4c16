"""The "detected" crop: MTCNN's eyes instead of annotated ones, detected once per build, cached, with a stated rule."""

import json
import pathlib

import numpy as np
import PIL.Image
import pytest
import skimage.data

import training_setup
from amr_jax import config_checks, errors
from amr_jax.data import decoding, detected_crops, tfds_builders, training_data
from amr_jax.faces import face_crop, mtcnn, mtcnn_networks


class CountingDetector(mtcnn.Detector):
  """The real detector, counting the photographs it is asked about."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.calls = 0

  def detect(self, image):
    self.calls += 1
    return super().detect(image)


def _face(box, eyes=((10.0, 10.0), (20.0, 10.0)), score=0.99):
  landmarks = np.concatenate([np.asarray(eyes, float), [[15, 15], [11, 20], [19, 20]]])
  return mtcnn.Face(box=np.asarray(box, float), score=score, landmarks=landmarks)


def test_one_face_is_cropped_on_its_eyes_several_on_the_main_ones_none_is_the_whole_photograph():
  image = np.random.default_rng(0).integers(0, 256, (100, 120, 3), np.uint8)
  centre = _face([50, 40, 70, 60], eyes=[(55, 45), (65, 46)])
  edge = _face([0, 0, 22, 22], eyes=[(5, 5), (15, 5)])
  crop, rule = detected_crops.crop(image, [centre], 32)
  np.testing.assert_array_equal(crop, face_crop.eyes_face_crop(image, centre.eyes, 32))
  assert rule == 0
  crop, rule = detected_crops.crop(image, [edge, centre], 32)  # the edge one is larger but far from the centre
  assert mtcnn.main_face([edge, centre], 100, 120) is centre
  np.testing.assert_array_equal(crop, face_crop.eyes_face_crop(image, centre.eyes, 32))
  assert rule == 1
  crop, rule = detected_crops.crop(image, [], 32)
  np.testing.assert_array_equal(crop, face_crop.whole_image(image, 32))
  assert rule == 2
  coincident = _face([50, 40, 70, 60], eyes=[(55, 45), (55, 45)])
  assert detected_crops.crop(image, [coincident], 32)[1] == 2


def test_the_main_face_is_the_largest_less_twice_its_squared_distance_from_the_centre():
  big_far = _face([0, 0, 40, 40])  # area 1600, centre (20, 20): 2 * (30^2 + 30^2) = 3600 from (50, 50)
  small_near = _face([45, 45, 55, 55])  # area 100, at the centre
  assert mtcnn.main_face([big_far, small_near], 100, 100) is small_near
  bigger_far = _face([0, 0, 80, 80])  # area 6400, centre (40, 40): 400 from the centre
  assert mtcnn.main_face([small_near, bigger_far], 100, 100) is bigger_far
  assert mtcnn.main_face([], 100, 100) is None


def test_detection_is_cached_beside_the_build_and_redone_only_where_needed(tmp_path):
  astronaut = skimage.data.astronaut()
  photographs = [astronaut, np.zeros((64, 80, 3), np.uint8)]
  names = ["a.jpg", "b.jpg"]
  detector = CountingDetector()
  lines = []
  first = detected_crops.detect_all(photographs, names, tmp_path, detector=detector, log=lines.append)
  assert detector.calls == 2 and len(first[0]) == 1 and first[1] == []
  assert any("2 of 2 photographs" in line for line in lines)
  stored = json.loads((tmp_path / detected_crops.CACHE_NAME).read_text())
  assert stored["detector"]["weights"] == "mtcnn==1.0.0" and set(stored["images"]) == set(names)

  again = detected_crops.detect_all(photographs, names, tmp_path, detector=detector, log=lines.append)
  assert detector.calls == 2  # nothing detected again
  np.testing.assert_array_equal(again[0][0].box, first[0][0].box)  # JSON keeps every float exactly
  np.testing.assert_array_equal(again[0][0].landmarks, first[0][0].landmarks)
  assert again[0][0].score == first[0][0].score

  resized = [astronaut, np.zeros((65, 80, 3), np.uint8)]  # b.jpg changed: only it is detected again
  detected_crops.detect_all(resized, names, tmp_path, detector=detector, log=lines.append)
  assert detector.calls == 3
  other_settings = CountingDetector(min_face_size=40)
  detected_crops.detect_all(resized, names, tmp_path, detector=other_settings, log=lines.append)
  assert other_settings.calls == 2  # another detector's cache is not this one's
  unbounded = CountingDetector(min_face_size=40, max_side=None)  # large photographs searched at full size
  detected_crops.detect_all(resized, names, tmp_path, detector=unbounded, log=lines.append)
  assert unbounded.calls == 2
  (tmp_path / detected_crops.CACHE_NAME).write_text("{not json")
  detected_crops.detect_all(resized, names, tmp_path, detector=detector, log=lines.append)
  assert detector.calls == 5  # an unreadable cache is detected again and rewritten
  assert json.loads((tmp_path / detected_crops.CACHE_NAME).read_text())["images"]["a.jpg"]["shape"] == [512, 512]
  with pytest.raises(ValueError, match="one unique name per image"):
    detected_crops.detect_all(photographs, ["a.jpg", "a.jpg"], tmp_path, detector=detector)


@pytest.fixture(scope="module")
def fgnet_with_a_face(tmp_path_factory):
  """A 4-image FG-NET build: two copies of the astronaut (one face) and two of the dummy images (none)."""
  manual = training_setup.make_synthetic_fgnet(tmp_path_factory.mktemp("manual"), subjects=2, images_per_subject=2)
  image_names = sorted((manual / "FGNET" / "images").iterdir())
  for path in image_names[:2]:
    PIL.Image.fromarray(skimage.data.astronaut()).save(path, quality=95)
  data_dir = tmp_path_factory.mktemp("tfds")
  builder = tfds_builders.build("fgnet", manual_dir=manual, data_dir=data_dir)
  return builder, [p.name for p in image_names]


def test_fgnet_decoded_with_the_detected_crop_aligns_on_the_detected_eyes_and_counts_the_rule(fgnet_with_a_face):
  builder, names = fgnet_with_a_face
  lines = []
  arrays = decoding.load_fgnet_arrays(str(builder.data_dir), crop="detected", image_size=48, log=lines.append)
  assert list(arrays["file_name"]) == names
  # The build re-encodes the photograph as JPEG: its faces are detected on the decoded pixels, as here.
  (face,) = mtcnn.detect(_decoded(builder, names[0]))
  np.testing.assert_array_equal(arrays["image"][0], face_crop.eyes_face_crop(_decoded(builder, names[0]), face.eyes, 48))
  whole = decoding.load_fgnet_arrays(str(builder.data_dir), crop="whole", image_size=48)
  np.testing.assert_array_equal(arrays["image"][2:], whole["image"][2:])  # no face: the whole photograph
  assert "Detected-eye crops: 2 one face, 0 several faces: the main one, 2 no face: the whole photograph." in lines
  assert (pathlib.Path(builder.data_dir) / detected_crops.CACHE_NAME).is_file()
  lines.clear()
  decoding.load_fgnet_arrays(str(builder.data_dir), crop="detected", image_size=32, log=lines.append)
  assert not any("Detecting faces" in line for line in lines)  # another size reads the cache


def _decoded(builder, file_name):
  source = builder.as_data_source()["train"]
  (example,) = [source[i] for i in range(len(source)) if source[i]["file_name"].decode() == file_name]
  return example["image"]


def test_the_detected_crop_is_a_valid_choice_for_both_datasets_and_others_are_refused(monkeypatch):
  for name in ("fgnet", "clap2016"):
    config = training_setup.config("fgnet_amr" if name == "fgnet" else "clap2016_amr")
    config.data.crop = "detected"
    config_checks.check_data_config(config.data, config.protocol)
  config = training_setup.config("fgnet_amr")
  config.data.crop = "face"
  with pytest.raises(errors.ConfigError, match="config.data.crop for fgnet must be one of whole, aligned, detected"):
    config_checks.check_data_config(config.data, config.protocol)
  config.data.crop = "detected"  # without the weights' package: refused before any data is read, saying what to do
  monkeypatch.setattr(mtcnn_networks.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(errors.MissingDataError, match=r"pip install mtcnn==1\.0\.0"):
    config_checks.check_data_config(config.data, config.protocol)


def test_clap2016_detected_crops_come_from_its_whole_photographs(tmp_path):
  config = training_setup.config("clap2016_amr")
  config.data.update(manual_dir=str(training_setup.ROOT / "datasets" / "clap2016" / "dummy_data"),
                     data_dir=str(tmp_path), crop="detected")
  builder = training_data.prepare(config.data)
  assert builder.builder_config.name == "whole"
  dataset = training_data.load_arrays(config.data, 32, builder)
  whole = decoding.clap2016_arrays(builder, "train", 32)
  assert dataset["train"]["image"].shape == whole["image"].shape
  cache = json.loads((pathlib.Path(builder.data_dir) / detected_crops.CACHE_NAME).read_text())
  assert any(key.startswith("train/") for key in cache["images"])
  assert any(key.startswith("valid/") for key in cache["images"])
