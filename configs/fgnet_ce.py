"""FG-NET, plain cross-entropy over the 70 age classes, on the AMR recipe.

Only the loss differs from ``fgnet_amr.py``, so the two compare the losses alone.
``--config=configs/fgnet_ce.py`` runs all 82 leave-one-subject-out folds; ``:17`` holds out subject 17.
"""

from configs import base


def get_config(fold: str | None = None):
  config = base.get_config()
  config.name = "fgnet_ce"
  config.loss = "cross_entropy"
  config.loss_kwargs = {}
  config.fold = base.parse_fold(fold)
  return config
