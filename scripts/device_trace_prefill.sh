#!/usr/bin/env bash
# A CUPTI trace of a 16K fp8 prefill on the GPU machine (docs/cuda.md): which kernels make the
# wall time (alone on the GPU) and which run beside other streams' kernels, where a kernel's
# `--profile 1` time (sections serialised) need not reach the wall time.
#   scripts/device_trace_prefill.sh -> $OUT/overlap.txt, $OUT/trace.csv.gz, $OUT/bench.log
# BENCH=name picks another benchmark binary in the carry (e.g. bench_base for an A/B);
# BENCH_ARGS are added to its arguments. Needs lib/libcupti_trace.so in the carry
# (scripts/device_carry.sh --binaries copies it from the build's bench/).
set -uo pipefail
OUT=${OUT:?set OUT}
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
CKPT=/tmp/v4flash
[[ -e $CKPT/config.json ]] || python3 scripts/make_v4_flash_checkpoint.py --out "$CKPT" > "$OUT/ckpt.log" 2>&1
CUDA_INJECTION64_PATH=$CARRY/lib/libcupti_trace.so CUPTI_TRACE_OUT=$OUT/trace.csv \
  timeout 120 "$CARRY/${BENCH:-bench_engine_cuda}" "$CKPT" --contexts 16384 --batches "" --steps 2 \
  --precision fp8 ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
echo "bench rc $?"
python3 scripts/trace_step.py "$OUT/trace.csv" --overlap --top 40 > "$OUT/overlap.txt" 2>&1
python3 scripts/trace_step.py "$OUT/trace.csv" --eager --top 40 >> "$OUT/overlap.txt" 2>&1
gzip -f "$OUT/trace.csv"
head -50 "$OUT/overlap.txt"
