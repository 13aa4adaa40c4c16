"""A fold's reports: its reported model (the last, or the one selected on validation data) on its validation and
test images, refused before anything is written when a prediction is not finite."""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from amr_jax import errors, workdir_layout
from amr_jax.evaluation import evaluate, reports
from amr_jax.training import checkpoints, metric_writers, selection, stages


class NonFinitePredictionError(errors.RunError, FloatingPointError):
  """A model predicted a NaN or infinite age; no report of those predictions is written."""


def evaluate_fold(config, workdir, fold, steps, initial_state):
  store = checkpoints.Checkpoints(workdir_layout.checkpoints_dir(workdir), max_to_keep=config.max_checkpoints_to_keep)
  if store.latest_step() is None:
    raise errors.WorkdirError(f"{fold.name}: no checkpoint in {store.directory}; train first "
                            f"(python run_train.py --config=... --workdir={workdir}).")
  template = jax.device_get(initial_state)
  state = store.restore(template)
  _, total_steps = stages.num_steps(config, fold.num_train)
  note = "" if int(state.step) == total_steps else f" (the run is unfinished: {total_steps} steps planned)"
  chosen = selection.for_fold(config.model_selection, workdir, int(state.step), store, template,
                              write_files=metric_writers.is_writer())
  metric_writers.log(f"{fold.name}: evaluating the checkpoint of step {int(state.step)}{note}")
  return evaluate_splits(config, workdir, fold, steps, state, chosen, initial_state)


def evaluate_splits(config, workdir, fold, steps, last_state, chosen: selection.Selection | selection.LastStep,
                    initial_state):
  """Reports the selected model (the last one without selection) on the validation and test images.

  With selection, the last step's test metrics are computed too and written beside the selected ones.

  Returns:
    ``(test predictions of the reported model, test predictions of the last step's model or None)``.
  """
  state, extra, last_predictions = last_state, {}, None
  scale = reports.LabelScale.of(config)
  if chosen.selects:
    if chosen.best is None:
      raise errors.WorkdirError(f"{fold.name}: {chosen.path} holds no validation score; train the run to its end.")
    last_step = int(jax.device_get(last_state.step))
    last_predictions = evaluate.predict(steps.eval, evaluate.replicate(last_state), fold.test, config.eval_batch_size)
    refuse_non_finite(fold.name, "test", last_step, last_predictions, workdir)
    if metric_writers.is_writer():  # for a pool made from the reports' files (amr_jax.workdir_pack)
      reports.write_predictions_csv(workdir / workdir_layout.TEST_REPORT / workdir_layout.LAST_STEP_PREDICTIONS_FILE,
                                    last_predictions)
    last = evaluate.metrics_of(last_predictions, scale)
    state = chosen.restore(jax.device_get(initial_state))
    extra = {**chosen.summary(), "last_step": last_step, "last_step_test": last}
    metric_writers.log(f"{fold.name}: selected step {extra['selected_step']} of {extra['last_step']} on {chosen.name} "
                       f"{chosen.best['score']:.4f}; the last step's test MAE {last['mae']:.3f}")
  replicated, step = evaluate.replicate(state), int(jax.device_get(state.step))
  outputs = {}
  for split, arrays in zip(workdir_layout.REPORT_SPLITS, (fold.validation, fold.test)):
    if len(arrays["age"]):
      outputs[split] = evaluate.predict(steps.eval, replicated, arrays, config.eval_batch_size)
      refuse_non_finite(fold.name, split, step, outputs[split], workdir)
      if metric_writers.is_writer():
        # The last step's test metrics belong beside the test metrics only.
        beside = extra if split == "test" else {k: v for k, v in extra.items() if k != "last_step_test"}
        summary = evaluate.write_report(workdir / split, outputs[split], extra=beside,
                                        title=f"{config.name}, {fold.name}, {split}", scale=scale)
        metric_writers.log(f"{fold.name}: {split} MAE {summary['mae']:.3f}, "
                           f"{scale.cs_name(5)} {summary['cs'][5]:.3f} over "
                           f"{summary['count']} images (RMSE {summary['rmse']:.3f}, PC {summary['pearson']:.3f}) -> "
                           f"{workdir / split}")
  return outputs.get("test"), last_predictions


def refuse_non_finite(fold_name: str, split: str, step: int, predictions: evaluate.Predictions,
                       workdir: pathlib.Path) -> None:
  """Stops before any report of ``split`` is written when a predicted age is NaN or infinite."""
  bad = int(np.sum(~np.isfinite(predictions["predicted_age"])))
  if bad:
    raise NonFinitePredictionError(
        f"{fold_name}: the model of step {step} predicts a non-finite age for {bad} of "
        f"{len(predictions['predicted_age'])} {split} images, so no {split} report was written; the checkpoints in "
        f"{workdir / 'checkpoints'} are kept (a diverged model, or bfloat16 on a CPU where XLA's YNNPACK fusions "
        "were not turned off: see amr_jax.xla_flags).")


