"""Evaluates a run's last checkpoints: ``python run_eval.py --config=configs/fgnet_amr.py[:FOLD] [--workdir=DIR]``.

Rewrites each fold's ``test/`` (and ``validation/``) report and, for a run
over several folds, ``summary/``. Give the config (and overrides) the run was
trained with; evaluation-only fields such as ``--config.test_time_flip=True``
may differ.
"""

from absl import app, flags
from ml_collections import config_flags

import amr_jax.cli
from amr_jax import evaluate

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, with an optional argument: configs/fgnet_amr.py:17.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "The run's workdir (default: workdirs/<config name>[_<fold>]).")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config, workdir = amr_jax.cli.setup(FLAGS.config, FLAGS.workdir)
  evaluate.evaluate_workdir(config, workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=amr_jax.cli.parse_flags)
