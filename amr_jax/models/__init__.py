"""Age-estimation networks: ``create_model(name, num_classes, **kwargs)``.

Every model is a Flax Linen module called as ``module.apply(variables, images,
train=...)`` on NHWC float images of any size from 64 px up, returning logits
``[batch, num_classes]``. ``dtype`` sets the computation dtype (parameters stay
float32) and ``axis_name`` averages BatchNorm statistics across ``pmap`` devices.
"""

from amr_jax.models.age_net import ThinAgeNet, TinyAgeNet, VGGAgeNet
from amr_jax.models.dlib_age import DlibAgeResNet
from amr_jax.models.efficientnet_lite import EfficientNetLite, EfficientNetLite0, EfficientNetLite1, EfficientNetLite2
from amr_jax.models.resnet import ResNet, ResNet18, ResNet34, ResNet50

HEAD_NAMES = ("fc", "_fc")  # every model's last Dense layer: the classifier, never copied from pretrained weights

MODELS = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "thin_age_net": ThinAgeNet,
    "tiny_age_net": TinyAgeNet,
    "efficientnet_lite0": EfficientNetLite0,
    "efficientnet_lite1": EfficientNetLite1,
    "efficientnet_lite2": EfficientNetLite2,
    "dlib_age_resnet": DlibAgeResNet,  # dlib's age network: 64 px chips; pretrained="dlib" or "dlib_with_head"
}


def create_model(name: str, num_classes: int, **kwargs):
  """Builds the named network; ``kwargs`` go to the module (``dtype``, ``axis_name``).

  Raises:
    ValueError: for an unknown name (the message lists the valid ones) or a
      ``num_classes`` below 1.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}.")
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}.")
  return MODELS[name](num_classes=num_classes, **kwargs)


__all__ = ["DlibAgeResNet", "EfficientNetLite", "EfficientNetLite0", "EfficientNetLite1", "EfficientNetLite2", "HEAD_NAMES", "MODELS",
           "ResNet", "ResNet18", "ResNet34", "ResNet50", "ThinAgeNet", "TinyAgeNet", "VGGAgeNet", "create_model"]
