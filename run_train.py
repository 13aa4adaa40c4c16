"""Trains and evaluates age estimators: ``python run_train.py --config=configs/fgnet_amr.py[:FOLD] [--workdir=DIR]``.

Any config field can be set on the command line (``--config.batch_size=32``).
A run started on a workdir that holds checkpoints resumes from the latest.
"""

from amr_jax import cli


def train_and_evaluate(config, workdir):
  from amr_jax import experiment  # after the flags are parsed: a mistake in them is refused before JAX loads

  return experiment.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  cli.run(train_and_evaluate,
          "Where checkpoints, logs and reports go (default: workdirs/<config name>[_<fold>]).")
