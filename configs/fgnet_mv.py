"""FG-NET, mean-variance loss (Pan et al., CVPR 2018), on the AMR recipe.

Only the loss differs from ``fgnet_amr.py``, so the two compare the losses alone.
``--config=configs/fgnet_mv.py`` runs all 82 leave-one-subject-out folds; ``:17`` holds out subject 17.
"""

from configs import base


def get_config(fold: str | None = None):
  config = base.get_config()
  config.name = "fgnet_mv"
  config.loss = "mean_variance"
  config.loss_kwargs = {"lambda_mean": 0.2, "lambda_variance": 0.05}
  config.fold = base.parse_fold(fold)
  return config
