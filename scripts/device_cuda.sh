#!/usr/bin/env bash
# Everything the CUDA backend runs on the GPU machine, in one call (docs/cuda.md):
#   scripts/device_cuda.sh [tests|bench|all]
# Binaries are built on the dev box (the device lacks our -dev libraries) and carried in
# .device-carry-cuda/ (engine_tests, bench_engine_cuda); the working tree brings the fixtures.
#   tests: the GPU tests (golden fixtures on the GPU, GPU vs CPU, per-kernel) -> $OUT/tests.log
#   bench: a V4-Flash-shaped random checkpoint written on the device (torch), our engine's
#          benchmark, then transformers' DeepseekV4ForCausalLM on the same weights -> $OUT/bench.log
set -uo pipefail
OUT=${OUT:?set OUT}
MODE=${1:-all}
CARRY=.device-carry-cuda
# The test binary was compiled with AGENTRT_SOURCE_DIR=/work/main (fixture paths).
if [[ ! -e /work/main ]]; then mkdir -p /work && ln -s "$PWD" /work/main; fi
CUDA_LIBS=$(dirname "$(find / -name 'libcublas.so.13*' -not -path '*/proc/*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH="$CARRY/lib:${CUDA_LIBS}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
status=0
if [[ $MODE == tests || $MODE == all ]]; then
  "$CARRY/engine_tests" --gtest_filter='*Cuda*:Golden*' 2>&1 | tee "$OUT/tests.log" || status=1
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
