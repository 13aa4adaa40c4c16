"""How far float32 gradients are from float64 ones, for amr_jax and for the original code.

  python -m benchmarks.gradient_precision

For each case of ../shared/reference/amr_reference_vectors.json, prints the
largest error of a float32 gradient, relative to the largest gradient entry,
against the same loss computed in float64 (amr_jax under jax_enable_x64; the
tests check that against an independent NumPy implementation): amr_jax in
float32, and the original PyTorch code's float32 gradient stored in the file.
"""

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from amr_jax import losses

REFERENCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference" / "amr_reference_vectors.json"


def amr_total(logits, labels):
  return losses.adaptive_mean_residue_loss(logits, labels).mean()


def mv_without_ce(logits, labels):
  terms = losses.mean_variance_terms(logits, labels)
  return (0.2 * terms["mean"] + 0.05 * terms["variance"]).mean()


def relative_error(gradient, truth):
  return float(np.abs(np.asarray(gradient, np.float64) - truth).max() / np.abs(truth).max())


def main(argv=None):
  argparse.ArgumentParser(prog="python -m benchmarks.gradient_precision", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
  cases = json.loads(REFERENCE.read_text())
  print("| case | gradient | amr_jax float32 | original code float32 |")
  print("|---|---|---:|---:|")
  for name, case in cases.items():
    labels = np.array(case["labels"])
    for title, fn, stored in [("AMR total", amr_total, "grad_total_wrt_logits"),
                              ("mean-variance (mean + variance terms)", mv_without_ce, "mv_grad_total")]:
      with jax.enable_x64(True):
        truth = np.asarray(jax.grad(fn)(jnp.asarray(case["logits"], jnp.float64), labels))
      ours = jax.grad(fn)(jnp.asarray(np.array(case["logits"], np.float32)), labels)
      print(f"| {name} | {title} | {relative_error(ours, truth):.1e} | {relative_error(case[stored], truth):.1e} |")


if __name__ == "__main__":
  main()
