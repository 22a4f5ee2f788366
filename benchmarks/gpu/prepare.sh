#!/usr/bin/env bash
# Here, on a machine with pip's index and the repository's history: what a GPU box needs to run
# benchmarks/gpu/run.sh without a network. It writes .gpu/ (ignored by git), which travels with the
# working tree to the GPU box:
#   .gpu/wheels/   the packages a CUDA image with PyTorch lacks (pyzmq, psycopg, pgvector, the embedded
#                  PostgreSQL, open_clip...), for GPU_PYTHON (3.12) on x86-64 Linux, in the versions this
#                  checkout's .venv has (or the newest, without one);
#   .gpu/d031ce1/  the tree of the commit to compare with (BASE, d031ce1), as `git archive` gives it, and
#   .gpu/base      its name;
#   .gpu/commit    which commit this is, and whether it had changes not committed;
#   .gpu/python    the Python version the wheels are for.
# Then, on the GPU box: benchmarks/gpu/run.sh.
# Usage: benchmarks/gpu/prepare.sh            (from the repository's root)
set -euo pipefail
cd "$(dirname "$0")/../.."
GPU_PYTHON=${GPU_PYTHON:-3.12}
BASE=${BASE:-d031ce1}
# What the GPU box's image lacks of what the core, the recorder, the ingest, pisim and a torch worker
# import (it has torch, torchvision, timm, numpy, pillow, msgpack, click, h11, psutil, prometheus_client).
PACKAGES=(pyzmq psycopg psycopg-binary pgvector pgserver platformdirs fasteners open_clip_torch ftfy wcwidth)

rm -rf .gpu && mkdir -p .gpu/wheels ".gpu/$BASE"
pinned=()
for name in "${PACKAGES[@]}"; do
    version=$(.venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null || true)
    pinned+=("$name${version:+==$version}")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .gpu/wheels "${pinned[@]}"
git archive "$BASE" | tar -x -C ".gpu/$BASE"
echo "$BASE" > .gpu/base
echo "$GPU_PYTHON" > .gpu/python
dirty=$(git status --porcelain --untracked-files=no | grep -q . && echo " (with changes not committed)" || true)
echo "$(git rev-parse --short HEAD)$dirty" > .gpu/commit
echo "prepared .gpu/: $(ls .gpu/wheels | wc -l) wheels ($(du -sh .gpu/wheels | cut -f1)); $BASE's tree; this is $(cat .gpu/commit)"
