"""SCUT-FBP5500 facial attractiveness, DLDL-v2 as its released code trains it (gaobb/DLDL-v2).

The task: each face's label is the mean of its raters' scores on a 1-5 scale. DLDL-v2's code puts the labels on
the grid 1.0, 1.1, ..., 5.0 (``torch.range(1, 5, 0.1)`` in ``main_net.lua``; ``-labelStep 0.1`` in
``Run_main.lua``): 41 classes, ``start_age=1``, ``label_step=0.1``. The target is a Gaussian around the score whose
sigma is the image's raters' standard deviation (``sigma_field="age_std"``: SCUT-FBP5500's ``score_std``, a 0 made
1e-10, a one-hot); the prediction is the distribution's mean, averaged over the face and its mirror image
(``beauty_evaluation.m``: ``pred = (pred1 + pred2) / 2``; the mean of the two distributions is the same number).
Reported: MAE, RMSE and Pearson's correlation (PC), and the epsilon-error with the raters' spread, as
``beauty_evaluation.m`` prints them.

Protocol: the release's five cross-validation folds (``protocol="kfold"``; fold f tests on
``cross_validation_{f+1}/test_{f+1}.txt`` and trains on ``train_{f+1}.txt``), the last model of each (the code
evaluates its final model; the release has no validation images). ``--config.protocol=splits`` runs the release's
60/40 split instead. Training as for CLAP2016 (configs/clap2016_dldlv2.py): ThinAgeNet, two stages of 60 epochs
(KL alone, then KL + L1 with lambda 1 in score units, the code's ``-lambda 1``), Adam 1e-3 divided by 10 after
30 epochs, batch 128, the code's augmentation and input normalisation, KL averaged over the classes.

  python run_train.py --config=configs/scut_fbp5500_dldlv2.py --config.data.manual_dir=DIR   # all five folds
  python run_train.py --config=configs/scut_fbp5500_dldlv2.py:0 ...                        # fold 0 only

What differs from the published work, and why:

- the trunk starts from random weights (``ThinAgeNet``, ``CR 0.5``): the code's was pretrained as a face-identity
  classifier on MS-Celeb-1M, which cannot be had offline;
- the images are the release's 350 px faces squashed to 224 px (``crop="whole"``); the code's own crops and
  alignment of SCUT-FBP5500 are not published;
- sigma: the code reads each image's sigma from list files that are not published; here it is the raters'
  standard deviation over the release's ``All_Ratings`` (population, ddof 0), which the code's evaluation also
  uses as the epsilon-error's sigma;
- K and the weights on a grid (docs/label_grids.md): lambda stays 1 with the L1 in score units, as in the code.
"""

from configs import base, clap2016_dldlv2

NUM_CLASSES = 41  # scores 1.0, 1.1, ..., 5.0
# Each image's sigma is its raters' spread (sigma_field); this constant, two classes, applies only with sigma_field "".
SIGMA = 0.2
KL_ONLY = {**clap2016_dldlv2.KL_ONLY, "sigma": SIGMA}
KL_AND_L1 = {**clap2016_dldlv2.KL_AND_L1, "sigma": SIGMA}


def get_config(arg: str | None = None):
  config = clap2016_dldlv2.get_config()
  config.name = "scut_fbp5500_dldlv2"
  config.data.name = "scut_fbp5500"
  config.data.crop = "whole"  # the release's faces, 350 px squares
  config.num_classes = NUM_CLASSES
  config.start_age = 1.0  # the score of class 0
  config.label_step = 0.1
  config.label_name, config.label_unit = "score", "points"
  config.cs_step = 0.1  # CS(5): the fraction of faces within half a point
  config.protocol = "kfold"
  config.num_folds = 5  # the release's cross_validation_1..5
  config.fold = base.parse_fold(arg)
  config.num_validation_subjects = 0
  config.eval_every_epochs = 0  # no validation images
  config.loss_kwargs = KL_AND_L1
  config.stages = ({"name": "kl", "loss_kwargs": KL_ONLY}, {"name": "kl+l1", "loss_kwargs": KL_AND_L1})
  return config
