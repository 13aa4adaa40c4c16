"""Evaluates a run's last checkpoints: ``python run_eval.py --config=configs/fgnet_amr.py[:FOLD] [--workdir=DIR]``.

Rewrites each fold's ``test/`` (and ``validation/``) report and, for a run
over several folds, ``summary/``. Give the config (and overrides) the run was
trained with; evaluation-only fields such as ``--config.test_time_flip=True``
may differ.
"""

from amr_jax import cli, evaluate

if __name__ == "__main__":
  cli.run(evaluate.evaluate_workdir, "The run's workdir (default: workdirs/<config name>[_<fold>]).")
