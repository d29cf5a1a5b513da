#!/usr/bin/env bash
# Sourced by the other scripts: finds a Python 3.10, creates/reuses .venv in the repo and installs
# requirements.txt and segkit itself (editable) when they changed. sal-detectron2 (the prebuilt detectron2) is CPython 3.10 only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

is_py310() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' >/dev/null 2>&1; }

find_python310() {
  local c
  if [ -n "${PYTHON:-}" ]; then
    is_py310 "$PYTHON" && { echo "$PYTHON"; return 0; }
    echo "PYTHON=$PYTHON is not a working Python 3.10 interpreter." >&2; return 1
  fi
  for c in python3.10 python3 python; do
    c="$(command -v "$c" 2>/dev/null || true)"
    is_py310 "$c" && { echo "$c"; return 0; }
  done
  # pyenv installs versions without putting them on the PATH unless one is selected.
  local roots=()
  command -v pyenv >/dev/null 2>&1 && roots+=("$(pyenv root)")
  roots+=("${PYENV_ROOT:-$HOME/.pyenv}")
  for r in "${roots[@]}"; do
    for c in "$r"/versions/3.10*/bin/python; do is_py310 "$c" && { echo "$c"; return 0; }; done
  done
  for r in "${CONDA_PREFIX:-}" "$HOME"/miniconda3 "$HOME"/anaconda3 "$HOME"/miniforge3; do
    [ -n "$r" ] || continue
    for c in "$r"/bin/python "$r"/envs/*/bin/python; do is_py310 "$c" && { echo "$c"; return 0; }; done
  done
  for c in /usr/bin/python3.10 /usr/local/bin/python3.10 /opt/homebrew/bin/python3.10; do
    is_py310 "$c" && { echo "$c"; return 0; }
  done
  return 1
}

if ! is_py310 "$VENV/bin/python"; then
  PY310="$(find_python310)" || {
    echo "No Python 3.10 found (tried \$PYTHON, python3.10 on the PATH, pyenv and conda): install Python 3.10 or run with PYTHON=/path/to/python3.10." >&2
    exit 1
  }
  echo "Creating .venv with $PY310"
  rm -rf "$VENV"
  "$PY310" -m venv "$VENV"
fi

# The stamp covers what gets installed and where from: the pins, the package metadata, the checkout
# that the editable install points to.
STAMP="$VENV/.requirements.sha256"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/pyproject.toml" <(echo "$ROOT") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "Installing requirements and segkit into .venv (first run: a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements.txt"
  # Editable: `import segkit` finds this checkout from anywhere (scripts, benchmarks, tests).
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$ROOT"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
