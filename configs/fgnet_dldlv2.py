"""FG-NET, DLDL-v2 loss (KL to a Gaussian of sigma 2 + L1 of the expectation), on the AMR recipe.

Only the loss differs from ``fgnet_amr.py``, so the two compare the losses alone.
``--config=configs/fgnet_dldlv2.py`` runs all 82 leave-one-subject-out folds; ``:17`` holds out subject 17.
"""

from configs import base


def get_config(fold: str | None = None):
  config = base.get_config()
  config.name = "fgnet_dldlv2"
  config.loss = "dldl_v2"
  config.loss_kwargs = {"sigma": 2.0, "lambda_l1": 1.0}
  config.fold = base.parse_fold(fold)
  return config
