"""Forward+backward time per call of each jitted loss, and of PyTorch AMR losses in the same run.

  python -m benchmarks.loss_speed [--calls 2000] [--rounds 5]

Each figure is the median over rounds x calls timed calls (after warm-up) of
``value_and_grad(mean of the loss)`` with respect to the logits, including
the dispatch of the call and waiting for its result. PyTorch is timed on the
same logits, as ``loss.backward()`` on a leaf tensor, when torch is importable.
All implementations of one shape are timed in alternating blocks of calls.
"""

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from amr_jax import losses

SHAPES = [(64, 70), (256, 101)]
JAX_LOSSES = {
    "cross_entropy_loss": losses.cross_entropy_loss,
    "adaptive_mean_residue_loss": losses.adaptive_mean_residue_loss,
    "mean_residue_loss (k=3)": losses.mean_residue_loss,
    "mean_variance_loss": losses.mean_variance_loss,
    "dldl_loss": losses.dldl_loss,
    "dldl_v2_loss": losses.dldl_v2_loss,
}
REFERENCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference" / "amr_reference_vectors.json"


def interleaved_medians(calls, rounds, calls_per_round):
  """Median seconds per call of each function, timed in alternating blocks.

  On a shared machine the speed drifts over seconds; alternating blocks of
  each implementation (one block of ``calls_per_round`` calls per round)
  exposes all of them to the same drift, so their ratios hold even when the
  absolute figures move. Before each block a pause and untimed calls let the
  previous framework's worker threads go idle (PyTorch's OpenMP threads spin
  for a while after each parallel region and would slow the next block).
  """
  times = {name: [] for name in calls}
  for _ in range(rounds):
    for name, call in calls.items():
      time.sleep(0.3)
      for _ in range(50):
        call()
      for _ in range(calls_per_round):
        start = time.perf_counter()
        call()
        times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def inputs(batch, num_classes, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((batch, num_classes)) * 3).astype(np.float32), rng.integers(0, num_classes, batch)


def jax_call(loss_fn, logits, labels):
  step = jax.jit(jax.value_and_grad(lambda z, y: loss_fn(z, y).mean()))
  z, y = jnp.asarray(logits), jnp.asarray(labels)
  return lambda: jax.block_until_ready(step(z, y))


def torch_call(loss_fn, logits, labels):
  import torch

  z = torch.tensor(logits, requires_grad=True)
  y = torch.tensor(labels)

  def call():
    z.grad = None
    loss_fn(z, y).backward()

  return call


def check_torch_against_reference(torch_losses):
  """A timing of a wrong implementation means nothing: check both against the reference vectors."""
  import torch

  if not REFERENCE.exists():
    return "not checked (../shared/reference absent)"
  for name, case in json.loads(REFERENCE.read_text()).items():
    z = torch.tensor(np.array(case["logits"], np.float32), requires_grad=True)
    y = torch.tensor(case["labels"])
    for fn in torch_losses.values():
      z.grad = None
      loss = fn(z, y)
      loss.backward()
      np.testing.assert_allclose(loss.item(), case["total"], rtol=1e-5, err_msg=name)
      grad = np.array(case["grad_total_wrt_logits"])
      np.testing.assert_allclose(z.grad.numpy(), grad, atol=1e-5 * np.abs(grad).max(), err_msg=name)
  return "both match the reference vectors"


def torch_losses_to_time():
  """The PyTorch AMR losses (none without torch), and a line saying what was found and checked."""
  try:
    import torch

    from benchmarks.torch_losses import amr_loss_reference_style, amr_loss_vectorised
  except ImportError:
    return {}, "torch not installed: PyTorch rows skipped"
  torch_losses = {
      "PyTorch AMR, reference-style": amr_loss_reference_style,
      "PyTorch AMR, vectorised": amr_loss_vectorised,
  }
  return torch_losses, (f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
                        + check_torch_against_reference(torch_losses))


def header(calls, rounds, torch_note):
  return (f"# Loss forward+backward, median microseconds per call ({rounds} x {calls} calls)\n"
          f"# jax {jax.__version__} on {jax.devices()[0].platform}, {platform.processor() or platform.machine()}, "
          f"{jax.local_device_count()} device(s); {torch_note}")


def measure(torch_losses, calls, rounds):
  """``{shape: {implementation: median seconds per call}}`` for every shape in SHAPES."""
  results = {}
  for batch, num_classes in SHAPES:
    logits, labels = inputs(batch, num_classes)
    timed = {name: jax_call(fn, logits, labels) for name, fn in JAX_LOSSES.items()}
    timed.update({name: torch_call(fn, logits, labels) for name, fn in torch_losses.items()})
    results[batch, num_classes] = interleaved_medians(timed, rounds, calls)
  return results


def table(results, torch_losses):
  lines = [f"| loss | {' | '.join(f'{b} x {c}' for b, c in SHAPES)} |", "|---|" + "---:|" * len(SHAPES)]
  amr = "adaptive_mean_residue_loss"
  for name in JAX_LOSSES:
    lines.append(f"| jax `{name}` | " + " | ".join(f"{results[shape][name] * 1e6:.1f}" for shape in SHAPES) + " |")
  for name in torch_losses:
    cells = [f"{results[shape][name] * 1e6:.1f} ({results[shape][name] / results[shape][amr]:.1f}x jax AMR)"
             for shape in SHAPES]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(prog="python -m benchmarks.loss_speed", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--calls", type=int, default=2000, help="timed calls of each implementation per round")
  parser.add_argument("--rounds", type=int, default=5, help="rounds (each alternates all implementations)")
  args = parser.parse_args()

  torch_losses, torch_note = torch_losses_to_time()
  print(header(args.calls, args.rounds, torch_note))
  print(table(measure(torch_losses, args.calls, args.rounds), torch_losses))


if __name__ == "__main__":
  main()
