"""CLAP2016, mean-variance loss, on the recipe of ``clap2016_base.py``."""

from configs import clap2016_base


def get_config():
  config = clap2016_base.get_config()
  config.name = "clap2016_mv"
  config.loss = "mean_variance"
  config.loss_kwargs = {"lambda_mean": 0.2, "lambda_variance": 0.05}
  return config
