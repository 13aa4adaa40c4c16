"""ChaLearn LAP 2016 (APPA-REAL release): the AMR paper's CLAP2016 recipe, shared by the clap2016_* files.

Trained on ``train``, validated on ``valid`` every epoch, and reported on
``test`` with the epoch whose model had the lowest validation epsilon-error,
as the AMR code chose it (``model_selection``; ``test/metrics.json`` gives the
last epoch's test metrics beside it). The test split is read once training has
ended. Labels are the apparent-age means
(real numbers; the losses round them to a class only where a class is needed);
the epsilon-error uses the votes' standard deviation.

Differences from the paper's code: the pretrained EfficientNet-Lite0 (see
base.py), and the affine augmentation without shear (amr_jax.data.augment has
rotation, scale and translation).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.data.name = "clap2016"
  config.data.crop = "face"  # the release's face crops (amr_jax/data/dataset_cards/clap2016/README.md says why)
  config.num_classes = base.CLAP2016_NUM_CLASSES
  config.protocol = "splits"
  config.fold = -1
  config.batch_size = 64
  config.num_epochs = 60
  config.optimizer = "sgd"
  config.learning_rate = 1e-3
  config.momentum = 0.9
  config.weight_decay = 1e-4
  config.gradient_clip_norm = 5.0
  config.milestone_epochs = (20, 40)
  config.augmentation.max_rotation_degrees = 10.0
  config.augmentation.max_translation = 0.0
  config.augmentation.brightness = 0.1
  config.augmentation.contrast = 0.1
  config.augmentation.saturation = 0.1
  config.eval_every_epochs = 1
  config.model_selection = "validation_eps"
  return config
