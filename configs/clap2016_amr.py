"""CLAP2016, adaptive mean-residue loss, on the recipe of ``clap2016_base.py``."""

from configs import clap2016_base


def get_config():
  config = clap2016_base.get_config()
  config.name = "clap2016_amr"
  config.loss = "amr"
  config.loss_kwargs = {"lambda_mean": 0.2, "lambda_residue": 0.05}
  return config
