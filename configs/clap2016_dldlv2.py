"""CLAP2016, DLDL-v2 as its released code trains it (gaobb/DLDL-v2; ``../shared/docs/SPEC.md`` section 6).

ThinAgeNet in two stages, each a new run from the previous one's weights:
60 epochs of KL alone (``main_net.lua -loss ldkl``), then 60 of KL + L1
(``main_mtnet.lua -loss ldklexpl1``, which loads the first stage's
``model_60.t7``), each with a fresh Adam (lr 1e-3, betas 0.9/0.999, no weight
decay) divided by 10 after 30 epochs, batch 128. The target is a Gaussian
whose sigma is each image's annotator spread (``apparent_age_std``; a 0 is
1e-10, a one-hot), KL averaged over batch and classes (``kl_reduction="mean"``).
Augmentation: flip, greyscale p0.5, the short side shrunk to 112..224 px and
enlarged back, rotation up to 15 degrees, colour jitter 0.4; the code's input
normalisation; at test, the final model, on the image and its mirror image
averaged.

What differs from that code, and why:

- the trunk starts from random weights: the official one was pretrained as a
  face-identity classifier on MS-Celeb-1M, which cannot be had offline;
- the augmentations run in amr_jax.data.augment's order (shrink, rotate, flip,
  colour jitter in a fixed order, greyscale) where the code flips and greys
  first and jitters colours in a random order. Flip commutes with the others
  in distribution, and brightness, contrast, saturation and greyscale are
  linear maps that commute with each other; they differ only where
  amr_jax.data.augment clips to [0, 1] after each (as torchvision's ColorJitter
  does), so only pixels pushed past black or white come out otherwise.
"""

from configs import clap2016_base

KL_ONLY = {"sigma": 2.0, "lambda_l1": 0.0, "kl_reduction": "mean"}  # sigma: per image (sigma_field) in training
KL_AND_L1 = {"sigma": 2.0, "lambda_l1": 1.0, "kl_reduction": "mean"}


def get_config():
  config = clap2016_base.get_config()
  config.name = "clap2016_dldlv2"
  config.model = "thin_age_net"
  config.pretrained = ""
  config.input_normalization = "dldl_v2"
  config.head_bias = "zeros"  # the network's own head initialisation (the prior hurt CE from scratch: README)
  config.loss = "dldl_v2"
  config.loss_kwargs = KL_AND_L1
  config.sigma_field = "age_std"
  config.batch_size = 128
  config.num_epochs = 60  # per stage
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.weight_decay = 0.0
  config.gradient_clip_norm = 0.0
  config.milestone_epochs = (30,)  # within each stage
  config.stages = ({"name": "kl", "loss_kwargs": KL_ONLY}, {"name": "kl+l1", "loss_kwargs": KL_AND_L1})
  config.augmentation.update({
      "flip": True, "greyscale_probability": 0.5, "max_rotation_degrees": 15.0,
      "brightness": 0.4, "contrast": 0.4, "saturation": 0.4,
      "downscale_range": (0.5, 1.0)})  # the official code's short side drawn from 112..224, then back to 224
  config.test_time_flip = True
  config.model_selection = "last"  # the code reports its final model (stage 2's model_60.t7)
  return config
