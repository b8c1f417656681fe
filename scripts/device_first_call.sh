#!/usr/bin/env bash
# A session's first call on the GPU machine (docs/cuda.md), everything the nineteenth session
# (lent no device) left to run, in one call of ~8-9 minutes -> $OUT/summary.txt and $OUT/r.tgz:
#   1. the GPU tests (engine_tests --gtest_filter='*Cuda*:Golden*'): five of them have never
#      run on a GPU (below);
#   2. decode @1K and batch 8, interleaved, two rounds: the defaults against --fused-routing 1
#      and --fused-q-norm 1 (CudaOptions::fused_routing, fused_q_norm), each alone and both
#      (make one the default where it wins and its tests pass: RoutingMatchesTheCpu,
#      RoutedExpertsRoutingThemselves, FusedRoutingGivesTheSameLogits,
#      WarpRowsNormedAsRmsNormThenProduct);
#   3. one traced decode step at 1K (CUPTI, scripts/trace_step.py) with both options on;
#   4. prefill 16K and 64K with passes of 8,192 (the default) and 16,384 rows, and the peak
#      memory of each;
#   5. Nsight Compute (eager, --profile 1) on the decode step's latency-bound kernels, with
#      SASS-level source counters (r/sass_*.csv: instructions executed and stall samples per
#      instruction): the decode attention takes ~17-21 us a layer whatever its key count, and
#      nothing measured so far says where.
# Binaries from the dev box (scripts/device_carry.sh --binaries: engine_tests and
# bench_engine_cuda in .device-carry-cuda/, plus lib/libcupti_trace.so for the trace).
set -uo pipefail
OUT=${OUT:?set OUT}
CARRY=.device-carry-cuda
[[ -e /work/main ]] || { mkdir -p /work && ln -s "$PWD" /work/main; }
CUDA_LIBS=$(dirname "$(find / -name 'libcublas.so.13*' -not -path '*/proc/*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH="$CARRY/lib:${CUDA_LIBS}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
NCU=$(command -v ncu || find / -name ncu -type f -perm -u+x -not -path '*/proc/*' 2>/dev/null | head -1)
BENCH=$CARRY/bench_engine_cuda
CKPT=/tmp/v4flash
T0=$SECONDS
R=$OUT/r
mkdir -p "$R"
finish() { cd "$OUT" && tar czf r.tgz r && rm -rf r; }
trap finish EXIT
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$S"
[[ -e $CKPT/config.json ]] ||
  python3 scripts/make_v4_flash_checkpoint.py --out "$CKPT" > "$R/ckpt.log" 2>&1 &
timeout 200 "$CARRY/engine_tests" --gtest_filter='*Cuda*:Golden*' > "$R/tests.log" 2>&1
echo "tests rc $? ($((SECONDS - T0)) s)" >> "$S"
tail -3 "$R/tests.log" >> "$S"
grep -E "FAILED|Failure" "$R/tests.log" | head -20 >> "$S"
wait
# Option sets: the defaults, each opt-in option alone, both.
SETS=("" "--fused-routing 1" "--fused-q-norm 1" "--fused-routing 1 --fused-q-norm 1")
for r in 1 2; do
  for i in "${!SETS[@]}"; do
    timeout 90 "$BENCH" "$CKPT" --contexts 1024 --batches 8 --steps 32 ${SETS[$i]} \
      > "$R/set${i}_$r.log" 2>&1
  done
done
for i in "${!SETS[@]}"; do
  echo "== options: ${SETS[$i]:-(defaults)}"
  grep -h -E "^decode" "$R"/set${i}_*.log
done >> "$S"
echo "a/b: $((SECONDS - T0)) s" >> "$S"
CUDA_INJECTION64_PATH=$CARRY/lib/libcupti_trace.so CUPTI_TRACE_OUT=$R/trace.csv \
  timeout 90 "$BENCH" "$CKPT" --contexts 1024 --batches "" --steps 16 --fused-routing 1 --fused-q-norm 1 \
  > "$R/trace.log" 2>&1
python3 scripts/trace_step.py "$R/trace.csv" --graph 0 > "$R/step1k.txt" 2>&1
rm -f "$R/trace.csv"
for rows in 8192 16384; do
  timeout 120 "$BENCH" "$CKPT" --contexts 16384,65536 --batches "" --steps 2 --prefill-rows $rows \
    > "$R/prefill_$rows.log" 2>&1
  echo "== --prefill-rows $rows"
  grep -h -E "^prefill|peak" "$R/prefill_$rows.log"
done >> "$S"
echo "prefill: $((SECONDS - T0)) s" >> "$S"
if [[ -n $NCU ]]; then
  timeout 150 "$NCU" --profile-from-start off --clock-control none \
    -k "regex:attend_decode|gemv_warp_rows|hyper_fused" --launch-count 3 \
    --section SpeedOfLight --section WarpStateStats --section Occupancy --section SchedulerStats \
    --section LaunchStats --section SourceCounters --section InstructionStats --import-source no \
    -o "$R/decode" "$BENCH" "$CKPT" --contexts 1024 --batches "" --steps 4 --ncu-steps 1 \
    --profile 1 > "$R/ncu_run.txt" 2>&1
  echo "ncu rc $? ($((SECONDS - T0)) s)" >> "$S"
  "$NCU" -i "$R/decode.ncu-rep" --print-details all > "$R/ncu_detail.txt" 2>&1
  for k in attend_decode gemv_warp_rows hyper_fused; do
    "$NCU" -i "$R/decode.ncu-rep" -k "regex:$k" --launch-count 1 --page source --csv \
      --print-source sass > "$R/sass_$k.csv" 2>&1
  done
  rm -f "$R/decode.ncu-rep"
fi
echo "done: $((SECONDS - T0)) s" >> "$S"
