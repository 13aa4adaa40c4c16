"""Evaluation: predictions for every image, the age metrics, and the reports a researcher reads.

A model's prediction is the expectation of its age distribution
(:func:`amr_jax.losses.expected_age`), as in the AMR and DLDL-v2 papers; the
distribution's mode and standard deviation are written beside it. With
``test_time_flip`` the distributions of an image and its mirror image are
averaged first (DLDL-v2's test-time augmentation).

Nothing here chooses an epoch or a checkpoint: the model evaluated is the
one the run reports (its last, or the one :mod:`amr_jax.training.selection` chose on
validation data). ``evaluate_workdir`` (``run_eval.py``) re-evaluates a
finished or interrupted run from its checkpoints.

A report folder holds ``predictions.csv`` (one row per image),
``metrics.json`` (MAE, RMSE, PC, CS(0..10), and where the labels' spread is
known the epsilon-error) and three PNGs: the CS(theta) curve, predicted against
true age, and MAE by age group, each in the labels' unit
(:class:`amr_jax.evaluation.reports.LabelScale`: years for ages; a run's
``label_name``, ``label_unit`` and ``cs_step``).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Sequence

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np

from amr_jax import atomic_files, metrics, workdir_layout
from amr_jax.data import augment, input_pipeline
from amr_jax.evaluation import reports

Predictions = dict[str, np.ndarray]
# Label columns copied from the dataset into the predictions, when present.
LABEL_FIELDS = ("file_name", "subject_id", "age", "age_std", "real_age")


def replicate(tree, devices=None):
  """``tree`` copied to every local device (or to ``devices``), laid out as ``pmap(axis_name="batch")`` lays out
  its outputs.

  ``pmap`` caches its compiled program by the inputs' layout too: a state from
  ``flax.jax_utils.replicate`` (mesh axis ``_device_put_sharded``) and the
  same state coming out of a step (mesh axis ``batch``) would each compile the
  step once, doubling its compile time.
  """
  return jax.pmap(_same, axis_name="batch", devices=devices)(flax.jax_utils.replicate(tree, devices))


def _same(tree):
  return tree


def unreplicate(tree):
  """The first local device's copy of every leaf of a ``pmap`` output or replicated tree.

  (``flax.jax_utils.unreplicate`` keeps the device axis when ``pmap`` ran on one
  device of several, as in the one-device tests.)
  """
  return jax.tree.map(lambda x: x.addressable_shards[0].data[0], tree)


def distribution_mean_and_std(probs: jax.Array, start_age: float, label_step: float = 1
                              ) -> tuple[jax.Array, jax.Array]:
  """The predicted age (the mean of the distribution ``probs`` ``[batch, classes]`` over the labels
  ``start_age + label_step * j``) and its spread."""
  ages = start_age + label_step * jnp.arange(probs.shape[-1], dtype=probs.dtype)
  mean = probs @ ages
  return mean, jnp.sqrt(jnp.sum(probs * jnp.square(ages - mean[:, None]), axis=-1))


def eval_step(state, batch: dict[str, jax.Array], *, start_age: float, test_time_flip: bool, label_step: float = 1
              ) -> dict[str, jax.Array]:
  """Per-example predictions of one device's batch, gathered from all devices (call under ``pmap``).

  Returns ``predicted_age`` (the distribution's mean), ``distribution_std``,
  ``mode_age``, and the batch's ``index`` and ``mask``, each
  ``[num_devices, per_device_batch]`` in global device order, and the ``distribution`` itself
  ``[num_devices, per_device_batch, classes]``.
  """
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  images = augment.to_float(batch["image"])
  def distribution(images):  # softmax in at least float32, whatever the model computes in
    logits = state.apply_fn(variables, images, train=False)
    return jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))

  probs = distribution(images)
  if test_time_flip:
    probs = 0.5 * (probs + distribution(augment.flip_left_right(images)))
  mean, std = distribution_mean_and_std(probs, start_age, label_step)
  out = {"predicted_age": mean, "distribution_std": std,
         "mode_age": start_age + label_step * jnp.argmax(probs, axis=-1),
         "distribution": probs, "index": batch["index"], "mask": batch["mask"]}
  return jax.lax.all_gather(out, axis_name="batch")


def predict(p_eval_step, replicated_state, arrays: dict[str, np.ndarray], global_batch: int, *,
            distributions: bool = False) -> Predictions:
  """Predictions for every example of ``arrays`` (in its order), with its label fields copied in (and each
  example's age ``distribution`` ``[count, classes]`` with ``distributions``)."""
  count = len(arrays["image"])
  inputs = {"image": arrays["image"], "index": np.arange(count, dtype=np.int32)}
  columns = {"predicted_age": np.zeros(count, np.float32), "distribution_std": np.zeros(count, np.float32),
             "mode_age": np.zeros(count, np.float32)}
  if distributions:
    columns["distribution"] = None  # its width (the classes) is known at the first batch
  for batch in input_pipeline.eval_batches(inputs, global_batch=global_batch, num_devices=jax.local_device_count(),
                                           process_index=jax.process_index(), process_count=jax.process_count()):
    out = p_eval_step(replicated_state, batch)
    # Only what is kept comes to the host (not the distributions, unless asked for).
    out = jax.device_get(unreplicate({name: out[name] for name in (*columns, "mask", "index")}))
    keep = out["mask"].reshape(-1)
    index = out["index"].reshape(-1)[keep]
    for name in columns:
      values = out[name].reshape(-1, *out[name].shape[2:])[keep]
      if columns[name] is None:
        columns[name] = np.zeros((count, *values.shape[1:]), values.dtype)
      columns[name][index] = values
  labels = {name: arrays[name] for name in LABEL_FIELDS if name in arrays}
  return {**labels, **columns}


def metrics_of(predictions: Predictions, scale: reports.LabelScale = reports.AGES) -> dict[str, Any]:
  """MAE, RMSE, PC, count, CS(k * ``scale.cs_step``) for k = 0..10 (``cs``, and its ``cs_step``), and the
  epsilon-error where the votes' spread (``age_std``) is known."""
  kwargs = {"age_std": predictions["age_std"]} if "age_std" in predictions else {}
  result = metrics.compute_age_metrics(predictions["predicted_age"], predictions["age"], theta_step=scale.cs_step,
                                       **kwargs)
  return {**_plain(result), "cs_step": float(scale.cs_step)}


def _plain(value):
  if isinstance(value, dict):
    return {key: _plain(item) for key, item in value.items() if item is not None}
  value = np.asarray(value)
  return value.tolist() if value.ndim else value.item()


def write_report(folder: str | os.PathLike, predictions: Predictions, *, title: str = "",
                 extra: dict[str, Any] | None = None, scale: reports.LabelScale = reports.AGES) -> dict[str, Any]:
  """Writes ``predictions.csv``, the three PNGs and ``metrics.json`` (the metrics, then ``extra``) to ``folder``;
  returns the metrics. ``scale``: the labels' name, unit and CS step (ages in years by default).

  Each file is written whole or not at all, ``metrics.json`` last: where it is new, so is the whole report.
  """
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  summary = {**metrics_of(predictions, scale), **(extra or {})}
  columns = dict(predictions)
  columns["abs_error"] = np.abs(predictions["predicted_age"] - predictions["age"])
  reports.write_predictions_csv(folder / workdir_layout.PREDICTIONS_FILE, columns)
  _plots(folder, predictions, summary, title, scale)
  # Last: it says "done".
  atomic_files.write_text(folder / workdir_layout.METRICS_FILE, json.dumps(summary, indent=2) + "\n")
  return summary


def _plots(folder: pathlib.Path, predictions: Predictions, summary: dict[str, Any], title: str,
           scale: reports.LabelScale) -> None:
  reports.plot_cumulative_score(folder / workdir_layout.CUMULATIVE_SCORE_PLOT,
                                {f"MAE {summary['mae']:.2f}": summary["cs"]}, title=title, scale=scale)
  reports.plot_predicted_vs_true(folder / workdir_layout.PREDICTED_VS_TRUE_PLOT, predictions["age"],
                                 predictions["predicted_age"], title=title, scale=scale)
  reports.plot_error_by_age_group(folder / workdir_layout.ERROR_BY_AGE_GROUP_PLOT, predictions["age"],
                                  predictions["predicted_age"], title=title, scale=scale)


def _pooled(by_fold: Sequence[tuple[str, Predictions]]) -> Predictions:
  return {name: np.concatenate([p[name] for _, p in by_fold]) for name in by_fold[0][1]}


def pooled_metrics(by_fold: Sequence[tuple[str, Predictions]], scale: reports.LabelScale = reports.AGES
                   ) -> dict[str, Any]:
  """Metrics over all folds' test images pooled, plus the mean and spread of the per-fold MAEs."""
  summary = metrics_of(_pooled(by_fold), scale)
  fold_maes = np.array([metrics_of(p)["mae"] for _, p in by_fold])
  summary.update(num_folds=len(by_fold), mean_fold_mae=float(fold_maes.mean()), std_fold_mae=float(fold_maes.std()))
  return summary


def write_pooled_report(folder: str | os.PathLike, by_fold: Sequence[tuple[str, Predictions]], *,
                        title: str = "", missing: Sequence[str] = (), extra: dict[str, Any] | None = None,
                        scale: reports.LabelScale = reports.AGES) -> dict[str, Any]:
  """The pooled report of a multi-fold run, plus ``per_fold.csv`` (one row per fold: its count, MAE and CS(5),
  ``cs5``, or for another ``scale`` the column its CS(5) is named by, e.g. ``cs0.5``).

  ``missing`` names the protocol's folds that are not pooled (not finished): ``metrics.json`` then says
  ``"complete": false`` with them listed, and the plots' title says INCOMPLETE. ``extra`` is added to
  ``metrics.json`` (how the folds' models were selected).
  """
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  pooled = {"fold": np.concatenate([[name] * len(p["age"]) for name, p in by_fold]), **_pooled(by_fold)}
  summary = pooled_metrics(by_fold, scale)
  summary.update(complete=not missing, missing_folds=list(missing), **(extra or {}))
  if missing:
    title = f"{title} (INCOMPLETE: {len(missing)} folds missing)"
  columns = dict(pooled)
  columns["abs_error"] = np.abs(pooled["predicted_age"] - pooled["age"])
  reports.write_predictions_csv(folder / workdir_layout.PREDICTIONS_FILE, columns)
  per_fold = [metrics_of(p, scale) for _, p in by_fold]
  reports.write_predictions_csv(folder / workdir_layout.PER_FOLD_FILE, {
      "fold": [name for name, _ in by_fold], "count": [m["count"] for m in per_fold],
      "mae": [m["mae"] for m in per_fold], f"cs{scale.threshold(5):g}": [m["cs"][5] for m in per_fold]})
  _plots(folder, pooled, summary, title, scale)
  # Last: it says "done".
  atomic_files.write_text(folder / workdir_layout.METRICS_FILE, json.dumps(summary, indent=2) + "\n")
  return summary

