"""The losses on a frozen backbone: its features are computed once, and each loss trains only the model's head.

Fine-tuning a backbone per (loss, seed, fold) costs hours per fold on a CPU; with the backbone frozen, every fold
of every run shares one pass of the backbone over the dataset, and the losses differ only where they act: on the
logits of the head. The head is the model's own last layer (``_fc`` of EfficientNet-Lite0, ``fc`` of the others,
after the model's dropout), initialised as the full model's initialisation with the run's seed does (its bias as
``config.head_bias`` says: zeros, or the fold's training-age prior), trained with the run config's optimizer,
schedule, batch size, epochs and horizontal flip (a flipped image's features are computed once too; the config's
other augmentations, which would need the backbone at every step, are not applied). All folds of a run train at
once (``vmap`` over folds); each reports its last step, or with ``config.model_selection="validation_mae"`` the
epoch whose head had the lowest MAE on the fold's validation subjects (``num_validation_subjects``, drawn from its
training subjects; validated every ``eval_every_epochs`` and at the end, the earliest of equal scores kept), as
:mod:`amr_jax.training.selection` does for full training. Nothing is selected on test data. A selecting run writes its
last epoch's pooled report to ``last_step/`` beside ``summary/``. ``train_loss.json`` holds the mean training loss
over the folds' first and last 10 steps (and the selected epochs).
"""

from __future__ import annotations

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from amr_jax import config_checks, errors
from amr_jax.data import augment, folds, training_data
from amr_jax.evaluation import evaluate
from amr_jax.models import head_init
from amr_jax.training import optim, stages, train_state


def head_inputs(model, variables, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
  """``[N, features]``: what the model's head layer receives for uint8 ``images`` (inference mode).

  float32, or float64 where the model computes in float64.
  """
  head = head_init.head_name(variables["params"])

  @jax.jit
  def features(batch):
    captured = []

    def interceptor(next_fun, args, kwargs, context):
      if context.method_name == "__call__" and context.module.name == head and isinstance(context.module, nn.Dense):
        captured.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      model.apply(variables, augment.to_float(batch), train=False)
    return captured[-1].astype(jnp.promote_types(captured[-1].dtype, jnp.float32))

  count = len(images)
  padded = np.concatenate([images, np.zeros((-count % batch_size, *images.shape[1:]), images.dtype)])
  out = [np.asarray(features(padded[i:i + batch_size])) for i in range(0, len(padded), batch_size)]
  return np.concatenate(out)[:count]


def dataset_features(config, cache_dir: pathlib.Path) -> dict[str, np.ndarray]:
  """FG-NET's labels and the backbone's features of every image and of its mirror image, cached in ``cache_dir``."""
  weights = config.pretrained or f"random-seed{config.seed}"
  weights = pathlib.Path(weights).stem if weights.endswith(".pth") else weights
  path = cache_dir / f"{config.model}_{weights}_{config.image_size}px_{config.data.crop}.npz"
  if path.exists():
    with np.load(path) as cached:
      return dict(cached)
  builder = training_data.prepare(config.data)
  arrays = training_data.load_arrays(config.data, config.image_size, builder)["all"]
  model = train_state.model(config, axis_name=None)
  variables = train_state.initial_variables(config, model)
  print(f"features of {len(arrays['image'])} images and their mirror images: {path.name}", flush=True)
  result = {"features": head_inputs(model, variables, arrays["image"]),
            "flipped_features": head_inputs(model, variables, np.ascontiguousarray(arrays["image"][:, :, ::-1])),
            **{name: arrays[name] for name in ("age", "subject_id", "file_name")}}
  cache_dir.mkdir(parents=True, exist_ok=True)
  np.savez(path, **result)
  return result


def splits(config, subject_ids: np.ndarray) -> tuple[list[str], list[folds.Split]]:
  """The names and example indices of the folds a full run of ``config`` trains and tests."""
  dataset = {"all": {"subject_id": subject_ids, "index": np.arange(len(subject_ids))}}
  every = [training_data.fold_splits(config, dataset, f) for f in training_data.fold_ids(config, dataset)]
  return ([f.name for f in every],
          [folds.Split(f.train["index"], f.test["index"], f.validation["index"]) for f in every])


def mean_age_baseline(config, data: dict[str, np.ndarray]) -> dict:
  """Pooled metrics of answering each fold's mean training age: what a model must beat to have learned anything."""
  names, fold_splits = splits(config, data["subject_id"])
  by_fold = [(name, {"predicted_age": np.full(len(s.test), data["age"][s.train].mean(), np.float32),
                     "age": data["age"][s.test]}) for name, s in zip(names, fold_splits)]
  return evaluate.pooled_metrics(by_fold)


def initial_biases(config, bias: np.ndarray, ages: np.ndarray, train_indices: list[np.ndarray]) -> np.ndarray:
  """``[folds, classes]``: each fold's starting head bias, as ``config.head_bias`` says (the model's ``bias``, or
  the prior of the fold's training ages)."""
  if config.head_bias == "age_prior":
    return np.stack([head_init.prior_bias(ages[t], config.num_classes, start_age=config.start_age)
                     for t in train_indices])
  return np.broadcast_to(np.asarray(bias), (len(train_indices), *np.shape(bias)))


def train_heads(config, data: dict[str, np.ndarray], train_indices: list[np.ndarray],
                validation_indices: list[np.ndarray] | None = None):
  """Trains one head per fold on the features of its training images.

  Returns:
    ``(head_module, params, losses, selected)``: the stacked head params of the last step, the training losses
    ``[folds, steps]``, and with ``config.model_selection`` other than ``"last"`` (``validation_indices`` needed)
    ``{"params", "epoch", "score"}`` of each fold's selected epoch (1-based), else None.
  """
  model = train_state.model(config, axis_name=None)
  init = jax.jit(model.init, static_argnames="train")
  variables = init(jax.random.key(config.seed), jnp.zeros((1, config.image_size, config.image_size, 3)), train=False)
  head_module = nn.Dense(config.num_classes)
  head_params = train_state.with_parameter_dtype(config, variables["params"][head_init.head_name(variables["params"])])
  features = jnp.asarray(data["features"], jax.tree.leaves(head_params)[0].dtype)
  dropout_rate = float(getattr(model, "dropout_rate", 0.0))
  terms = train_state.loss_fn(config)
  flip_probability = 0.5 if config.augmentation.get("flip", False) else 0.0

  biases = jnp.asarray(initial_biases(config, head_params["bias"], data["age"], train_indices),
                       head_params["bias"].dtype)
  counts = np.array([len(t) for t in train_indices])
  padded = np.stack([np.resize(t, counts.max()) for t in train_indices])
  batch = config.batch_size
  # As the full training: whole batches only, so an epoch is this many steps (of the smallest fold's set).
  steps_per_epoch, total_steps = stages.num_steps(config, int(counts.min()))
  if total_steps % steps_per_epoch:
    raise ValueError(f"config.num_train_steps={total_steps}: the frozen-backbone runs train whole epochs "
                     f"({steps_per_epoch} steps each); use -1 and config.num_epochs.")
  num_epochs = total_steps // steps_per_epoch
  tx = optim.create_optimizer(config.optimizer, train_state.schedule(config, steps_per_epoch),
                              weight_decay=config.weight_decay, momentum=config.momentum,
                              gradient_clip_norm=config.gradient_clip_norm or None)
  both = jnp.stack([features, jnp.asarray(data["flipped_features"], features.dtype)])
  ages = jnp.asarray(data["age"])

  def loss(params, x, y, key):
    if dropout_rate:
      keep = jax.random.bernoulli(key, 1.0 - dropout_rate, x.shape)
      x = jnp.where(keep, x / (1.0 - dropout_rate), 0.0)
    return jnp.mean(terms(head_module.apply({"params": params}, x), y)["loss"])

  def fold_epoch(carry, epoch, key, indices, count):
    # Each epoch visits the fold's training images in a fresh random order (padding sorts last).
    epoch_key = jax.random.fold_in(key, epoch)
    scores = jnp.where(jnp.arange(indices.shape[0]) < count, jax.random.uniform(epoch_key, indices.shape), 2.0)
    order = indices[jnp.argsort(scores)]

    def step(carry, position):
      params, opt_state = carry
      chosen = order[position * batch + jnp.arange(batch)]
      flip_key, dropout_key = jax.random.split(jax.random.fold_in(epoch_key, position))
      flipped = jax.random.bernoulli(flip_key, flip_probability, (batch,)).astype(jnp.int32)
      value, grads = jax.value_and_grad(loss)(params, both[flipped, chosen], ages[chosen], dropout_key)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), value

    return jax.lax.scan(step, carry, jnp.arange(steps_per_epoch))

  selecting = config.model_selection != "last"
  if selecting and config.model_selection != "validation_mae":
    raise errors.ConfigError(f"config.model_selection={config.model_selection!r}: FG-NET selects on "
                             "'validation_mae'.")
  if selecting and (validation_indices is None or min(len(v) for v in validation_indices) == 0):
    raise errors.ConfigError("config.model_selection='validation_mae' needs validation subjects: set "
                             "config.num_validation_subjects.")
  validation_indices = validation_indices if selecting else [np.zeros(1, np.int64)] * len(train_indices)
  validation_counts = np.array([len(v) for v in validation_indices])
  validation_padded = np.stack([np.resize(v, validation_counts.max()) for v in validation_indices])
  every = max(int(config.eval_every_epochs), 1)

  def validation_mae(params, indices, count):
    probs = jax.nn.softmax(head_module.apply({"params": params}, features[indices]))
    if config.test_time_flip:
      probs = 0.5 * (probs + jax.nn.softmax(head_module.apply({"params": params}, both[1][indices])))
    predicted, _ = evaluate.distribution_mean_and_std(probs, config.start_age)
    mask = jnp.arange(indices.shape[0]) < count
    return jnp.sum(jnp.where(mask, jnp.abs(predicted - ages[indices]), 0.0)) / count

  def train_fold(key, indices, count, bias, held_out, held_out_count):
    params = {**head_params, "bias": bias}

    def epoch_and_validation(carry, epoch):
      (params, opt_state), values = fold_epoch(carry[0], epoch, key, indices, count)
      best_params, best_score, best_epoch = carry[1]
      if selecting:
        due = ((epoch + 1) % every == 0) | (epoch + 1 == num_epochs)
        score = validation_mae(params, held_out, held_out_count)
        better = due & (score < best_score)  # strictly: the earliest of equal scores stays
        best_params = jax.tree.map(lambda new, old: jnp.where(better, new, old), params, best_params)
        best_score, best_epoch = jnp.where(better, score, best_score), jnp.where(better, epoch + 1, best_epoch)
      return ((params, opt_state), (best_params, best_score, best_epoch)), values

    carry = ((params, tx.init(params)), (params, jnp.asarray(jnp.inf, features.dtype), jnp.asarray(0)))
    ((params, _), best), values = jax.lax.scan(epoch_and_validation, carry, jnp.arange(num_epochs))
    return params, values.reshape(-1), best

  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(config.seed), i))(jnp.arange(len(train_indices)))
  params, values, (best_params, best_score, best_epoch) = jax.jit(jax.vmap(train_fold))(
      keys, jnp.asarray(padded), jnp.asarray(counts), biases, jnp.asarray(validation_padded),
      jnp.asarray(validation_counts))
  selected = None
  if selecting:
    selected = {"params": best_params, "epoch": np.asarray(best_epoch), "score": np.asarray(best_score)}
  return head_module, params, np.asarray(values), selected


def run(config, cache_dir: pathlib.Path, workdir: pathlib.Path) -> dict:
  """One (loss, seed) run over every fold of ``config.protocol``; writes its pooled report to ``workdir/summary``.

  A finished run in ``workdir`` with the same config is read back instead of trained again; one with another
  config is an error.
  """
  config_checks.check_data_config(config.data, config.protocol)
  settings = config.to_json_best_effort(indent=2) + "\n"
  done = workdir / "summary" / "metrics.json"
  if (workdir / "config.json").exists():
    if (workdir / "config.json").read_text() != settings:
      raise errors.WorkdirError(f"{workdir} holds a run with another config ({workdir / 'config.json'}); "
                                "use a new --workdir.")
    if done.exists():
      return json.loads(done.read_text())
  data = dataset_features(config, cache_dir)
  names, fold_splits = splits(config, data["subject_id"])
  head_module, params, values, selected = train_heads(config, data, [s.train for s in fold_splits],
                                                      [s.validation for s in fold_splits])

  def probabilities(p, x):
    return jax.nn.softmax(head_module.apply({"params": p}, x))

  def test_predictions(stacked):
    by_fold = []
    for i, (name, split) in enumerate(zip(names, fold_splits)):
      fold_params = jax.tree.map(lambda leaf: leaf[i], stacked)
      probs = probabilities(fold_params, data["features"][split.test])
      if config.test_time_flip:
        probs = 0.5 * (probs + probabilities(fold_params, data["flipped_features"][split.test]))
      predicted, std = evaluate.distribution_mean_and_std(probs, config.start_age)
      by_fold.append((name, {"predicted_age": np.asarray(predicted), "distribution_std": np.asarray(std),
                             **{k: data[k][split.test] for k in ("file_name", "subject_id", "age")}}))
    return by_fold

  first, last = values[:, :10].mean(), values[:, -10:].mean()
  print(f"{config.name} seed {config.seed}: {len(names)} folds, {values.shape[1]} steps each; "
        f"mean loss {first:.3f} -> {last:.3f}", flush=True)
  if not np.isfinite(values).all():
    raise FloatingPointError(f"{config.name} seed {config.seed}: a non-finite loss while training the heads.")
  workdir.mkdir(parents=True, exist_ok=True)
  notes = {"first_10_steps": float(first), "last_10_steps": float(last)}
  title = f"{config.name}, frozen {config.model}, seed {config.seed}"
  extra = {"model_selection": config.model_selection}
  if selected is not None:
    notes["selected_epochs"] = selected["epoch"].tolist()
    last_step = evaluate.write_pooled_report(workdir / "last_step", test_predictions(params),
                                             title=f"{title}, last epoch", extra=extra)
    extra["last_step_test"] = {k: last_step[k] for k in ("mae", "cs", "mean_fold_mae", "std_fold_mae", "count")}
    params = selected["params"]
  (workdir / "train_loss.json").write_text(json.dumps(notes))
  (workdir / "config.json").write_text(settings)
  return evaluate.write_pooled_report(workdir / "summary", test_predictions(params), title=title, extra=extra)
