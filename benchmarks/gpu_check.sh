#!/usr/bin/env bash
# Everything that needs a real NVIDIA GPU, in one command of a few minutes: the GPU tests on real
# CuPy (CI runs them on tests/cupy_standin.py), then the GPU benchmarks against PyTorch. For a
# machine lent for a short time: run it once, read $OUT, give the machine back.
#
#   bash benchmarks/gpu_check.sh --prepare   here, before: puts threadpoolctl (pure Python, a
#                                            minialex dependency) into .gpu_deps/ for a machine
#                                            whose python3 lacks it and cannot reach PyPI
#   OUT=DIR bash benchmarks/gpu_check.sh     there, from the repository root, with the system
#                                            python3 (numpy, cupy, pytest, hypothesis, pillow;
#                                            torch optional); .gpu_deps is git-ignored, so copy
#                                            or carry it along with the working tree
#
# Writes into $OUT (default gpu_check/): one log per step, summary.txt (each step's exit status
# and time), the benchmarks' JSON rows, and RESULTS.md with the GPU sections the benchmarks
# wrote, to be copied back into benchmarks/RESULTS.md. A step that fails or runs out of its time
# is recorded and the next one runs; the exit status is 1 if any step failed.
set -u
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ "${1:-}" = "--prepare" ]; then
  set -e
  rm -rf .gpu_deps
  mkdir -p .gpu_deps/wheels
  "$PY" -m pip download --no-deps --only-binary=:all: -d .gpu_deps/wheels threadpoolctl >/dev/null
  "$PY" -m zipfile -e .gpu_deps/wheels/threadpoolctl-*.whl .gpu_deps/
  "$PY" -c "import sys; sys.path.insert(0, '.gpu_deps'); import threadpoolctl"
  echo "ready: carry .gpu_deps to the GPU machine"
  exit 0
fi

OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=".:.gpu_deps${PYTHONPATH:+:$PYTHONPATH}"
failed=0

step() {  # step NAME SECONDS COMMAND...: run, log, record exit status and time
  local name=$1 limit=$2 start rc
  shift 2
  echo "== $name"
  start=$(date +%s)
  timeout -k 30 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc after $(($(date +%s) - start)) s (limit $limit s)" | tee -a "$OUT/summary.txt"
  tail -n 4 "$OUT/$name.log"
  [ "$rc" -eq 0 ] || failed=1
}

date -u +"%Y-%m-%d %H:%M UTC" >"$OUT/summary.txt"
step environment 60 "$PY" -c "
import cupy, numpy, minialex
from minialex import backend
name = cupy.cuda.runtime.getDeviceProperties(0)['name']
print('GPU', name.decode() if isinstance(name, bytes) else name, '| devices', cupy.cuda.runtime.getDeviceCount(),
      '| CuPy', cupy.__version__, '| CUDA runtime', cupy.cuda.runtime.runtimeGetVersion(),
      '| NumPy', numpy.__version__, '| minialex', minialex.__version__)
assert backend.gpu_available(), 'minialex does not see the GPU'"
if [ "$failed" -ne 0 ]; then  # without a usable GPU the tests would run on the stand-in
  echo "no usable GPU: stopping" | tee -a "$OUT/summary.txt"
  exit 1
fi
# the gpu-marked tests on real CuPy, kernels compiled by NVRTC; the summary says where they ran
step gpu_tests 300 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider
# two or more GPUs: the two towers (one process, gpu:0 and gpu:1) and data parallel over NCCL
# (mpiexec -n 2, one GPU per process), on real CuPy; needs mpi4py and an mpiexec for NCCL
gpus=$("$PY" -c "import cupy; print(cupy.cuda.runtime.getDeviceCount())" 2>/dev/null || echo 0)
if [ "${gpus:-0}" -ge 2 ]; then
  step two_towers 300 "$PY" -m pytest -q tests/distributed/test_towers.py -p no:cacheprovider
  if "$PY" -c "import mpi4py" 2>/dev/null && command -v mpiexec >/dev/null; then
    step data_parallel_nccl 400 mpiexec -n 2 "$PY" -m mpi4py -m pytest -q \
      tests/distributed/test_data_parallel.py -p no:cacheprovider
  else
    echo "data_parallel_nccl: not run: mpi4py or mpiexec missing (pip install mpi4py mpich)" \
      | tee -a "$OUT/summary.txt"
    failed=1
  fi
else
  echo "multi-GPU stages: not run, $gpus GPU(s) visible" | tee -a "$OUT/summary.txt"
fi
cp benchmarks/RESULTS.md "$OUT/RESULTS.before.md"
step bench_layers 150 "$PY" benchmarks/bench_layers.py --device gpu --results --json "$OUT/bench_layers.json"
step bench_train 200 "$PY" benchmarks/bench_train.py --device gpu --results --json "$OUT/bench_train.json"
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
cat "$OUT/summary.txt"
exit "$failed"
