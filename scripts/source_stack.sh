#!/usr/bin/env bash
# The second supported stack, proved end to end: CPython 3.12, the registry's current torch, numpy 2
# and detectron2 built from its upstream source (commit a59f0563, the one sal-detectron2 packages)
# instead of the prebuilt sal-detectron2 wheel. Sets up .venv-source/ the way scripts/env.sh does for
# a user without Python 3.10 (requirements-source.txt, detectron2 built and timed, segkit), runs the
# fast tests and the GPU kit's CPU dry run, then the README's ./scripts/demo.sh with only Python 3.12
# visible (scripts/with_python312_only.sh) in that venv, and checks its AP and predictions.
#
#   ./scripts/source_stack.sh                 # everything (first run: ~4 min of installs + the build)
#   ./scripts/source_stack.sh --build-only    # the venv and detectron2, no tests
#   ./scripts/source_stack.sh --no-tests      # skip pytest, keep the demo
#   ./scripts/source_stack.sh --no-demo       # skip the demo, keep pytest
#
# Environment: PYTHON312 (the interpreter; else the first Python 3.12 scripts/find_python.sh finds),
# DETECTRON2_SRC (a tarball or folder of the detectron2 source; else ../shared/vendor/ beside the
# checkout, else the pinned commit from its repository), SOURCE_VENV (default .venv-source),
# MAX_JOBS (compile jobs; default all cores), FORCE_CUDA=1 + TORCH_CUDA_ARCH_LIST for a CUDA build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SOURCE_VENV:-$ROOT/.venv-source}"
BUILD_ONLY=0; TESTS=1; DEMO=1
for arg in "$@"; do
  case "$arg" in
    --build-only) BUILD_ONLY=1 ;;
    --no-tests) TESTS=0 ;;
    --no-demo) DEMO=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

source "$ROOT/scripts/find_python.sh"
PY312="${PYTHON312:-}"
[ "$(py_version "$PY312" || true)" = 3.12 ] || PY312="$(find_python 3.12)" \
  || { echo "No Python 3.12 found: install one or set PYTHON312=/path/to/python3.12." >&2; exit 1; }
# The set-up is scripts/env.sh's for a Python without sal-detectron2 (what a user without Python 3.10
# gets): the venv, requirements-source.txt, detectron2 built from source, segkit editable, with stamps.
export SEGKIT_VENV="$VENV"
USER_PATH="$PATH"  # the demo below runs without this venv on the PATH, as a user's does
PYTHON="$PY312" source "$ROOT/scripts/env.sh"
python - <<'EOF2'
import sys, numpy, torch, torchvision, cv2, detectron2, detectron2._C  # noqa: F401
print(f"== stack: Python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"numpy {numpy.__version__}, opencv {cv2.__version__}, detectron2 {detectron2.__version__} (source build)")
EOF2
[ "$BUILD_ONLY" = 1 ] && exit 0

if [ "$TESTS" = 1 ]; then
  echo "== fast tests (-m 'not slow') on this stack"
  python -m pytest -q -m "not slow" tests -p no:cacheprovider
  echo "== the GPU kit's CPU dry run (benchmarks/gpu/run.sh --cpu --dry-run) on this stack, the nearest to the GPU machine's"
  python -m pytest -q tests/test_gpu_kit.py -p no:cacheprovider
fi

# The closing check is the README's ./scripts/demo.sh as a user without Python 3.10 runs it: only
# Python 3.12 visible, PYTHON unset (scripts/with_python312_only.sh), so env.sh has to find 3.12 by
# itself and take this venv as it is. It trains, evaluates and predicts in this checkout (data/,
# output/), as the README's command does; the checks above skip everything that trains. A broken
# stack shows as AP under the floor or no instance predicted.
[ "$DEMO" = 1 ] || { echo "== source stack passed (no demo)"; exit 0; }
echo "== ./scripts/demo.sh with only Python 3.12 visible (no 3.10, PYTHON unset), in $VENV"
MARK="$(mktemp)"; LOG="$(mktemp)"; trap 'rm -f "$MARK" "$LOG"' EXIT
start=$(date +%s)
PATH="$USER_PATH" "$ROOT/scripts/with_python312_only.sh" ./scripts/demo.sh 2>&1 | tee "$LOG"
grep -q "^No Python 3.10 found: using Python 3\.12" "$LOG" || { echo "== env.sh did not say it picked Python 3.12" >&2; exit 1; }
echo "== demo took $(( $(date +%s) - start )) s"
# The run the demo just wrote (its output folder is its own business: find what is newer than MARK).
METRICS="$(find output -name metrics_mydata_val.json -newer "$MARK" | head -1)"
RESULTS="$(find output -path '*predictions/results.json' -newer "$MARK" | head -1)"
[ -n "$METRICS" ] && [ -n "$RESULTS" ] || { echo "== the demo wrote no metrics or predictions under output/" >&2; exit 1; }
python -c "import json, sys; m = json.load(open(sys.argv[1])); ap = m['segm']['AP']; print(f'== val segm AP {ap:.1f}, bbox AP {m[\"bbox\"][\"AP\"]:.1f} (floor 5)'); sys.exit(0 if ap > 5 else 1)" "$METRICS"
python -c "import json, sys; r = json.load(open(sys.argv[1])); print('== predicted', len(r), 'instances'); sys.exit(0 if r else 1)" "$RESULTS"
echo "== source stack passed"
