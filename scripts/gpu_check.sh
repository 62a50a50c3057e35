#!/usr/bin/env bash
# The one-call GPU check: builds the CUDA variant in place, runs the GPU tests
# in parallel workers, the GPU benchmark against PyTorch, the per-layer and
# per-kernel profiles, and writes every log into the folder it is given.
#
#   bash scripts/gpu_check.sh OUT_DIR [ARCH]      # ARCH: CUDA compute capability, e.g. 90 (default: 90)
#
# Needs: nvcc, a CUDA device, the project's Python dependencies (cffi, numpy,
# scipy-openblas32, pytest, pytest-xdist, nvidia-cublas) and, for the
# benchmark and the kernel profile, PyTorch with CUDA. Each step's status is
# printed; the script exits non-zero when the build or the GPU tests fail.
# About 3-4 minutes on an H100/H200 (the build ~30 s, the tests ~15 s).
set -uo pipefail
OUT=${1:?give the folder for the logs}
ARCH=${2:-90}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
status=0

step() { # name, command...: runs it with its log in $OUT/<name>.log, prints the outcome
    local name=$1; shift
    local t0=$SECONDS
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc, $((SECONDS - t0)) s (log: $OUT/$name.log)"
    tail -n 3 "$OUT/$name.log" | sed 's/^/    /'
    return $rc
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvcc --version | tail -1;
  $PY -c "import torch; print('torch', torch.__version__, torch.version.cuda)" 2>&1; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

if ! step build env PYDARKNET_CUDA=1 PYDARKNET_CUDA_ARCH="$ARCH" $PY setup.py build_ext --inplace; then
    echo "the CUDA build failed; nothing else was run"
    exit 1
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
workers=$(( $(nproc) < 8 ? $(nproc) : 8 ))
step test_cuda $PY -m pytest -n "$workers" -q -p no:cacheprovider tests/test_cuda.py tests/test_darknet_fixtures.py \
    -rf || status=1
step bench_gpu_yolov4-tiny $PY benchmarks/bench_gpu.py --cfg yolov4-tiny --json "$OUT/torch_cuda_yolov4-tiny.json"
step bench_gpu_yolov4 $PY benchmarks/bench_gpu.py --cfg yolov4 --batch 16 --json "$OUT/torch_cuda_yolov4.json"
step profile_layers $PY benchmarks/profile_layers.py --gpu 0 --train --batch 64 --repeat 3
step profile_kernels $PY benchmarks/profile_kernels.py --json "$OUT/kernels.json"
exit $status
