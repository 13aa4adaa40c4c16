"""One speed report: losses, training throughput and memory (JAX against PyTorch), and one FG-NET fold.

  python -m benchmarks.speed --out speed.md    # CPU: ThinAgeNet, ResNet-18/50, EfficientNet-Lite0; 112 and 224 px
  python -m benchmarks.speed --quick           # every part at tiny settings, the fold skipped: about a minute
  python -m benchmarks.speed --batch 128 --sizes 224 --dtype bfloat16 --peak_tflops 989 --out speed.md   # GPU

Prints one Markdown report (and writes it to ``--out``):

1. Loss forward+backward: ``loss_speed.py``'s measurement, ``--loss_rounds`` x ``--loss_calls`` calls.
2. Training throughput: ``model_speed.py``'s training step (forward + backward + AdamW, AMR loss, BatchNorm in
   training mode) in JAX and in PyTorch, eager and through ``torch.compile``, on the same batch; images/s = batch / median of ``--steps`` timed steps
   after ``--warmup``. Every (framework, model, size) runs alone in its own process, one after the other, so the
   peak resident memory it reports (``VmHWM``) is its own; its baseline is the same process's resident memory
   after its imports, before the inputs and the model exist. On a GPU the frameworks' peak device memory is
   added, and with ``--peak_tflops`` the fraction of that peak the JAX step reaches (its analytic FLOPs,
   :mod:`amr_jax.models.flops`).
3. FG-NET: one leave-one-subject-out fold of ``configs/fgnet_amr.py`` run by ``run_train.py`` (the recipe's model,
   optimizer and batch; ``--fold_epochs`` epochs at ``--fold_image_size`` px), after building the dataset in a
   separate, separately timed step; its step times are read back from its ``metrics.jsonl`` and projected to the
   82 folds and to the recipe's 100 epochs at 224 px.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import json
import os
import pathlib
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.timing import median_time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ["thin_age_net", "resnet18", "resnet50", "efficientnet_lite0"]
QUICK = {"batch": 4, "sizes": [64], "models": ["thin_age_net"], "warmup": 1, "steps": 2, "loss_calls": 20,
         "loss_rounds": 1, "skip_fold": True}
# JAX, then PyTorch eager and PyTorch with torch.compile: the peers a GPU user would pick.
FRAMEWORKS = ("jax", "torch", "torch_compile")
FOLD_SUBJECT = 1  # LOPO folds are FG-NET subject ids, 1..82
NUM_FOLDS = 82
MIB = 1024  # memory figures are in KiB
CHILD_ENV = dict(os.environ)  # before main() turns off JAX's GPU memory preallocation for this process only


# --------------------------------------------------------------------------
# Section 2's worker: one measurement in a fresh process.

def _read(path: str) -> str:
  try:
    return pathlib.Path(path).read_text()
  except OSError:
    return ""


def resident_kib() -> tuple[int, int]:
  """This process's resident memory now and at its peak, in KiB: VmRSS and VmHWM of /proc/self/status.

  Not ``ru_maxrss``: Linux carries a parent's peak over into a child it starts (fork or vfork, then exec, as
  ``subprocess`` does), so every worker would report at least the size of the process that started it.
  ``ru_maxrss`` (KiB on Linux) is the fallback where /proc is missing.
  """
  fields = dict(line.split(":", 1) for line in _read("/proc/self/status").splitlines() if ":" in line)
  if "VmHWM" in fields and "VmRSS" in fields:
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak, peak


def worker(settings: dict) -> dict:
  """Times one training step of ``settings`` in this process; returns seconds, memory and (JAX) FLOPs.

  ``settings["framework"]``: ``jax``, ``torch`` (eager) or ``torch_compile`` (``torch.compile``'s default mode).
  """
  framework = settings["framework"]
  if framework == "jax":
    import jax
    import jax.numpy as jnp

    jax.devices()  # start the backend before the baseline: its memory is JAX's, not the model's
  else:
    import torch
  from benchmarks import model_speed

  baseline, _ = resident_kib()
  batch, size = settings["batch"], settings["size"]
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 1, (batch, size, size, 3)).astype(np.float32)
  ages = rng.integers(0, model_speed.NUM_CLASSES, batch)
  if framework == "jax":
    dtype = jnp.bfloat16 if settings["dtype"] == "bfloat16" else jnp.float32
    _, train, train_flops = model_speed.jax_calls(settings["model"], jnp.asarray(images), jnp.asarray(ages), dtype)
  else:
    calls = model_speed.torch_calls(settings["model"], images, ages, settings["dtype"],
                                    compiled=framework == "torch_compile")
    if calls is None:
      return {"skipped": "no PyTorch twin"}
    _, train = calls
  result = {"seconds": median_time(train, settings["warmup"], settings["steps"]),
            "baseline_kib": baseline, "peak_kib": resident_kib()[1]}
  if framework == "jax":
    if jax.devices()[0].platform == "gpu":
      result["device_peak_bytes"] = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    if settings["flops"]:  # after the memory figures: tracing the step again must not count in them
      result["flops"] = train_flops()
  elif torch.cuda.is_available():
    result["device_peak_bytes"] = torch.cuda.max_memory_allocated()
  return result


def run_worker(settings: dict) -> dict:
  """``worker(settings)`` in a child process, so that its memory figures are its own."""
  command = [sys.executable, "-m", "benchmarks.speed", "--_worker", json.dumps(settings)]
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=CHILD_ENV)
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  if done.returncode or not lines:
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit status {done.returncode}: {last}"}
  return json.loads(lines[-1])


# --------------------------------------------------------------------------
# The report's sections.

def header(argv) -> str:
  import flax
  import jax
  import jaxlib

  try:
    import torch

    torch_text = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
  except ImportError:
    torch_text = "torch not installed"
  cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
              if line.startswith("model name")), platform.processor() or platform.machine())
  device = jax.devices()[0]
  return "\n".join([
      "# Speed report",
      "",
      f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
      f"- command: `python -m benchmarks.speed {' '.join(argv)}`",
      f"- jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax.__version__}, {torch_text}, "
      f"Python {platform.python_version()}",
      f"- device: {device.device_kind} ({device.platform}, {jax.device_count()} device(s)); "
      f"CPU: {cpu}, {os.cpu_count()} cores",
  ])


def loss_section(args) -> str:
  from benchmarks import loss_speed

  torch_losses, torch_note = loss_speed.torch_losses_to_time()
  results = loss_speed.measure(torch_losses, args.loss_calls, args.loss_rounds)
  return "\n".join(["## 1. Loss forward+backward", "",
                    "`benchmarks/loss_speed.py`'s measurement (median microseconds per call, JAX and PyTorch "
                    "alternating in blocks):", "",
                    *("- " + line.removeprefix("# ") for line in
                      loss_speed.header(args.loss_calls, args.loss_rounds, torch_note).splitlines()), "",
                    loss_speed.table(results, torch_losses)])


def measure_training(args) -> dict:
  """``{(model, size): {"jax": result, "torch": result}}``, one worker process at a time."""
  have_torch = importlib.util.find_spec("torch") is not None
  results = {}
  for size in args.sizes:
    for model in args.models:
      row = {}
      for framework in FRAMEWORKS if have_torch else ("jax",):
        print(f"speed.py: {framework} {model} {size} px ...", file=sys.stderr, flush=True)
        row[framework] = run_worker({"framework": framework, "model": model, "size": size, "batch": args.batch,
                                     "dtype": args.dtype, "warmup": args.warmup, "steps": args.steps,
                                     "flops": args.peak_tflops is not None})
        rate, flops = _rate(row[framework], args.batch), row[framework].get("flops")
        outcome = f"{rate:.1f} img/s" if rate else row[framework].get("error", row[framework].get("skipped"))
        if rate and flops:
          outcome += f", {flops / row[framework]['seconds'] / 1e12:.1f} TFLOP/s (analytic)"
        print(f"speed.py: {framework} {model} {size} px: {outcome}", file=sys.stderr, flush=True)
      results[model, size] = row
  return results


def _rate(result: dict | None, batch: int) -> float | None:
  return batch / result["seconds"] if result and "seconds" in result else None


def _memory(result: dict | None) -> str:
  if not result or "peak_kib" not in result:
    return "n/a"
  return f"{result['peak_kib'] / MIB:,.0f} MiB (+{(result['peak_kib'] - result['baseline_kib']) / MIB:,.0f})"


def _cell(result: dict | None, rate: float | None) -> str:
  if result is None:
    return "n/a"
  if "error" in result:
    return "failed"
  if "skipped" in result:
    return "n/a"
  return f"{rate:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
  return f"{a / b:.2f}x" if a and b else "n/a"


def training_section(args, results: dict, on_gpu: bool) -> str:
  columns = ["model", "px", "JAX img/s", "PyTorch eager img/s", "PyTorch compiled img/s", "JAX/eager",
             "JAX/compiled", "JAX peak RSS (over baseline)", "PyTorch eager peak RSS (over baseline)"]
  if on_gpu:
    columns += ["JAX peak GPU memory", "PyTorch eager peak GPU memory", "PyTorch compiled peak GPU memory"]
  if args.peak_tflops is not None:
    columns += ["JAX TFLOP/s, analytic", f"% of {args.peak_tflops:g}"]
  lines = ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
  notes = []
  for (model, size), row in results.items():
    jax_result, eager, compiled = row.get("jax"), row.get("torch"), row.get("torch_compile")
    jax_rate, eager_rate, compiled_rate = (_rate(r, args.batch) for r in (jax_result, eager, compiled))
    cells = [f"`{model}`", str(size), _cell(jax_result, jax_rate), _cell(eager, eager_rate),
             _cell(compiled, compiled_rate), _ratio(jax_rate, eager_rate), _ratio(jax_rate, compiled_rate),
             _memory(jax_result), _memory(eager)]
    if on_gpu:
      cells += [_gib((r or {}).get("device_peak_bytes")) for r in (jax_result, eager, compiled)]
    if args.peak_tflops is not None:
      flops = (jax_result or {}).get("flops")
      tflops = flops / jax_result["seconds"] / 1e12 if flops and jax_rate else None
      cells += [f"{tflops:.1f}", f"{100 * tflops / args.peak_tflops:.1f}%"] if tflops else ["n/a", "n/a"]
    lines.append("| " + " | ".join(cells) + " |")
    notes += [f"- {framework} `{model}` {size} px failed: {r['error']}" for framework, r in row.items()
              if "error" in r]
  torch_dtype = "bfloat16 autocast" if args.dtype == "bfloat16" and on_gpu else "float32"
  text = [
      "## 2. Training throughput and memory", "",
      f"Train step (forward + backward + AdamW lr 1e-3 wd 0.01, AMR loss over 70 classes, BatchNorm in training "
      f"mode), batch {args.batch}, JAX {args.dtype}, PyTorch {torch_dtype}, eager and through `torch.compile` "
      f"(default mode); images/s = batch / median of {args.steps} steps after {args.warmup} warm-up (which include "
      "compilation). Each cell ran alone in its own process, one at a time. Peak RSS: the process's peak resident "
      "memory (`VmHWM`) at the end; over baseline: minus its resident memory (`VmRSS`) after its imports (JAX: and "
      "its backend start), before the inputs, model and optimizer existed.", ""]
  if args.peak_tflops is not None:
    text += ["TFLOP/s: the step's analytic FLOPs (`amr_jax.models.flops.training_flops`: 2 per multiply-accumulate of "
             "every convolution and matrix product, forward and backward; element-wise work not counted) / its "
             "median step time. XLA's `cost_analysis()` of the compiled GPU step does not count cuDNN's "
             "convolutions.", ""]
  return "\n".join(text + lines + ([""] + notes if notes else []))


def _gib(value) -> str:
  return "n/a" if value is None else f"{value / 2**30:.2f} GiB"


# --------------------------------------------------------------------------
# Section 3: one FG-NET fold.

def fold_milestones(epochs: int) -> tuple:
  """The recipe's learning-rate drops scaled to ``epochs``, as benchmarks/fgnet_losses.py scales them."""
  from benchmarks import fgnet_losses

  recipe = importlib.import_module("configs.fgnet_amr").get_config()
  return fgnet_losses.scaled_milestones(recipe.milestone_epochs, recipe.num_epochs, epochs)


def build_fgnet(manual_dir: pathlib.Path, data_dir: str) -> tuple[float, bool]:
  """Seconds to build (or find built) FG-NET in ``data_dir``, and whether it was built before."""
  from amr_jax.data import tfds_builders

  built_before = (pathlib.Path(data_dir) / "fgnet").is_dir()
  start = time.perf_counter()
  with contextlib.redirect_stdout(sys.stderr):  # TFDS prints its progress; stdout carries the report only
    tfds_builders.build("fgnet", manual_dir=manual_dir, data_dir=data_dir)
  return time.perf_counter() - start, built_before


def run_fold(args, manual_dir: pathlib.Path, data_dir: str, workdir: pathlib.Path) -> dict:
  """Runs one LOPO fold with run_train.py; its wall time, log figures and step times from metrics.jsonl."""
  from amr_jax.training import metric_writers

  command = [sys.executable, "run_train.py", f"--config=configs/fgnet_amr.py:{FOLD_SUBJECT}", f"--workdir={workdir}",
             f"--config.data.manual_dir={manual_dir}", f"--config.data.data_dir={data_dir}",
             f"--config.num_epochs={args.fold_epochs}", f"--config.image_size={args.fold_image_size}",
             "--config.data.crop=aligned", f"--config.milestone_epochs={fold_milestones(args.fold_epochs)!r}",
             # A record a step, for step times; each costs a JSON line and a TensorBoard flush, no extra sync
             # (the loop fetches every step's metrics anyway).
             "--config.log_every_steps=1"]
  print(f"speed.py: FG-NET fold: {' '.join(command)}", file=sys.stderr, flush=True)
  start_time = time.time()
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=CHILD_ENV)
  end_time = time.time()
  fold = {"command": command, "wall": end_time - start_time, "returncode": done.returncode,
          "log_tail": "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])}
  if done.returncode:
    return fold
  sizes = re.search(r"(\d+) training, \d+ validation, (\d+) test images; (\d+) steps of (\d+) \((\d+) per epoch\)",
                    done.stdout)
  if not sizes:
    return fold
  fold.update(zip(("train_images", "test_images", "steps", "batch", "steps_per_epoch"), map(int, sizes.groups())))
  decode = re.search(r"decoded at \d+ px in ([\d.]+) s", done.stdout)
  mae = re.search(r"test MAE ([\d.]+)", done.stdout)
  fold["decode"] = float(decode.group(1)) if decode else None
  fold["test_mae"] = float(mae.group(1)) if mae else None
  records = sorted((r for r in metric_writers.read_jsonl(workdir / "metrics.jsonl") if "train/loss" in r),
                   key=lambda r: r["step"])
  if len(records) >= 2:
    # The first record comes after compilation; each later one after its step's metrics were fetched.
    fold["step_seconds"] = statistics.median((b["time"] - a["time"]) / (b["step"] - a["step"])
                                             for a, b in zip(records, records[1:]))
    fold["until_first_step"] = records[0]["time"] - start_time
    fold["later_steps"] = records[-1]["time"] - records[0]["time"]
    fold["after_last_step"] = end_time - records[-1]["time"]
  return fold


def fold_section(args, training: dict) -> str:
  title = "## 3. FG-NET leave-one-subject-out fold"
  manual_dir = pathlib.Path(args.fgnet_manual_dir).resolve()
  if args.skip_fold:
    return f"{title}\n\nSkipped (`--skip_fold` or `--quick`)."
  if not manual_dir.is_dir():
    return f"{title}\n\nSkipped: `{manual_dir}` does not exist (`--fgnet_manual_dir`)."
  with tempfile.TemporaryDirectory(prefix="speed_fold_") as tmp:
    data_dir = args.data_dir or os.path.join(tmp, "tfds")
    print(f"speed.py: building FG-NET into {data_dir} ...", file=sys.stderr, flush=True)
    build_seconds, built_before = build_fgnet(manual_dir, data_dir)
    fold = run_fold(args, manual_dir, data_dir, pathlib.Path(tmp) / "workdir")
  command = " ".join(fold["command"][1:]).replace(tmp, "$TMP")
  build = (f"found already built in `{data_dir}` ({build_seconds:.1f} s to check)" if built_before else
           f"built from `{manual_dir}` into {'`' + data_dir + '`' if args.data_dir else 'a temporary directory'} "
           f"in {build_seconds:.1f} s")
  lines = [title, "", f"Measured: `python {command}` (FG-NET subject {FOLD_SUBJECT} held out; the recipe's model, "
           "optimizer and batch; `log_every_steps=1` only to log every step's time). The dataset was " + build +
           " beforehand, in a separate step: the fold's time does not include the one-off TFDS build.", ""]
  if fold["returncode"]:
    return "\n".join(lines + [f"The fold failed (exit status {fold['returncode']}) after {fold['wall']:.0f} s:", "",
                              "```", fold["log_tail"], "```"])
  lines += [f"- fold wall time (process start to exit): {fold['wall']:.1f} s"]
  if "step_seconds" in fold:
    lines += [f"  - start-up until step 1 done (imports, decode, model init, compilation, step 1): "
              f"{fold['until_first_step']:.1f} s; decode alone: {fold['decode']} s",
              f"  - steps 2..{fold.get('steps', '?')}: {fold['later_steps']:.1f} s; after the last step "
              f"(checkpoint, test evaluation, reports, exit): {fold['after_last_step']:.1f} s",
              f"- training throughput (median step time after step 1, from metrics.jsonl): "
              f"{fold['step_seconds']:.2f} s per step of {fold.get('batch', '?')} = "
              f"{fold['batch'] / fold['step_seconds']:.1f} img/s at {args.fold_image_size} px"]
  lines += [f"- {fold.get('train_images', '?')} training images, {fold.get('steps_per_epoch', '?')} steps per epoch; "
            f"test MAE after {args.fold_epochs} epoch(s): {fold['test_mae']}", ""]
  return "\n".join(lines + projections(args, fold, training))


def projections(args, fold: dict, training: dict) -> list[str]:
  from amr_jax.training import metric_writers

  duration = metric_writers.format_duration
  recipe = importlib.import_module("configs.fgnet_amr").get_config()
  lines = ["Projected (not measured):", "",
           f"- (a) {NUM_FOLDS} folds x this fold's wall time = {duration(NUM_FOLDS * fold['wall'])}, at "
           f"{args.fold_epochs} epoch(s) and {args.fold_image_size} px (a run over all folds pays start-up, decode "
           "and compilation once, so somewhat less)"]
  if "step_seconds" not in fold:
    return lines + ["- (b) n/a: no step times or epoch size in the fold's logs"]
  images = fold["steps_per_epoch"] * fold["batch"]
  fold_rate = fold["batch"] / fold["step_seconds"]
  rates = [(f"this fold's {fold_rate:.1f} img/s at {args.fold_image_size} px x ({args.fold_image_size}/"
            f"{recipe.image_size})^2 (assumes the cost grows with the pixel count)",
            fold_rate * (args.fold_image_size / recipe.image_size) ** 2)]
  for (model, size), row in training.items():
    rate = _rate(row.get("jax"), args.batch)
    if size == recipe.image_size and rate:
      rates.append((f"section 2's JAX `{model}`, {size} px, batch {args.batch}: {rate:.1f} img/s", rate))
  lines += [f"- (b) the recipe (`{recipe.model}`, {recipe.num_epochs} epochs at {recipe.image_size} px, batch "
            f"{recipe.batch_size}), training steps only = {NUM_FOLDS} folds x {recipe.num_epochs} epochs x {images} "
            "images an epoch / img/s, with img/s from:"]
  lines += [f"  - {text}: {duration(NUM_FOLDS * recipe.num_epochs * images / rate)}" for text, rate in rates]
  return lines


# --------------------------------------------------------------------------

def parse_args(argv) -> argparse.Namespace:
  from amr_jax.models import MODELS

  parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", help="also write the report to this file")
  parser.add_argument("--quick", action="store_true", help=f"tiny settings, no fold: {QUICK} (explicit flags win)")
  parser.add_argument("--loss_calls", type=int, default=2000, help="timed calls of each loss per round")
  parser.add_argument("--loss_rounds", type=int, default=5)
  parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=sorted(MODELS), metavar="MODEL",
                      help=f"from {', '.join(sorted(MODELS))}")
  parser.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                      help="JAX's computation dtype; PyTorch uses bfloat16 autocast on CUDA only")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--peak_tflops", type=float, help="the device's peak TFLOP/s: adds the JAX step's fraction")
  parser.add_argument("--fgnet_manual_dir", default=str(ROOT.parent / "shared" / "data" / "fgnet"))
  parser.add_argument("--data_dir", default="", help="where TFDS builds FG-NET (default: a temporary directory)")
  parser.add_argument("--fold_epochs", type=int, default=1)
  parser.add_argument("--fold_image_size", type=int, default=112)
  parser.add_argument("--skip_fold", action="store_true")
  args = parser.parse_args(argv)
  if args.quick:
    parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
  for name in ("batch", "warmup", "steps", "loss_calls", "loss_rounds", "fold_epochs"):
    if getattr(args, name) < (0 if name == "warmup" else 1):
      parser.error(f"--{name} must be {'>= 0' if name == 'warmup' else 'positive'}; got {getattr(args, name)}")
  if min(args.sizes + [args.fold_image_size]) < 64:
    parser.error("--sizes and --fold_image_size must be at least 64 px (the models pool five times)")
  return args


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ["--_worker"]:
    print(json.dumps(worker(json.loads(argv[1]))), flush=True)
    return
  # This process times the losses with JAX too: on a GPU it must not take 75% of the memory its children need.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  args = parse_args(argv)
  import jax

  sections = [header(argv), loss_section(args)]
  training = measure_training(args)
  sections += [training_section(args, training, on_gpu=jax.devices()[0].platform == "gpu"),
               fold_section(args, training)]
  report = "\n\n".join(sections) + "\n"
  print(report, end="")
  if args.out:
    pathlib.Path(args.out).write_text(report)


if __name__ == "__main__":
  main()
