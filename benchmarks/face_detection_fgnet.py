"""MTCNN (amr_jax.faces.mtcnn) on all FG-NET photographs: detection, eye error, agreement and time against the mtcnn package.

  python -m benchmarks.face_detection_fgnet --manual_dir=../shared/data/fgnet --out=benchmarks/results/face_detection_fgnet.md

For each photograph, both pipelines (ours, and the ``mtcnn`` package's own
TensorFlow pipeline; TensorFlow is a test-only dependency) detect faces. The
face kept is :func:`amr_jax.faces.mtcnn.main_face`'s (what detected-eye crops and
``run_predict.py`` use). Its eye error is the mean distance of its two eye
landmarks from FG-NET's annotated pupils (landmarks 31 and 36), as a fraction
of the annotated inter-ocular distance.

Time: a first pass over every photograph compiles (ours) and warms both; the
second pass times each photograph once with each pipeline, one after the
other, so both see the same machine load. Reported: the median and the mean
time per photograph and their ratio. The networks use every core XLA or
TensorFlow gives them.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402

from amr_jax.data import fgnet
from amr_jax.faces import face_crop, mtcnn


def _eye_error(face: mtcnn.Face, landmarks: np.ndarray) -> float:
  annotated = landmarks[[face_crop.LEFT_PUPIL, face_crop.RIGHT_PUPIL]].astype(np.float64)
  interocular = np.linalg.norm(annotated[1] - annotated[0])
  return float(np.linalg.norm(face.eyes - annotated, axis=1).mean() / interocular)


def _timed(call):
  start = time.perf_counter()
  result = call()
  return result, time.perf_counter() - start


def run(manual_dir: str, limit: int | None = None) -> dict:
  import mtcnn  # pylint: disable=import-outside-toplevel  # the reference; TensorFlow

  images = fgnet.index_images(fgnet.find_root(manual_dir))[:limit]
  ours, reference = mtcnn.Detector(), mtcnn.MTCNN()
  photographs = [np.asarray(PIL.Image.open(image.image_path).convert("RGB")) for image in images]
  start = time.perf_counter()
  for index, photograph in enumerate(photographs):  # warm-up: compiles every bucket ours needs
    ours.detect(photograph)
    reference.detect_faces(photograph, box_format="xyxy", output_type="numpy")
    if (index + 1) % 100 == 0:
      print(f"warm-up {index + 1}/{len(photographs)} ({time.perf_counter() - start:.0f} s)", flush=True)
  rows = []
  for index, (image, photograph) in enumerate(zip(images, photographs)):
    found, our_time = _timed(lambda: ours.detect(photograph))
    expected, reference_time = _timed(
        lambda: reference.detect_faces(photograph, box_format="xyxy", output_type="numpy"))
    chosen = mtcnn.main_face(found, photograph.shape[0], photograph.shape[1])
    landmarks = fgnet.read_landmarks(image.landmarks_path)
    same = len(found) == len(expected) and all(
        np.abs(face.box - row[1:5]).max() <= 0.5 and np.abs(face.landmarks - np.stack([row[6:11], row[11:16]], -1)).max()
        <= 0.5 for face, row in zip(found, expected))
    rows.append({"file": image.file_name, "faces": len(found), "same_as_package": same,
                 "eye_error": None if chosen is None else _eye_error(chosen, landmarks),
                 "time": our_time, "reference_time": reference_time})
    if (index + 1) % 100 == 0:
      print(f"timed {index + 1}/{len(photographs)} ({time.perf_counter() - start:.0f} s)", flush=True)
  return {"rows": rows, "compiled": (mtcnn._pnet._cache_size(),  # pylint: disable=protected-access
                                      mtcnn._refine._cache_size())}  # pylint: disable=protected-access


def report(result: dict, command: str) -> str:
  rows = result["rows"]
  count = len(rows)
  detected = [r for r in rows if r["faces"] > 0]
  errors = np.array([r["eye_error"] for r in detected])
  times = [r["time"] for r in rows]
  reference_times = [r["reference_time"] for r in rows]
  worst = sorted(detected, key=lambda r: -r["eye_error"])[:10]
  lines = [
      "# MTCNN on FG-NET: detection, eye error, agreement with the mtcnn package, time",
      "",
      f"`{command}`",
      "",
      f"Measured on {platform.machine()} with {os.cpu_count()} CPU cores, Python {platform.python_version()}.",
      "",
      "| photographs | with a face | with several faces | with none | same faces as the mtcnn package (0.5 px) |",
      "|---|---|---|---|---|",
      f"| {count} | {len(detected)} ({100 * len(detected) / count:.1f}%) | {sum(r['faces'] > 1 for r in rows)} "
      f"| {count - len(detected)} | {sum(r['same_as_package'] for r in rows)} |",
      "",
      "Eye error of the kept face (`amr_jax.faces.mtcnn.main_face`): the mean distance of its two eye landmarks from the "
      "annotated pupils (landmarks 31, 36), over the annotated inter-ocular distance.",
      "",
      "| median | 90th percentile | mean | max | below 0.1 | below 0.25 |",
      "|---|---|---|---|---|---|",
      f"| {np.median(errors):.3f} | {np.percentile(errors, 90):.3f} | {errors.mean():.3f} | {errors.max():.3f} "
      f"| {100 * np.mean(errors < 0.1):.1f}% | {100 * np.mean(errors < 0.25):.1f}% |",
      "",
      "The 10 largest errors:",
      "",
      "| file | eye error | faces found |",
      "|---|---|---|",
      *(f"| {r['file']} | {r['eye_error']:.3f} | {r['faces']} |" for r in worst),
      "",
      "Photographs with no face: " + (", ".join(r["file"] for r in rows if r["faces"] == 0) or "none") + ".",
      "",
      "Time per photograph (second pass; each photograph once with each pipeline, back to back):",
      "",
      "| | median (ms) | mean (ms) |",
      "|---|---|---|",
      f"| amr_jax.faces (JAX, jitted) | {1000 * statistics.median(times):.1f} | {1000 * statistics.fmean(times):.1f} |",
      f"| mtcnn package (TensorFlow) | {1000 * statistics.median(reference_times):.1f} "
      f"| {1000 * statistics.fmean(reference_times):.1f} |",
      f"| ratio (ours / package) | {statistics.median(times) / statistics.median(reference_times):.2f} "
      f"| {statistics.fmean(times) / statistics.fmean(reference_times):.2f} |",
      "",
      f"Compiled shapes after all {count} photographs: P-Net {result['compiled'][0]}, "
      f"R-Net and O-Net crops {result['compiled'][1]}.",
      "",
  ]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks.face_detection_fgnet",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--manual_dir", required=True, help="the folder holding FGNET/ (images/, points/)")
  parser.add_argument("--out", default=None, help="write the Markdown report here (default: print it)")
  parser.add_argument("--limit", type=int, default=None, help="only the first N photographs (a quick look)")
  args = parser.parse_args(argv)
  command = "python -m benchmarks.face_detection_fgnet " + " ".join(
      a for a in (argv if argv is not None else sys.argv[1:]))
  text = report(run(args.manual_dir, args.limit), command)
  if args.out:
    pathlib.Path(args.out).write_text(text)
  print(text)


if __name__ == "__main__":
  main()
