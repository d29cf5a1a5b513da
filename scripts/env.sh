#!/usr/bin/env bash
# Sourced by the other scripts: picks a Python, creates/reuses the venv ($SEGKIT_VENV, default .venv in
# the repo), installs what it needs when that changed, puts the venv first on the PATH, cds to the repo.
# - Python 3.10 ($PYTHON, else the first found: scripts/find_python.sh): requirements.txt with the
#   prebuilt detectron2 (sal-detectron2, a CPython 3.10 build), the main stack, and
#   requirements-deploy.txt (OpenVINO and NNCF for the deployment exports).
# - No Python 3.10 found (or $PYTHON a 3.12/3.11): Python 3.12, else 3.11, with requirements-source.txt
#   and detectron2 built from its upstream source (scripts/build_detectron2.sh; DETECTRON2_SRC, else
#   the tarball in ../shared/vendor/, else the pinned commit cloned): the stack scripts/source_stack.sh
#   proves. Python 3.13 is outside pyproject.toml's requires-python.
# A venv made with another Python version than the one picked is made again, never reused.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SEGKIT_VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
source "$ROOT/scripts/find_python.sh"
HAVE="$(py_version "$VENV/bin/python" || true)"  # the venv's Python version, empty when none works

if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"; PYV="$(py_version "$PY" || true)"
  case "$PYV" in 3.10|3.11|3.12) ;; *)
    echo "PYTHON=$PYTHON is ${PYV:+Python $PYV, }not a working Python 3.10, 3.11 or 3.12 interpreter (what pyproject.toml allows)." >&2; exit 1 ;;
  esac
elif [ "$HAVE" = 3.10 ]; then
  PY="$VENV/bin/python"; PYV=3.10  # the first choice is there already: no search
else
  PY=""
  for PYV in 3.10 3.12 3.11; do PY="$(find_python "$PYV")" && break; done
  if [ -z "$PY" ]; then
    PY313="$(find_python 3.13 || true)"
    echo "No Python 3.10, 3.12 or 3.11 found (tried \$PYTHON, the PATH, pyenv and conda)${PY313:+; \
$PY313 is Python 3.13, which segkit does not support (pyproject.toml: requires-python <3.13)}: \
install Python 3.10 (or 3.12) or run with PYTHON=/path/to/python3.10." >&2
    exit 1
  fi
fi

if [ "$PYV" != 3.10 ]; then
  # The one line that says which Python and which stack (on every run: the choice is made every time).
  FIRST=""; [ "$HAVE" = "$PYV" ] && [ -f "$VENV/.detectron2.sha256" ] || FIRST="; first run ~5-15 min: several GB of torch wheels, then a compile"
  WHY="No Python 3.10 found"; [ -z "${PYTHON:-}" ] || WHY="PYTHON is Python $PYV"
  echo "$WHY: using Python $("$PY" -c 'import platform; print(platform.python_version())') ($PY) with detectron2 \
built from source (scripts/source_stack.sh's stack, requirements-source.txt$FIRST)"
fi
if [ "$HAVE" != "$PYV" ]; then
  if [ -e "$VENV" ]; then
    # Only ever delete a venv (or an empty folder): SEGKIT_VENV may point anywhere.
    [ -f "$VENV/pyvenv.cfg" ] || [ -z "$(ls -A "$VENV")" ] || {
      echo "$VENV is not a virtual environment (no pyvenv.cfg): refusing to replace it; point SEGKIT_VENV elsewhere." >&2; exit 1; }
    echo "Recreating $VENV: it runs Python ${HAVE:-(none that works)}, the set-up picked $PYV"
  fi
  # The interpreter behind PY when PY is itself a venv's (maybe this one's, which is about to go).
  BASE="$("$PY" -c 'import os, sys; print(sys.base_prefix != sys.prefix and os.path.join(sys.base_prefix, "bin", "python%d.%d" % sys.version_info[:2]) or "")')"
  BASE="${BASE:-$PY}"
  echo "Creating $VENV with $BASE"
  rm -rf "$VENV"
  "$BASE" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --quiet --disable-pip-version-check --progress-bar off)

if [ "$PYV" = 3.10 ]; then
  # The stamp covers what gets installed and where from: the pins, the package metadata, the checkout
  # that the editable install points to.
  STAMP="$VENV/.requirements.sha256"
  WANT="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-deploy.txt" "$ROOT/pyproject.toml" <(echo "$ROOT") | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "Installing requirements and segkit into $VENV (first run: a few minutes)"
    "${PIP[@]}" --upgrade pip
    "${PIP[@]}" -r "$ROOT/requirements.txt"
    # OpenVINO + NNCF (export_model.py --format openvino): large, so in a file of their own
    "${PIP[@]}" -r "$ROOT/requirements-deploy.txt"
    # Editable: `import segkit` finds this checkout from anywhere (scripts, benchmarks, tests).
    "${PIP[@]}" --no-deps -e "$ROOT"
    echo "$WANT" > "$STAMP"
  fi
else
  STAMP="$VENV/.requirements.sha256"
  WANT="$(sha256sum < "$ROOT/requirements-source.txt" | cut -d' ' -f1)"
  if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "== installing requirements-source.txt into $VENV (torch with its CUDA libraries: several GB)"
    "${PIP[@]}" -r "$ROOT/requirements-source.txt"
    echo "$WANT" > "$STAMP"
  fi
  # One interpreter start (torch's import is the slow part): torch's version, whether detectron2's
  # extension loads, where `import segkit` comes from.
  mapfile -t STATE < <(cd / && "$VPY" - <<'EOF' 2>/dev/null
import importlib.util, os, torch
print(torch.__version__)
try:
    import detectron2._C  # noqa: F401
    print("ok")
except Exception:
    print("missing")
spec = importlib.util.find_spec("segkit")
print(os.path.dirname(os.path.dirname(spec.origin)) if spec else "")
EOF
  )
  # detectron2 is rebuilt when the patch, torch or the CUDA choice changes, or when its extension
  # does not load.
  D2_STAMP="$VENV/.detectron2.sha256"
  D2_WANT="$(cat "$ROOT/scripts/detectron2-source.patch" <(echo "${STATE[0]:-}") \
    <(echo "${FORCE_CUDA:-0} ${TORCH_CUDA_ARCH_LIST:-}") | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$D2_STAMP" 2>/dev/null)" != "$D2_WANT" ] || [ "${STATE[1]:-}" != ok ]; then
    SRC="${DETECTRON2_SRC:-$ROOT/../shared/vendor/detectron2-a59f0563.tar.gz}"
    [ -e "$SRC" ] || { echo "== no detectron2 source at $SRC: cloning its repository at the pinned commit"; SRC=git; }
    "$ROOT/scripts/build_detectron2.sh" "$VPY" "$SRC" "$VENV/detectron2-build"
    echo "$D2_WANT" > "$D2_STAMP"
  fi
  # Editable, no deps: requirements-source.txt already holds them, and pyproject.toml would ask for
  # sal-detectron2 on CPython 3.10 only.
  [ "${STATE[2]:-}" = "$ROOT" ] || "${PIP[@]}" --no-deps -e "$ROOT"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
