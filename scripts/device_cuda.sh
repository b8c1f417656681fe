#!/usr/bin/env bash
# What runs on the GPU machine (device tool) for the CUDA backend, in one call. The machine lacks
# this project's -dev packages, so the binaries are built here (nvcc, sm_90a) and carried:
#   cmake --build build --target engine_tests bench_engine_cuda_gemv
#   mkdir -p .device-carry-cuda && cp build/tests/engine/engine_tests \
#     build/bench/bench_engine_cuda_gemv .device-carry-cuda/
# then, through the device tool: bash scripts/device_cuda.sh  (carry: .device-carry-cuda)
# It runs the GPU tests (plain and under compute-sanitizer) and the weight-product benchmark,
# writing logs to $OUT.
set -uo pipefail
OUT=${OUT:?set OUT}
BIN=${BIN:-.device-carry-cuda}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$BIN/engine_tests" --gtest_filter='Cuda*' 2>&1 | tee "$OUT/cuda_tests.log"
tests_rc=${PIPESTATUS[0]}
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck "$BIN/engine_tests" --gtest_filter='CudaGemv.RowSlices*:CudaGemv.Unaligned*' \
    2>&1 | tail -20 | tee "$OUT/sanitizer.log"
fi
"$BIN/bench_engine_cuda_gemv" --reps 20 2>&1 | tee "$OUT/bench_gemv.txt"
exit "$tests_rc"
