#!/usr/bin/env bash
# The second supported stack, proved end to end: CPython 3.12, the registry's current torch, numpy 2
# and detectron2 built from its upstream source (commit a59f0563, the one sal-detectron2 packages)
# instead of the prebuilt sal-detectron2 wheel. Creates .venv-source/, installs
# requirements-source.txt, builds detectron2 (timed), installs segkit, then runs the fast tests and
# one short training, evaluation and prediction on the generated sample.
#
#   ./scripts/source_stack.sh                 # everything (first run: ~5 min of installs + the build)
#   ./scripts/source_stack.sh --build-only    # the venv and detectron2, no tests
#   ./scripts/source_stack.sh --no-tests      # skip pytest, keep the end-to-end run
#
# Environment: PYTHON312 (the interpreter; else python3.12 on the PATH or pyenv's 3.12.*),
# DETECTRON2_SRC (a tarball or folder of the detectron2 source; else ../shared/vendor/ beside the
# checkout, else the pinned commit from its repository), SOURCE_VENV (default .venv-source),
# MAX_JOBS (compile jobs; default all cores), FORCE_CUDA=1 + TORCH_CUDA_ARCH_LIST for a CUDA build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SOURCE_VENV:-$ROOT/.venv-source}"
BUILD_ONLY=0; TESTS=1
for arg in "$@"; do
  case "$arg" in
    --build-only) BUILD_ONLY=1 ;;
    --no-tests) TESTS=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

is_py312() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' >/dev/null 2>&1; }
find_python312() {
  local c
  for c in "${PYTHON312:-}" "$(command -v python3.12 2>/dev/null || true)"; do is_py312 "$c" && { echo "$c"; return 0; }; done
  local root="${PYENV_ROOT:-$HOME/.pyenv}"
  command -v pyenv >/dev/null 2>&1 && root="$(pyenv root)"
  for c in "$root"/versions/3.12*/bin/python; do is_py312 "$c" && { echo "$c"; return 0; }; done
  return 1
}

if ! is_py312 "$VENV/bin/python"; then
  PY312="$(find_python312)" || { echo "No Python 3.12 found: install one or set PYTHON312=/path/to/python3.12." >&2; exit 1; }
  echo "== creating $VENV with $PY312"
  rm -rf "$VENV"
  "$PY312" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check --progress-bar off)

STAMP="$VENV/.requirements.sha256"
WANT="$(cat "$ROOT/requirements-source.txt" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "== installing requirements-source.txt"
  "${PIP[@]}" -r "$ROOT/requirements-source.txt"
  echo "$WANT" > "$STAMP"
fi

# Rebuilt when the patch, torch or the CUDA choice changes, or when the extension does not load.
D2_STAMP="$VENV/.detectron2.sha256"
D2_WANT="$(cat "$ROOT/scripts/detectron2-source.patch" <("$PY" -c 'import torch; print(torch.__version__)') \
  <(echo "${FORCE_CUDA:-0} ${TORCH_CUDA_ARCH_LIST:-}") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$D2_STAMP" 2>/dev/null)" != "$D2_WANT" ] || ! (cd / && "$PY" -c 'import detectron2._C') 2>/dev/null; then
  SRC="${DETECTRON2_SRC:-$ROOT/../shared/vendor/detectron2-a59f0563.tar.gz}"
  [ -e "$SRC" ] || { echo "== no source at $SRC: cloning detectron2"; SRC=git; }
  "$ROOT/scripts/build_detectron2.sh" "$PY" "$SRC" "$VENV/detectron2-build"
  echo "$D2_WANT" > "$D2_STAMP"
fi
# Editable, no deps: requirements-source.txt already holds them, and pyproject.toml would ask for
# sal-detectron2 on CPython 3.10 only.
(cd / && "$PY" -c 'import segkit, os, sys; sys.exit(0 if os.path.dirname(os.path.dirname(segkit.__file__)) == sys.argv[1] else 1)' "$ROOT") 2>/dev/null \
  || "${PIP[@]}" --no-deps -e "$ROOT"
"$PY" - <<'EOF'
import sys, numpy, torch, torchvision, cv2, detectron2, detectron2._C  # noqa: F401
print(f"== stack: Python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"numpy {numpy.__version__}, opencv {cv2.__version__}, detectron2 {detectron2.__version__} (source build)")
EOF
[ "$BUILD_ONLY" = 1 ] && exit 0

cd "$ROOT"
export PATH="$VENV/bin:$PATH"
if [ "$TESTS" = 1 ]; then
  echo "== fast tests (-m 'not slow') on this stack"
  python -m pytest -q -m "not slow" tests -p no:cacheprovider
  echo "== the GPU kit's CPU dry run (benchmarks/gpu/run.sh --cpu --dry-run) on this stack, the nearest to the GPU machine's"
  python -m pytest -q tests/test_gpu_kit.py -p no:cacheprovider
fi

# One short training, evaluation and prediction, in a scratch folder: the checks above skip
# everything that trains. The default config (Lite0 from its pip ImageNet weights) learns the
# sample's shapes in 150 iterations, so a broken stack shows as AP 0 or no instances predicted.
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
echo "== end to end in $WORK: sample -> COCO -> train Lite0 150 iterations -> evaluate -> predict"
python -m segkit.data.sample --out "$WORK/sample" --num-images 24 --seed 0
python labelme2coco.py "$WORK/sample" --output "$WORK/data" --no-report --quiet
python train_net.py --config-file configs/mask_rcnn_lite0_FPN.yaml --num-gpus 1 \
  DATASETS.DATA_DIR "$WORK/data" SEED 0 SOLVER.MAX_ITER 150 SOLVER.STEPS "(120,)" SOLVER.CHECKPOINT_PERIOD 1000 \
  TEST.EVAL_PERIOD 150 INPUT.AUG.PREVIEW_BATCHES 0 DATALOADER.NUM_WORKERS 0 OUTPUT_DIR "$WORK/out" > "$WORK/train.log" 2>&1 \
  || { tail -40 "$WORK/train.log"; exit 1; }
python -c "import json, sys; m = json.load(open(sys.argv[1])); ap = m['segm']['AP']; print(f'== val segm AP {ap:.1f}, bbox AP {m[\"bbox\"][\"AP\"]:.1f} (floor 5)'); sys.exit(0 if ap > 5 else 1)" \
  "$WORK/out/eval/metrics_mydata_val.json"
python predict.py --weights "$WORK/out/model_final.pth" --input "$WORK/data/images" --output "$WORK/pred" --quiet
python -c "import json, sys; i = json.load(open(sys.argv[1]))['images']; r = json.load(open(sys.argv[2])); print('== predicted', len(r), 'instances on', len(i), 'images'); sys.exit(0 if r and len(i) == 24 else 1)" \
  "$WORK/pred/images.json" "$WORK/pred/results.json"
echo "== source stack passed"
