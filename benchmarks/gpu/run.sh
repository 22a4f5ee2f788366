#!/usr/bin/env bash
# On a GPU box (NVIDIA, CUDA, a Python with PyTorch and torchvision), from a copy of the working tree
# that holds .gpu/ (benchmarks/gpu/prepare.sh, run beforehand where pip and git work): issue #21's real
# test, the plumbing benchmark with ViT-B-32 on CUDA in the workers, this commit against d031ce1, then
# the encoder benchmark (the model's ceiling, its pipelines). Nothing is fetched: it installs .gpu/wheels
# into $PY's environment (a throwaway one: a GPU box lent for this, or a venv made with PyTorch).
#
# Usage: benchmarks/gpu/run.sh
# Settings (environment): PY (python3); OUT (benchmarks/out/gpu), where the logs and JSON go;
# LIMIT_S (420), the whole run's seconds: the encoder benchmark gets what the plumbing leaves, if 60 s
# or more; CASES, FRAMES, WINDOW_S, LATENCY_S: the plumbing's BENCH_PLUMBING_CASES (the issue's: keys on,
# 640x480, one camera and eight, and the real-time cases), _FRAMES (30000), _SECONDS (8), _LATENCY_S (10).
set -uo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)
PY=${PY:-python3}
OUT=${OUT:-benchmarks/out/gpu}
LIMIT_S=${LIMIT_S:-420}
mkdir -p "$OUT"

left() { echo $((started + LIMIT_S - $(date +%s))); }

main() {
    [ -d .gpu/wheels ] || { echo "no .gpu/: run benchmarks/gpu/prepare.sh first, where pip and git work"; exit 2; }
    echo "code: $(cat .gpu/commit), against $(cat .gpu/base)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "(no nvidia-smi)"
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) cores"
    version=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || { echo "no Python at PY=$PY"; exit 2; }
    [ "$version" = "$(cat .gpu/python)" ] || {
        echo "$PY is Python $version; .gpu/wheels are for $(cat .gpu/python): GPU_PYTHON=$version benchmarks/gpu/prepare.sh"
        exit 2
    }
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile .gpu/wheels/*.whl || { echo "installing .gpu/wheels failed"; exit 2; }
    export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0))" || exit 2

    echo "== plumbing, ViT-B-32 on CUDA in the workers ($(left) s left)"
    rm -f benchmarks/out/bench_plumbing.json
    BENCH_PLUMBING_WORKERS=model BENCH_PLUMBING_BASE=".gpu/$(cat .gpu/base)" BENCH_PLUMBING_CODE="$(cat .gpu/commit)" \
        BENCH_PLUMBING_CASES="${CASES:-640x480, 1 camera, keys on|640x480, 8 cameras, keys on|30 frames/s}" \
        BENCH_PLUMBING_FRAMES=${FRAMES:-30000} BENCH_PLUMBING_SECONDS=${WINDOW_S:-8} BENCH_PLUMBING_WARMUP_S=3 \
        BENCH_PLUMBING_LATENCY_S=${LATENCY_S:-10} \
        timeout --kill-after=10 $(($(left) - 60 > 60 ? $(left) - 60 : 60)) "$PY" -m benchmarks plumbing
    status=$?
    echo "plumbing: exit $status"
    cp benchmarks/out/bench_plumbing.json "$OUT/" 2>/dev/null || echo "(no bench_plumbing.json)"

    if [ "$(left)" -ge 60 ]; then
        echo "== encoder ($(left) s left)"
        rm -f benchmarks/out/bench_encoder.json
        BENCH_SECONDS=3 BENCH_FRAMES=4000 timeout --kill-after=10 $(($(left) - 5)) "$PY" -m benchmarks encoder
        code=$?
        echo "encoder: exit $code$( ((code == 124)) && echo ' (cut at LIMIT_S)')"
        status=$((status ? status : code))
        cp benchmarks/out/bench_encoder.json "$OUT/" 2>/dev/null || echo "(no bench_encoder.json)"
    else
        echo "== encoder: skipped, $(left) s left"
    fi
    echo "done in $(($(date +%s) - started)) s"
    return "$status"
}

# Everything said goes to $OUT/run.log as well. Exit status: 0 when both benchmarks ran to their end, 2 when
# this box cannot run them, else the first one's that did not.
main 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"
