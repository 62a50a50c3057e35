#!/usr/bin/env bash
# The one-call GPU check: builds the CUDA variant in place (with cuDNN when its
# headers are installed, else the im2col + cuBLAS path alone), runs the GPU
# tests in parallel workers on each convolution path, the GPU benchmark against
# PyTorch (yolov4-tiny on both paths and in float16, yolov4), the per-kernel and per-layer
# profiles, the training command end to end and the loader on the host's
# cores (and, asked, compute-sanitizer's memcheck over the newest device
# paths), and writes every log and JSON into the folder it is given.
#
#   bash scripts/gpu_check.sh OUT_DIR [ARCH]      # ARCH: CUDA compute capability, e.g. 90 (default: 90)
#   SKIP="bench_gpu_yolov4 profile_layers" bash scripts/gpu_check.sh OUT_DIR   # leaves the named steps out
#   MEMCHECK=1 bash scripts/gpu_check.sh OUT_DIR   # adds compute-sanitizer's memcheck of the newest device paths
#
# Needs: nvcc, a CUDA device, the project's Python dependencies (cffi, numpy,
# scipy-openblas32, pytest, pytest-xdist, nvidia-cublas; nvidia-cudnn-cu13 for
# the cuDNN path) and, for the benchmarks and the kernel profile, PyTorch with
# CUDA. Each step runs under a time limit and prints its outcome; the script
# exits non-zero when the build or a GPU test fails. About 4.5 minutes on an
# H200 (the build ~40 s, the tests ~40 s per path).
set -uo pipefail
OUT=${1:?give the folder for the logs}
ARCH=${2:-90}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
status=0
T0=$SECONDS

step() { # name, time limit (s), command...: runs it with its log in $OUT/<name>.log, prints the outcome
    local name=$1 limit=$2; shift 2
    case " ${SKIP:-} " in *" $name "*) echo "$name: skipped (SKIP)"; return 0;; esac
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc, $((SECONDS - t0)) s (log: $OUT/$name.log)"
    tail -n "${TAIL:-3}" "$OUT/$name.log" | cut -c1-300 | sed 's/^/    /'
    return $rc
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvcc --version | tail -1;
  grep -m1 "model name" /proc/cpuinfo; nproc;
  $PY -c "import torch; print('torch', torch.__version__, torch.version.cuda)" 2>&1; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

if step build 240 env PYDARKNET_CUDA=1 PYDARKNET_CUDNN=1 PYDARKNET_CUDA_ARCH="$ARCH" $PY setup.py build_ext --inplace
then paths="cudnn gemm"
else
    echo "no cuDNN build (see build.log); building the im2col + cuBLAS path alone"
    step build_gemm 240 env PYDARKNET_CUDA=1 PYDARKNET_CUDA_ARCH="$ARCH" $PY setup.py build_ext --inplace ||
        { echo "the CUDA build failed; nothing else was run"; exit 1; }
    paths="gemm"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
workers=$(( $(nproc) < 8 ? $(nproc) : 8 ))
for path in $paths; do   # PYDARKNET_CUDNN=0 turns cuDNN off in a build that has it
    dnn=$([ "$path" = cudnn ] && echo 1 || echo 0)
    TAIL=12 step "test_cuda_$path" 240 env PYDARKNET_CUDNN=$dnn $PY -m pytest -n "$workers" -q -p no:cacheprovider \
        tests/test_cuda.py tests/test_darknet_fixtures.py -rf || status=1
    step "bench_gpu_yolov4-tiny_$path" 150 env PYDARKNET_CUDNN=$dnn $PY benchmarks/bench_gpu.py --cfg yolov4-tiny \
        --warmup 5 --repeat 30 --batch-repeat 6 --json "$OUT/torch_cuda_yolov4-tiny_$path.json"
done
# MEMCHECK=1: compute-sanitizer's memcheck over the paths written without a GPU (small networks; about a minute)
if [ "${MEMCHECK:-0}" = 1 ] && command -v compute-sanitizer > /dev/null; then
    TAIL=8 step memcheck 150 compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest -q -p no:cacheprovider \
        tests/test_cuda.py -k "gradients_below_float16 or float16_skips or own_input or leave_a_pass or bucket_hook or hook_alone" ||
        status=1
fi
step bench_gpu_yolov4-tiny_float16 120 $PY benchmarks/bench_gpu.py --cfg yolov4-tiny --precision float16 --warmup 5 \
    --repeat 30 --batch-repeat 6 --no-real-loss --json "$OUT/torch_cuda_yolov4-tiny_float16.json"
step bench_gpu_yolov4 150 $PY benchmarks/bench_gpu.py --cfg yolov4 --batch 16 --warmup 3 --repeat 20 --batch-repeat 4 \
    --json "$OUT/torch_cuda_yolov4.json"
step profile_kernels 90 $PY benchmarks/profile_kernels.py --json "$OUT/kernels.json"
step profile_layers 90 $PY benchmarks/profile_layers.py --gpu 0 --train --batch 64 --repeat 3 --threads "$(nproc)"
step train_command 120 $PY benchmarks/bench_train_command.py --json "$OUT/train_command.json"
step loader 120 $PY benchmarks/bench_loader.py --no-train --backend process --workers $(( $(nproc) / 2 )) \
    --workers $(( $(nproc) - 2 )) --batches 4 --cache-images --json "$OUT/loader.json"
echo "total $((SECONDS - T0)) s; GPU tests $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status
