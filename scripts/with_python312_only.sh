#!/usr/bin/env bash
# Runs a command the way a machine without Python 3.10 would see it, to check that the README's
# commands set up and run there (scripts/source_stack.sh runs ./scripts/demo.sh so):
#
#   scripts/with_python312_only.sh ./scripts/demo.sh
#
# PYTHON, PYENV_VERSION and CONDA_PREFIX unset; PYENV_ROOT a folder of links to pyenv's 3.12
# versions only (kept in XDG_CACHE_HOME: a venv made through it keeps working); the PATH without
# pyenv's folders and without any folder holding a python3.10 or a python3/python that is 3.10; HOME
# a scratch folder (no ~/.pyenv, no conda there; XDG_CACHE_HOME stays the real cache, so pip and
# model downloads are reused). Stops before running anything if scripts/find_python.sh can still
# find a Python 3.10, or cannot find a 3.12. Other Pythons stay (a system python3.11 on the PATH:
# the set-up prefers 3.12). Everything else (SEGKIT_VENV, DETECTRON2_SRC, MAX_JOBS, ...) passes through.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/find_python.sh"

REAL_PYENV_ROOT="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-$HOME/.cache}"
SCRATCH="$(mktemp -d)"; trap 'rm -rf "$SCRATCH"' EXIT
# The stand-in pyenv root stays (links only): a venv made through it runs from its path.
FAKE_PYENV="$XDG_CACHE_HOME/segkit/python312-only-pyenv"
rm -rf "$FAKE_PYENV"; mkdir -p "$FAKE_PYENV/versions" "$SCRATCH/home"
for d in "$REAL_PYENV_ROOT"/versions/3.12*; do
  [ "$(py_version "$d/bin/python" || true)" = 3.12 ] && ln -s "$d" "$FAKE_PYENV/versions/"
done

path=""
IFS=: read -ra dirs <<< "$PATH"
for d in "${dirs[@]}"; do
  case "$d" in "" | "$REAL_PYENV_ROOT"/* | */.pyenv/*) continue ;; esac
  [ -e "$d/python3.10" ] && continue
  [ "$(py_version "$d/python3" || true)" = 3.10 ] || [ "$(py_version "$d/python" || true)" = 3.10 ] && continue
  path="${path:+$path:}$d"
done

unset PYTHON PYENV_VERSION CONDA_PREFIX
export PATH="$path" PYENV_ROOT="$FAKE_PYENV" HOME="$SCRATCH/home"
if p="$(find_python 3.10)"; then
  echo "with_python312_only.sh: Python 3.10 is still visible ($p): cannot hide it here." >&2; exit 1
fi
p="$(find_python 3.12)" || { echo "with_python312_only.sh: no Python 3.12 left visible." >&2; exit 1; }
echo "== only Python 3.12 visible ($p; no 3.10), PYTHON unset: $*"
"$@"
