# Sourced (not run) by scripts/env.sh, scripts/source_stack.sh and scripts/with_python312_only.sh:
# where the set-up looks for a Python. Defines two functions, changes nothing.

# py_version CANDIDATE: prints CANDIDATE's major.minor ("3.12") when it runs as a Python; fails otherwise.
py_version() { [ -n "${1:-}" ] && "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

# find_python VERSION: prints the first Python VERSION (major.minor, e.g. 3.10) found on the PATH
# (pythonVERSION, python3, python), in pyenv's installed versions (also when none is selected: pyenv
# puts them on the PATH only then), in conda's places or in the usual system folders; fails if none.
find_python() {
  local v="$1" c r cands=()
  for c in "python$v" python3 python; do cands+=("$(command -v "$c" 2>/dev/null || true)"); done
  command -v pyenv >/dev/null 2>&1 && cands+=("$(pyenv root 2>/dev/null || true)"/versions/"$v"*/bin/python)
  cands+=("${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v"*/bin/python)
  for r in "${CONDA_PREFIX:-}" "$HOME"/miniconda3 "$HOME"/anaconda3 "$HOME"/miniforge3; do
    [ -n "$r" ] && cands+=("$r"/bin/python "$r"/envs/*/bin/python)
  done
  cands+=("/usr/bin/python$v" "/usr/local/bin/python$v" "/opt/homebrew/bin/python$v")
  for c in "${cands[@]}"; do
    [ "$(py_version "$c")" = "$v" ] && { echo "$c"; return 0; }
  done
  return 1
}
