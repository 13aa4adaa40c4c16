"""Images per second of each model: jitted forward, and a full training step, JAX against PyTorch.

  python -m benchmarks.model_speed                      # CPU: batch 32, 112 and 224 px
  python -m benchmarks.model_speed --batch 128 --sizes 224 --dtype bfloat16   # on a GPU

The training step is forward + backward + AdamW update with the adaptive
mean-residue loss (70 classes), BatchNorm in training mode. Each figure is
batch / median step time over ``--steps`` timed steps after ``--warmup``
untimed ones (which include compilation). When torch is importable, the same
network (ResNets with torchvision's layout, ThinAgeNet, TinyAgeNet) is timed
in PyTorch in the same run on the same batch, with the vectorised PyTorch AMR
loss and ``torch.optim.AdamW``; EfficientNet-Lite0's twin takes the package's ImageNet weights.
"""

import argparse
import functools
import platform

import numpy as np

from benchmarks.timing import median_time

NUM_CLASSES = 70

# JAX is imported inside the functions that use it, so that a process timing PyTorch alone (benchmarks/speed.py
# runs each in its own process to measure its memory) does not carry JAX's ~150 MB.


def jax_calls(name, images, ages, dtype):
  """The forward and training-step calls to time, and a function giving the step's analytic FLOPs
  (:mod:`amr_jax.models.flops`: convolutions and matrix products, forward and backward)."""
  import jax
  import jax.numpy as jnp
  import optax

  from amr_jax import losses, models
  from amr_jax.models import flops

  module = models.create_model(name, NUM_CLASSES, dtype=dtype)
  variables = jax.jit(functools.partial(module.init, train=False))(jax.random.key(0), images[:1])
  optimizer = optax.adamw(1e-3, weight_decay=0.01)
  state = {"params": variables["params"], "batch_stats": variables["batch_stats"],
           "opt": optimizer.init(variables["params"])}

  @jax.jit
  def forward(variables, images):
    return module.apply(variables, images, train=False)

  def loss_fn(params, batch_stats, images, ages, rng):
    logits, updates = module.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                                   mutable=["batch_stats"], rngs={"dropout": rng})
    return losses.adaptive_mean_residue_loss(logits.astype(jnp.float32), ages).mean(), updates

  @functools.partial(jax.jit, donate_argnums=0)
  def train_step(state, images, ages, rng):
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], state["batch_stats"],
                                                                       images, ages, rng)
    step, opt = optimizer.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], step), "batch_stats": updates["batch_stats"],
            "opt": opt}, loss

  box = {"state": state}

  def run_train():
    box["state"], loss = train_step(box["state"], images, ages, jax.random.key(1))
    loss.block_until_ready()

  def train_flops():
    return flops.training_flops(lambda *args: loss_fn(*args)[0], variables["params"], variables["batch_stats"],
                                images, ages, jax.random.key(1))

  return (lambda: forward(variables, images).block_until_ready()), run_train, train_flops


def torch_calls(name, images, ages, dtype="float32", compiled=False):
  """The forward and training-step calls to time, or None without a PyTorch twin of ``name``.

  ``dtype="bfloat16"`` runs both under ``torch.autocast`` on CUDA; on the CPU PyTorch stays float32.
  ``compiled=True`` runs the model through ``torch.compile`` (its default mode: TorchInductor); the first calls
  compile.
  """
  import contextlib

  import torch

  from benchmarks.torch_losses import amr_loss_vectorised
  from benchmarks.torch_models import TORCH_AGE_NETS, TORCH_EFFICIENTNETS, TORCH_RESNETS

  builders = {**TORCH_RESNETS, **TORCH_AGE_NETS, **TORCH_EFFICIENTNETS}
  if name not in builders:
    return None
  device = "cuda" if torch.cuda.is_available() else "cpu"
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  model = builders[name](num_classes=NUM_CLASSES).to(device)
  run_model = torch.compile(model) if compiled else model
  x = torch.from_numpy(np.array(images, np.float32).transpose(0, 3, 1, 2)).contiguous().to(device)
  y = torch.from_numpy(np.array(ages)).to(device)
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
  autocast = (functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)
              if dtype == "bfloat16" and device == "cuda" else contextlib.nullcontext)

  def forward():
    model.eval()
    with torch.no_grad(), autocast():
      run_model(x)
    sync()

  def train():
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast():
      logits = run_model(x)
    amr_loss_vectorised(logits.float(), y).backward()
    optimizer.step()
    sync()

  return forward, train


def main():
  parser = argparse.ArgumentParser(prog="python -m benchmarks.model_speed", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
  parser.add_argument("--models", nargs="+", default=["thin_age_net", "tiny_age_net", "resnet18", "resnet50",
                                                      "efficientnet_lite0"])
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp

  have_torch = False
  if not args.no_torch:
    try:
      import torch

      have_torch = True
      torch_note = f"torch {torch.__version__} ({torch.get_num_threads()} threads, float32)"
    except ImportError:
      torch_note = "torch not installed"
  else:
    torch_note = "torch skipped"
  device = jax.devices()[0]
  print(f"# Images per second, batch {args.batch}, {args.dtype}, median of {args.steps} steps after "
        f"{args.warmup} warm-up; jax {jax.__version__} on {device.device_kind} ({platform.machine()}); {torch_note}")
  print("| model | px | JAX forward | JAX train step | PyTorch forward | PyTorch train step | train JAX/PyTorch |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
  rng = np.random.default_rng(0)
  for size in args.sizes:
    images = jnp.asarray(rng.uniform(0, 1, (args.batch, size, size, 3)).astype(np.float32))
    ages = jnp.asarray(rng.integers(0, NUM_CLASSES, args.batch))
    for name in args.models:
      forward, train, _ = jax_calls(name, images, ages, dtype)
      rates = [args.batch / median_time(forward, args.warmup, args.steps),
               args.batch / median_time(train, args.warmup, args.steps)]
      calls = torch_calls(name, images, ages) if have_torch else None
      if calls is not None:
        rates += [args.batch / median_time(call, args.warmup, args.steps) for call in calls]
        cells = [f"{r:.1f}" for r in rates] + [f"{rates[1] / rates[3]:.2f}x"]
      else:
        cells = [f"{r:.1f}" for r in rates] + ["n/a", "n/a", "n/a"]
      print(f"| `{name}` | {size} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
  main()
