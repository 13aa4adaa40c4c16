"""Evaluates a run's last checkpoints: ``python run_eval.py --workdir=DIR [--config.test_time_flip=True]``.

Rewrites each fold's ``test/`` (and ``validation/``) report and, for a run
over several folds, ``summary/``. The config is the one the run was trained
with (``DIR/config.json``); only evaluation fields may be set
(``amr_jax.workdir_layout.EVAL_FIELDS``). ``--config=FILE`` with overrides is
accepted when it gives that same config.
"""

from amr_jax import cli


def evaluate_workdir(config, workdir):
  from amr_jax import experiment  # after the flags are parsed: a mistake in them is refused before JAX loads

  return experiment.evaluate_workdir(config, workdir)


if __name__ == "__main__":
  cli.run(evaluate_workdir, "The run's workdir (with --config, default: workdirs/<config name>[_<fold>]).",
          config_from_workdir=True)
