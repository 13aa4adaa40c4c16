"""Trains and evaluates age estimators: ``python run_train.py --config=configs/fgnet_amr.py[:FOLD] [--workdir=DIR]``.

Any config field can be set on the command line (``--config.batch_size=32``).
A run started on a workdir that holds checkpoints resumes from the latest.
"""

from absl import app, flags
from ml_collections import config_flags

import amr_jax.cli
from amr_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, with an optional argument: configs/fgnet_amr.py:17.",
                                lock_config=True)
flags.DEFINE_string("workdir", None,
                    "Where checkpoints, logs and reports go (default: workdirs/<config name>[_<fold>]).")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config, workdir = amr_jax.cli.setup(FLAGS.config, FLAGS.workdir)
  train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=amr_jax.cli.parse_flags)
