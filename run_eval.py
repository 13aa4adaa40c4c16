"""Evaluates a run's last checkpoints: ``python run_eval.py --workdir=DIR [--config.test_time_flip=True]``.

Rewrites each fold's ``test/`` (and ``validation/``) report and, for a run
over several folds, ``summary/``. The config is the one the run was trained
with (``DIR/config.json``); only evaluation fields may be set
(``amr_jax.workdir_layout.EVAL_FIELDS``). ``--config=FILE`` with overrides is
accepted when it gives that same config.

``--pack=FILE.tar.gz`` evaluates nothing: it packs the reports of the run's finished folds for a machine that
shares no disk with this one; unpacked into the run's workdir there (``tar -xz --skip-old-files -f FILE.tar.gz
-C DIR``), they are pooled with its own folds (``amr_jax.workdir_pack``).
"""

import sys

from absl import flags

from amr_jax import cli

flags.DEFINE_string("pack", "", "Pack the finished folds' reports into this new .tar.gz (at most 16 MB), for "
                    "pooling on another machine; nothing is evaluated.")


def evaluate_workdir(config, workdir):
  if flags.FLAGS.pack:
    from amr_jax import errors, workdir_pack  # pylint: disable=import-outside-toplevel

    if any(arg.startswith("--config") for arg in sys.argv[1:]):
      raise errors.ConfigError("--pack packs the run as its workdir holds it, every fold with a test report: give "
                               "--workdir and --pack only, no --config or --config.* flag.")
    names = workdir_pack.pack(workdir, flags.FLAGS.pack)
    print(f"packed {len(names)} folds ({', '.join(names)}) -> {flags.FLAGS.pack}; on the other machine: tar -xz "
          f"--skip-old-files -f {flags.FLAGS.pack} -C <the run's workdir there>, then python run_eval.py --workdir=<it>")
    return {"packed": names}
  from amr_jax import experiment  # after the flags are parsed: a mistake in them is refused before JAX loads

  return experiment.evaluate_workdir(config, workdir)


if __name__ == "__main__":
  cli.run(evaluate_workdir, "The run's workdir (with --config, default: workdirs/<config name>[_<fold>]).",
          config_from_workdir=True)
