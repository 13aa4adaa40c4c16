"""Time and peak memory of finding and cropping a face as photographs grow, with and without ``max_side``.

  python -m benchmarks.large_photographs --out=benchmarks/results/large_photographs_cpu.md

Each photograph is scikit-image's astronaut scaled (bicubic) to a square of the given side and saved as a JPEG
(quality 90). A fresh Python process per case does what ``run_predict.py`` does per photograph before the model:
read it (:func:`amr_jax.photographs.read_photograph`), find its faces (:class:`amr_jax.faces.mtcnn.Detector`, with the
case's ``max_side``) and crop the main face on its eyes at 112 px. Reported: the first photograph's time (it
compiles), the median of three more, the process's peak resident memory (``ru_maxrss``) and how much of it the
photograph added (peak less the resident memory before the first read, with JAX and the networks loaded). The
``full size`` cases search the photograph as it is (``max_side=None``), as before; they stop at the side given
by ``--full_size_up_to`` (an 8000 px one took 5 minutes and 6.9 GB).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def worker(path: str, max_side: int | None) -> dict:
  import numpy as np  # pylint: disable=import-outside-toplevel

  from amr_jax import photographs
  from amr_jax.faces import face_crop, mtcnn

  detector = mtcnn.Detector(max_side=max_side)
  before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

  def once() -> tuple[float, int]:
    start = time.perf_counter()
    image = photographs.read_photograph(pathlib.Path(path))
    found = detector.detect(image)
    face = mtcnn.main_face(found, *image.shape[:2])
    if face is not None:
      np.asarray(face_crop.eyes_face_crop(image, face.eyes, 112))
    return time.perf_counter() - start, len(found)

  first, count = once()
  warm = [once()[0] for _ in range(3)]
  peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return {"first_s": first, "median_s": statistics.median(warm), "faces": count,
          "peak_mb": peak_kb / 1024, "added_mb": (peak_kb - before_kb) / 1024}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.large_photographs", description=__doc__.split("\n\n")[0])
  parser.add_argument("--sides", default="1000,2000,4000,8000,12000", help="Photograph sides (px), comma-separated.")
  parser.add_argument("--max_side", type=int, default=1536, help="The detector's max_side for the bounded cases.")
  parser.add_argument("--full_size_up_to", type=int, default=4000, help="Largest side also run with max_side=None.")
  parser.add_argument("--timeout", type=float, default=900, help="Seconds per case before it is reported as stopped.")
  parser.add_argument("--out", default="", help="Markdown report (printed when empty).")
  parser.add_argument("--_worker", nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args._worker:  # pylint: disable=protected-access
    path, max_side = args._worker  # pylint: disable=protected-access
    print(json.dumps(worker(path, None if max_side == "none" else int(max_side))), flush=True)
    return

  import PIL.Image  # pylint: disable=import-outside-toplevel
  import skimage.data  # pylint: disable=import-outside-toplevel

  rows = []
  with tempfile.TemporaryDirectory() as folder:
    for side in (int(s) for s in args.sides.split(",")):
      path = pathlib.Path(folder) / f"astronaut_{side}.jpg"
      PIL.Image.fromarray(skimage.data.astronaut()).resize((side, side), PIL.Image.Resampling.BICUBIC).save(
          path, quality=90)
      cases = [args.max_side] + ([None] if side <= args.full_size_up_to and side > args.max_side else [])
      for max_side in cases:
        label = f"{side} px, {'full size' if max_side is None else f'max_side {max_side}'}"
        print(f"{label} ...", file=sys.stderr, flush=True)
        command = [sys.executable, "-m", "benchmarks.large_photographs", "--_worker", str(path),
                   "none" if max_side is None else str(max_side)]
        try:
          result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout, check=True)
          row = json.loads(result.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
          row = {"stopped": f"stopped after {args.timeout:.0f} s"}
        except subprocess.CalledProcessError as error:
          row = {"stopped": f"failed: {error.stderr.strip().splitlines()[-1] if error.stderr.strip() else error}"}
        print(f"  {row}", file=sys.stderr, flush=True)
        rows.append((side, max_side, row))
      path.unlink()
  lines = [
      "# Finding and cropping a face in large photographs (CPU)",
      "",
      f"`python -m benchmarks.large_photographs {' '.join(sys.argv[1:] if argv is None else argv)}`",
      "",
      f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
      "a fresh process per row. Times: reading the JPEG, the cascade, the eye-aligned 112 px crop.",
      "",
      "| photograph | detection | faces | first (s, compiles) | median of 3 (s) | peak memory (MB) | added by the photograph (MB) |",
      "|---|---|---|---|---|---|---|"]
  for side, max_side, row in rows:
    how = "full size" if max_side is None else ("as is (under max_side)" if side <= max_side else
                                                f"copy at {max_side} px")
    if "stopped" in row:
      lines.append(f"| {side}x{side} | {how} | | {row['stopped']} | | | |")
    else:
      lines.append(f"| {side}x{side} | {how} | {row['faces']} | {row['first_s']:.1f} | {row['median_s']:.2f} | "
                   f"{row['peak_mb']:.0f} | {row['added_mb']:.0f} |")
  text = "\n".join(lines) + "\n"
  if args.out:
    pathlib.Path(args.out).write_text(text)
  print(text)


if __name__ == "__main__":
  main()
