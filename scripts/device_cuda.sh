#!/usr/bin/env bash
# Everything the CUDA backend runs on the GPU machine, in one call (docs/cuda.md):
#   scripts/device_cuda.sh [build|tests|gemv|bench|all]  (all: build, tests, bench; SKIP_BUILD=1
#   leaves the build out and runs the carried binaries: a fresh machine's build takes minutes
#   of the call)
#   build: the engine, its tests and benchmarks from this working tree, with the machine's CUDA
#          toolkit, CMake and compiler (-DAGENTRT_ENGINE_ONLY=ON; nlohmann-json and GoogleTest
#          from .device-carry-cuda/deps, which scripts/device_carry.sh fills) -> $OUT/build.log;
#          the binaries replace those in .device-carry-cuda/. Where it fails (or is skipped),
#          the binaries carried from the dev box run instead (scripts/device_carry.sh
#          --binaries), and the log says so.
#   tests: the GPU tests (golden fixtures on the GPU, GPU vs CPU, per-kernel) -> $OUT/tests.log
#   gemv:  bench_engine_cuda_gemv as it is, with --tensor-map 1, --sum-group 4, both, and with
#          --copy-probe 1 (the decode products one at a time, and their copy pipeline alone)
#          -> $OUT/gemv.log
#   bench: a V4-Flash-shaped random checkpoint written on the device (torch), our engine's
#          benchmark, then transformers' DeepseekV4ForCausalLM on the same weights -> $OUT/bench.log
set -uo pipefail
OUT=${OUT:?set OUT}
MODE=${1:-all}
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
status=0
if [[ $MODE == build || ($MODE == all && -z ${SKIP_BUILD:-}) ]]; then
  BUILD=/tmp/agentrt-build
  NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  {
    echo "build: $(cmake --version | head -1); $(c++ --version | head -1); $("$NVCC" --version | tail -1)"
    if [[ ! -e $CARRY/deps/googletest/CMakeLists.txt ]]; then
      echo "build: $CARRY/deps is missing (scripts/device_carry.sh on the dev box)"
      false
    else
      cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DAGENTRT_ENGINE_ONLY=ON \
        -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_PREFIX_PATH="$PWD/$CARRY/deps" \
        -DAGENTRT_GTEST_SOURCE="$PWD/$CARRY/deps/googletest" &&
        cmake --build "$BUILD" -j "$(nproc)" --target engine_tests bench_engine_cuda \
          bench_engine_cuda_gemv -- -k 0  # every error in one log
    fi
  } > "$OUT/build.log" 2>&1
  built=$?
  if [[ $built == 0 && -x $BUILD/bench/bench_engine_cuda ]]; then
    cp "$BUILD/tests/engine/engine_tests" "$BUILD/bench/bench_engine_cuda" \
      "$BUILD/bench/bench_engine_cuda_gemv" "$CARRY/"
    echo "build: built here; $CARRY holds this build's binaries" | tee -a "$OUT/build.log"
  else
    echo "build: FAILED (tail of $OUT/build.log below); running the binaries carried from the dev box"
    tail -20 "$OUT/build.log"
    status=1
  fi
fi
if [[ $MODE == tests || $MODE == all ]]; then
  "$CARRY/engine_tests" --gtest_filter='*Cuda*:Golden*' 2>&1 | tee "$OUT/tests.log" || status=1
fi
if [[ $MODE == gemv ]]; then
  for args in "" "--tensor-map 1" "--sum-group 4" "--tensor-map 1 --sum-group 4" "--copy-probe 1"; do
    echo "== bench_engine_cuda_gemv $args" | tee -a "$OUT/gemv.log"
    timeout "${GEMV_TIMEOUT:-120}" "$CARRY/bench_engine_cuda_gemv" $args 2>&1 | tee -a "$OUT/gemv.log" ||
      status=1
  done
fi
if [[ $MODE == bench || $MODE == all ]]; then
  CKPT=/tmp/v4flash
  # A second bench in the same call (another BENCH_ARGS) reuses the checkpoint.
  if [[ -e $CKPT/config.json ]]; then
    echo "checkpoint: reusing $CKPT" | tee "$OUT/bench.log"
  else
    PYTHONUNBUFFERED=1 python3 scripts/make_v4_flash_checkpoint.py --out "$CKPT" 2>&1 | tee "$OUT/bench.log"
  fi
  timeout "${BENCH_TIMEOUT:-280}" "$CARRY/bench_engine_cuda" "$CKPT" ${BENCH_ARGS:-} 2>&1 |
    tee -a "$OUT/bench.log" || status=1
  [[ -n ${SKIP_HF:-} ]] && exit $status
  PYTHONUNBUFFERED=1 timeout "${HF_TIMEOUT:-320}" python3 scripts/bench_transformers_v4.py "$CKPT" \
    --budget-s "${HF_BUDGET:-150}" ${HF_ARGS:-} 2>&1 | tee -a "$OUT/bench.log" || status=1
fi
exit $status
