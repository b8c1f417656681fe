#!/usr/bin/env bash
# A session's first call on the GPU machine (docs/cuda.md), ~4 minutes -> $OUT/summary.txt and
# $OUT/r.tgz:
#   1. the GPU tests (engine_tests --gtest_filter='*Cuda*:Golden*');
#   2. decode @1K, interleaved, three rounds: the default (the cluster attention beside wo_a,
#      since the twenty-fourth session) against both off and the cluster alone, and alt/ where
#      present;
#   3. one traced decode step at 1K (CUPTI, scripts/trace_step.py) of the default;
#   4. the issue's table (bench_engine_cuda --contexts 1024,16384,65536 --batches 8,32,64) and
#      transformers on the same weights.
# Binaries from the dev box (scripts/device_carry.sh --binaries: engine_tests and
# bench_engine_cuda in .device-carry-cuda/, plus lib/libcupti_trace.so for the trace).
# Optional, where present:
#   alt/bench_engine_cuda     another build (e.g. branch wip/cluster-carveout), A/B as "alt";
#   stamps/bench_engine_cuda  a build of branch wip/stamps, with stamps/block_stamps.py (that
#                             branch's scripts/block_stamps.py): one stamped decode step of the
#                             default -> $OUT/r/stamps.csv.gz and the per-kernel summary.
set -uo pipefail
OUT=${OUT:?set OUT}
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
BENCH=$CARRY/bench_engine_cuda
CKPT=/tmp/v4flash
T0=$SECONDS
R=$OUT/r
mkdir -p "$R"
finish() { cd "$OUT" && tar czf r.tgz r && rm -rf r; }
trap finish EXIT
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$S"
python3 scripts/make_v4_flash_checkpoint.py --out "$CKPT" > "$R/ckpt.log" 2>&1 &
timeout 200 "$CARRY/engine_tests" --gtest_filter='*Cuda*:Golden*' > "$R/tests.log" 2>&1
echo "tests rc $? ($((SECONDS - T0)) s)" >> "$S"
tail -3 "$R/tests.log" >> "$S"
grep -E "^\[  FAILED|Failure" "$R/tests.log" | head -20 >> "$S"
wait
NAMES=(base off cl)
ARGS=("" "--attention-cluster 0 --attention-beside 0" "--attention-beside 0")
BINS=("$BENCH" "$BENCH" "$BENCH")
if [[ -x $CARRY/alt/bench_engine_cuda ]]; then
  NAMES+=(alt)
  ARGS+=("")
  BINS+=("$CARRY/alt/bench_engine_cuda")
fi
for r in 1 2 3; do
  for i in "${!NAMES[@]}"; do
    timeout 40 "${BINS[$i]}" "$CKPT" --contexts 1024 --batches "" --steps 32 ${ARGS[$i]} \
      > "$R/ab_${NAMES[$i]}_$r.log" 2>&1
  done
done
grep -h -E "error|failed|what\(\)" "$R"/ab_*.log | sort | uniq -c | head >> "$S"
python3 scripts/ab_medians.py "$R" "${NAMES[@]}" >> "$S"
echo "a/b: $((SECONDS - T0)) s" >> "$S"
if [[ -f $CARRY/lib/libcupti_trace.so ]]; then
  CUDA_INJECTION64_PATH=$CARRY/lib/libcupti_trace.so CUPTI_TRACE_OUT=$R/trace.csv \
    timeout 60 "$BENCH" "$CKPT" --contexts 1024 --batches "" --steps 16 > "$R/trace.log" 2>&1
  python3 scripts/trace_step.py "$R/trace.csv" --graph 0 --launch 27 > "$R/step_27.txt" 2>&1
  gzip "$R/trace.csv"
  grep -h "^replay" "$R/step_27.txt" >> "$S"
fi
echo "trace: $((SECONDS - T0)) s" >> "$S"
if [[ -x $CARRY/stamps/bench_engine_cuda ]]; then
  AGENTRT_STAMPS_OUT=$R/stamps.csv timeout 40 "$CARRY/stamps/bench_engine_cuda" "$CKPT" \
    --contexts 1024 --batches "" --steps 16 > "$R/stamps.log" 2>&1
  python3 "$CARRY/stamps/block_stamps.py" "$R/stamps.csv" > "$R/stamps.txt" 2>&1
  grep "^attention at" "$R/stamps.txt" >> "$S"
  gzip "$R/stamps.csv"
fi
timeout 150 "$BENCH" "$CKPT" --contexts 1024,16384,65536 --batches 8,32,64 --steps 16 \
  > "$R/bench.log" 2>&1
echo "bench rc $? ($((SECONDS - T0)) s)" >> "$S"
cat "$R/bench.log" >> "$S"
PYTHONUNBUFFERED=1 timeout $((585 - (SECONDS - T0))) python3 scripts/bench_transformers_v4.py \
  "$CKPT" --contexts 1024 --batches 8 --budget-s 50 > "$R/hf.log" 2>&1
echo "transformers rc $? ($((SECONDS - T0)) s)" >> "$S"
tail -8 "$R/hf.log" >> "$S"
