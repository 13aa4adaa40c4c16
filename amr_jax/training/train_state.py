"""The objects a run is made of, each built from its config: loss, model, optimizer, schedule, state.

Each function checks the fields it reads and names the field in its error.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from amr_jax import config_checks, errors, losses, models
from amr_jax.data import augment
from amr_jax.training import optim

LOSSES: dict[str, Callable[..., losses.LossTerms]] = {
    "amr": losses.adaptive_mean_residue_terms,
    "mean_residue": losses.mean_residue_terms,
    "mean_variance": losses.mean_variance_terms,
    "dldl": losses.dldl_terms,
    "dldl_v2": losses.dldl_v2_terms,
    "cross_entropy": lambda logits, labels, **kwargs: {"loss": losses.cross_entropy_loss(logits, labels, **kwargs)},
}
# config.input_normalization: "" leaves each model its own (EfficientNet-Lite's ImageNet constants, none for the
# others); a name gives per-channel (mean, std) of RGB in [0, 1].
INPUT_NORMALIZATIONS = {"dldl_v2": ((0.5958, 0.4637, 0.4065), (0.2693, 0.2409, 0.2352))}  # DLDL-v2's code
# float64 (parameters too) needs 64-bit JAX (JAX_ENABLE_X64=1): for checks where rounding must not decide.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


class TrainState(train_state.TrainState):
  batch_stats: Any = None


def loss_fn(config) -> Callable[[jax.Array, jax.Array], losses.LossTerms]:
  """``terms(logits, ages)`` of ``config.loss`` with ``config.loss_kwargs`` and the label grid (``config.start_age``,
  ``config.label_step``)."""
  if config.loss not in LOSSES:
    raise errors.ConfigError(f"config.loss must be one of {', '.join(LOSSES)}; got {config.loss!r}.")
  kwargs = dict(config.loss_kwargs)
  try:
    LOSSES[config.loss](jnp.zeros((1, config.num_classes)), jnp.zeros((1,)), start_age=config.start_age,
                        label_step=config.label_step, **kwargs)
  except (TypeError, ValueError) as error:  # an unknown argument, or a value the loss refuses
    raise errors.ConfigError(f"config.loss_kwargs {kwargs} do not fit loss {config.loss!r}: {error}") from None
  return functools.partial(LOSSES[config.loss], start_age=config.start_age, label_step=config.label_step, **kwargs)


def augmentation(config) -> augment.Augmentation:
  fields = dict(config.augmentation)
  known = {field.name for field in dataclasses.fields(augment.Augmentation)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise errors.ConfigError(f"config.augmentation has unknown fields {unknown}; valid: {sorted(known)}.")
  for name in ("scale_range", "downscale_range"):
    if name in fields:
      fields[name] = tuple(fields[name])
  try:
    return augment.Augmentation(**fields)
  except ValueError as error:  # its messages start with the field's name
    raise errors.ConfigError(f"config.augmentation.{error}") from None


# The model and optimizer are static parts of the training state, so the compiled steps are reused only
# when they are the same objects: equal settings give the same object (several runs in one process, tests).

def model(config, axis_name: str | None = "batch"):
  if config.dtype not in DTYPES:
    raise errors.ConfigError(f"config.dtype must be one of {', '.join(DTYPES)}; got {config.dtype!r}.")
  if config.dtype == "float64" and not jax.config.jax_enable_x64:
    raise errors.ConfigError("config.dtype='float64' needs 64-bit JAX: set JAX_ENABLE_X64=1 in the environment.")
  if config.model not in models.MODELS:
    raise errors.ConfigError(f"config.model must be one of {', '.join(sorted(models.MODELS))}; got {config.model!r}.")
  if config.input_normalization and config.input_normalization not in INPUT_NORMALIZATIONS:
    raise errors.ConfigError(f"config.input_normalization must be '' (the model's own) or one of "
                             f"{', '.join(INPUT_NORMALIZATIONS)}; got {config.input_normalization!r}.")
  return _model(config.model, config.num_classes, config.dtype, axis_name, config.input_normalization)


@functools.lru_cache(maxsize=None)
def _model(name: str, num_classes: int, dtype: str, axis_name: str | None, input_normalization: str = ""):
  kwargs = {"dtype": DTYPES[dtype], "axis_name": axis_name}
  if input_normalization:
    kwargs["input_normalization"] = INPUT_NORMALIZATIONS[input_normalization]
  elif name.startswith("efficientnet_lite"):
    from amr_jax.models.efficientnet_lite import LITE_IMAGENET_NORMALIZATION
    kwargs["input_normalization"] = LITE_IMAGENET_NORMALIZATION
  return models.create_model(name, num_classes, **kwargs)


def optimizer(config) -> optax.GradientTransformation:
  """The optimizer with its learning rate as an injected hyperparameter, set by each step."""
  return _optimizer(config.optimizer, float(config.learning_rate), float(config.weight_decay),
                    float(config.momentum), float(config.gradient_clip_norm or 0.0))


@functools.lru_cache(maxsize=None)
def _optimizer(name: str, learning_rate: float, weight_decay: float, momentum: float, gradient_clip_norm: float):
  def make(learning_rate):
    return optim.create_optimizer(name, learning_rate, weight_decay=weight_decay, momentum=momentum,
                                  gradient_clip_norm=gradient_clip_norm or None)
  make(learning_rate)  # raises for an unknown name or a bad value
  return optax.inject_hyperparams(make)(learning_rate=learning_rate)


def schedule(config, steps_per_epoch: int) -> optax.Schedule:
  return optim.learning_rate_schedule(
      config.schedule, base_learning_rate=config.learning_rate, steps_per_epoch=steps_per_epoch,
      num_epochs=config.num_epochs, milestone_epochs=tuple(config.milestone_epochs),
      decay_factor=config.decay_factor, warmup_epochs=config.warmup_epochs)


@functools.lru_cache(maxsize=64)
def _jitted_init(model):
  # One jitted init per distinct model (Flax modules compare by their fields): every fold and every run of a
  # process with this model reuses its compiled program instead of compiling init again (~4 s on a CPU).
  return jax.jit(functools.partial(model.init, train=False))


def initial_variables(config, model) -> dict[str, Any]:
  """Fresh variables, with the pretrained backbone of ``config.pretrained`` copied in."""
  from amr_jax.models import pretrained  # pylint: disable=import-outside-toplevel

  images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  variables = _jitted_init(model)(jax.random.key(config.seed), images)
  variables = dict(variables)
  if not config.pretrained:
    return with_parameter_dtype(config, variables)
  config_checks.check_pretrained(config)
  head = models.HEAD_NAMES
  if config.pretrained == "imagenet":
    _, source = pretrained.load(config.model)
  elif config.pretrained in config_checks.DLIB_PRETRAINED:
    from amr_jax.models import dlib_age_weights  # pylint: disable=import-outside-toplevel
    _, source = dlib_age_weights.load()
    head = () if config.pretrained == "dlib_with_head" else head
    if config.data.name == "fgnet":
      from amr_jax.training import metric_writers  # pylint: disable=import-outside-toplevel
      metric_writers.log(f"Warning: config.pretrained={config.pretrained!r}: dlib trained this network on a private "
                         "set that very likely holds FG-NET; this run's FG-NET figures are not held-out results.")
  else:
    _, source = pretrained.load_torchvision_resnet(os.path.expanduser(config.pretrained), config.model)
  new_variables, _ = pretrained.init_from_pretrained(variables, source, head=head)
  return with_parameter_dtype(config, dict(new_variables))


def with_parameter_dtype(config, variables):
  """``variables`` in float64 for a float64 run (the models create them float32); as they are otherwise."""
  if config.dtype != "float64":
    return variables
  return jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, variables)


def initial_train_state(config, model, tx) -> TrainState:
  variables = initial_variables(config, model)
  state = TrainState.create(apply_fn=model.apply, params=variables["params"],
                            batch_stats=variables.get("batch_stats", {}), tx=tx)
  return state.replace(step=jnp.zeros((), jnp.int32))  # the dtype the step has after a pmapped update
