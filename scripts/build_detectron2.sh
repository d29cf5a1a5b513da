#!/usr/bin/env bash
# Builds detectron2 from its upstream source into one Python environment, with our patch applied,
# and prints how long the compile took. Used by scripts/env.sh (the set-up without Python 3.10, which
# scripts/source_stack.sh also uses) and benchmarks/gpu/run.sh.
#
#   scripts/build_detectron2.sh PYTHON SOURCE WORKDIR
#
# SOURCE: a tarball or folder of detectron2 at commit a59f0563 (../shared/vendor/ has one), or
# "git" to clone it. The build runs without isolation (detectron2's setup.py imports torch), with
# MAX_JOBS compile jobs (default: all cores); FORCE_CUDA=1 and TORCH_CUDA_ARCH_LIST make a CUDA build.
# The seconds are written to WORKDIR/build-seconds.
set -euo pipefail
[ $# -eq 3 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
PY="$1"; SRC="$2"; WORK="$3"
PATCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/detectron2-source.patch"
D2_COMMIT=a59f0563
rm -rf "$WORK/src"; mkdir -p "$WORK/src"
if [ -f "$SRC" ]; then
  tar xzf "$SRC" -C "$WORK/src"
elif [ -d "$SRC" ]; then
  cp -r "$SRC" "$WORK/src/"
else
  git clone --quiet https://github.com/facebookresearch/detectron2.git "$WORK/src/detectron2" || {
    echo "Could not clone detectron2: set DETECTRON2_SRC to a tarball or folder of its source at commit $D2_COMMIT." >&2; exit 1; }
  git -C "$WORK/src/detectron2" checkout --quiet "$D2_COMMIT"
fi
D2_DIR="$(dirname "$(ls -d "$WORK"/src/*/setup.py | head -1)")"
# Three fixes the source lacks: Python 3.11+ random.sample on a set (the one sal-detectron2 ships),
# numpy 2's np.array(copy=False) in two places.
(cd "$D2_DIR" && patch -p1 --quiet < "$PATCH")
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
echo "== building detectron2 ($D2_DIR) with $("$PY" -c 'import torch; print("torch", torch.__version__)'), MAX_JOBS=$MAX_JOBS, FORCE_CUDA=${FORCE_CUDA:-0} ${TORCH_CUDA_ARCH_LIST:+TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST}"
start=$(date +%s)
"$PY" -m pip install --quiet --disable-pip-version-check --progress-bar off --no-build-isolation --no-deps "$D2_DIR"
seconds=$(( $(date +%s) - start ))
echo "$seconds" > "$WORK/build-seconds"
echo "== detectron2 built in ${seconds} s"
