"""CLAP2016, plain cross-entropy over the 101 age classes, on the recipe of ``clap2016_base.py``."""

from configs import clap2016_base


def get_config():
  config = clap2016_base.get_config()
  config.name = "clap2016_ce"
  config.loss = "cross_entropy"
  config.loss_kwargs = {}
  return config
