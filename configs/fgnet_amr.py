"""FG-NET, adaptive mean-residue loss: the AMR paper's recipe (configs/base.py lists the differences).

``--config=configs/fgnet_amr.py`` runs all 82 leave-one-subject-out folds;
``--config=configs/fgnet_amr.py:17`` trains and tests the fold that holds out subject 17.
"""

from configs import base


def get_config(fold: str | None = None):
  config = base.get_config()
  config.name = "fgnet_amr"
  config.loss = "amr"
  config.loss_kwargs = {"lambda_mean": 0.2, "lambda_residue": 0.05}
  config.fold = base.parse_fold(fold)
  return config
