#!/usr/bin/env bash
# The GPU kit: one command for the lent GPU machine (no registry there; Python 3.12 with torch,
# torchvision and numpy 2 installed). In one call: installs the carried wheels (fetch_wheels.sh made
# them here) into a venv on top of the machine's packages, builds detectron2 from the carried source
# with CUDA for this GPU's architecture on all cores (timed), then runs benchmarks/gpu/rows.py, which
# writes gpu_rows.json to $OUT.
#
#   benchmarks/gpu/run.sh                      # on the GPU machine (run tool, carry benchmarks/gpu/wheels)
#   benchmarks/gpu/run.sh --cpu --dry-run      # here / in CI: same steps, tiny, on the CPU, in the
#                                              # current environment, with the detectron2 it has
#
# Output folder: $OUT (default benchmarks/results/gpu).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CPU=0; DRY=0
for arg in "$@"; do
  case "$arg" in
    --cpu) CPU=1 ;;
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-$ROOT/benchmarks/results/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
ARGS=(--out "$OUT")
[ "$CPU" = 1 ] && ARGS+=(--cpu)
[ "$DRY" = 1 ] && ARGS+=(--dry-run)

if [ "$CPU" = 0 ]; then
  WHEELS="$HERE/wheels"
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "no wheels in $WHEELS: run benchmarks/gpu/fetch_wheels.sh first and carry that folder" >&2; exit 1; }
  VENV="${TMPDIR:-/tmp}/segkit-gpu-venv"
  # On top of the machine's torch: a venv that sees its packages and adds ours.
  "$PY" -m venv --system-site-packages "$VENV"
  PY="$VENV/bin/python"
  "$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps "$WHEELS"/*.whl
  export PATH="$VENV/bin:$PATH"  # ninja
  ARCH="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))')"
  FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$(nproc)" \
    "$ROOT/scripts/build_detectron2.sh" "$PY" "$(ls "$WHEELS"/detectron2-*.tar.gz | head -1)" "$VENV/detectron2-build" \
    2>&1 | tee "$OUT/build.log"
  ARGS+=(--build-seconds "$(cat "$VENV/detectron2-build/build-seconds")")
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps -e "$ROOT"
fi
cd "$ROOT"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" benchmarks/gpu/rows.py "${ARGS[@]}"
