#!/usr/bin/env bash
# Run here, with the registry, before borrowing the GPU machine: puts into benchmarks/gpu/wheels/
# (ignored by git; the device tool carries it when told to) the wheels of wheels.txt for CPython
# 3.12 on Linux x86_64 and the detectron2 source, and prints their size (the tree and the wheels
# must stay under 64 MiB together).
#
#   benchmarks/gpu/fetch_wheels.sh [DETECTRON2_SOURCE_TARBALL]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
WHEELS="$HERE/wheels"
SRC="${1:-$ROOT/../shared/vendor/detectron2-a59f0563.tar.gz}"
PY="${PYTHON:-python3}"
mkdir -p "$WHEELS"
# Two of them ship only as source (fvcore, antlr4-python3-runtime): built here into pure-Python wheels.
SDIST_ONLY="fvcore antlr4-python3-runtime"
grep -vE '^\s*(#|$)' "$HERE/wheels.txt" | while read -r req; do
  name="${req%%==*}"
  if [[ " $SDIST_ONLY " == *" $name "* ]]; then
    "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$WHEELS" "$req"
  else
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: \
      --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
      -d "$WHEELS" "$req"
  fi
done
cp "$SRC" "$WHEELS/"
echo "$(ls "$WHEELS" | wc -l) files, $(du -sm "$WHEELS" | cut -f1) MiB in $WHEELS"
