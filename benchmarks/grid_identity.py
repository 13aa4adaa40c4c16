"""Whole years before and after label grids: every loss's values and gradients, byte for byte, against a commit.

  python -m benchmarks.grid_identity --before=4d2c613

Checks out ``--before`` into a temporary git worktree, computes in each tree (a subprocess with that tree first on
``sys.path``) the values and gradients of every loss and ``*_terms`` function, the Gaussian target, the label
classes and the expectation, for float32, float64 and bfloat16 logits, start ages 0, 16 and 3.5, eagerly and
jitted, all with the default step of 1; then compares their bytes. Prints the number of cases and those that
differ; exits 1 if any does.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import pickle
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def compute() -> dict:
  """Every case's bytes, in this process's amr_jax."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  jax.config.update("jax_enable_x64", True)
  from amr_jax import losses

  out, rng = {}, np.random.default_rng(0)
  for dtype in (np.float32, np.float64, jnp.bfloat16):
    for start in (0, 16, 3.5):
      logits = jnp.asarray(rng.normal(0, 3, (64, 70)), dtype)
      label_dtype = np.float64 if dtype == np.float64 else np.float32
      labels = jnp.asarray(rng.uniform(start - 2, start + 72, 64), label_dtype)
      sigma = jnp.asarray(rng.uniform(0, 4, 64), label_dtype)
      fns = {
          "cross_entropy": functools.partial(losses.cross_entropy_loss, start_age=start),
          "amr": functools.partial(losses.adaptive_mean_residue_terms, start_age=start),
          "amr_paper": functools.partial(losses.adaptive_mean_residue_terms, start_age=start, residue_form="paper"),
          "mean_residue": functools.partial(losses.mean_residue_terms, start_age=start, k=4),
          "mean_variance": functools.partial(losses.mean_variance_terms, start_age=start),
          "dldl": functools.partial(losses.dldl_terms, start_age=start, sigma=sigma),
          "dldl_v2": functools.partial(losses.dldl_v2_terms, start_age=start, sigma=sigma, kl_reduction="mean"),
      }
      for name, fn in fns.items():
        def total(z, fn=fn):
          value = fn(z, labels)
          return jnp.sum(value["loss"] if isinstance(value, dict) else value)
        for jitted in (False, True):
          values = (jax.jit(fn) if jitted else fn)(logits, labels)
          grad = (jax.jit(jax.grad(total)) if jitted else jax.grad(total))(logits)
          out[(str(dtype), start, name, jitted)] = jax.tree.map(lambda a: np.asarray(a).tobytes(), (values, grad))
      out[(str(dtype), start, "expected_age")] = np.asarray(losses.expected_age(logits, start_age=start)).tobytes()
      out[(str(dtype), start, "target")] = np.asarray(
          losses.gaussian_label_distribution(labels, 70, sigma, start_age=start)).tobytes()
      out[(str(dtype), start, "label_class")] = np.asarray(losses.label_class(labels, 70, start_age=start)).tobytes()
  return out


def _run_in(tree: pathlib.Path, out: pathlib.Path) -> dict:
  """:func:`compute` in a subprocess whose amr_jax is ``tree``'s (this file is loaded by its path)."""
  code = (f"import sys, pickle, importlib.util; sys.path.insert(0, {str(tree)!r}); import amr_jax; "
          f"assert amr_jax.__file__.startswith({str(tree)!r}), amr_jax.__file__; "
          f"spec = importlib.util.spec_from_file_location('grid_identity', {__file__!r}); "
          f"module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
          f"pickle.dump(module.compute(), open({str(out)!r}, 'wb'))")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=tree)
  with open(out, "rb") as file:
    return pickle.load(file)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.grid_identity", description=__doc__.splitlines()[0])
  parser.add_argument("--before", required=True, help="the commit to compare with (e.g. the one before grids)")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as folder:
    folder = pathlib.Path(folder)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(folder / "before"),
                    args.before], check=True)
    try:
      before = _run_in(folder / "before", folder / "before.pkl")
    finally:
      subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder / "before")], check=True)
    after = _run_in(ROOT, folder / "after.pkl")
  differ = [key for key in before if before[key] != after.get(key)]
  print(f"{len(before)} cases (values and gradients), {len(differ)} differ from {args.before}"
        + "".join(f"\n  {key}" for key in differ))
  return 1 if differ else 0


if __name__ == "__main__":
  sys.exit(main())
