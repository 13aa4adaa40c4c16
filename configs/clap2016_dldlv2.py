"""CLAP2016, DLDL-v2: ThinAgeNet with KL + expectation L1, the DLDL-v2 paper's recipe.

Differences from the paper: no face-identity (MS-Celeb-1M) pretraining, which
is not available offline, so ThinAgeNet starts from random weights; one
phase of KL + L1 throughout instead of 60 epochs of KL alone then 60 of
KL + L1; the label distribution's sigma is a constant 2 rather than each
image's vote spread.
"""

from configs import clap2016_base


def get_config():
  config = clap2016_base.get_config()
  config.name = "clap2016_dldlv2"
  config.model = "thin_age_net"
  config.pretrained = ""
  config.loss = "dldl_v2"
  config.loss_kwargs = {"sigma": 2.0, "lambda_l1": 1.0}
  config.batch_size = 128
  config.num_epochs = 120
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.weight_decay = 0.0
  config.gradient_clip_norm = 0.0
  config.milestone_epochs = (30, 60, 90)
  config.augmentation.update({
      "flip": True, "greyscale_probability": 0.5, "max_rotation_degrees": 15.0,
      "brightness": 0.4, "contrast": 0.4, "saturation": 0.4,
      "downscale_range": (0.5, 1.0)})  # the official code's short side drawn from 112..224, then back to 224
  config.test_time_flip = True
  return config
