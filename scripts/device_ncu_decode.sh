#!/usr/bin/env bash
# Per-kernel times of one batch-1 decode step at 1K context under Nsight Compute, on the GPU
# machine (docs/cuda.md): scripts/device_ncu_decode.sh -> $OUT/ncu.csv, $OUT/bench.log.
# NCU_CLOCK / NCU_CACHE: ncu's --clock-control / --cache-control (default none: the card's own
# clocks and a warm L2, as in a real decode step).
# Binaries come from the dev box in .device-carry-cuda/ as for scripts/device_cuda.sh.
set -uo pipefail
OUT=${OUT:?set OUT}
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
NCU=$(command -v ncu || find / -name ncu -type f -perm -u+x -not -path '*/proc/*' 2>/dev/null | head -1)
CKPT=/tmp/v4flash
[[ -e $CKPT/config.json ]] || python3 scripts/make_v4_flash_checkpoint.py --out "$CKPT" > "$OUT/ckpt.log" 2>&1
# COMPARE=other_binary (in the carry): the same benchmark with it, before and after ours.
ARGS="--contexts ${CONTEXTS:-1024} --batches 8 --steps 32 ${BENCH_ARGS:-}"
[[ -n ${COMPARE:-} ]] && timeout 200 "$CARRY/$COMPARE" "$CKPT" $ARGS > "$OUT/compare1.log" 2>&1
timeout 200 "$CARRY/bench_engine_cuda" "$CKPT" $ARGS > "$OUT/bench.log" 2>&1
[[ -n ${COMPARE:-} ]] && timeout 200 "$CARRY/$COMPARE" "$CKPT" $ARGS > "$OUT/compare2.log" 2>&1
[[ -n ${SKIP_NCU:-} ]] && exit 0  # SKIP_NCU=1: only the benchmark runs above
timeout 300 "$NCU" --profile-from-start off --clock-control ${NCU_CLOCK:-none} --cache-control ${NCU_CACHE:-none} --csv --metrics \
  gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size,launch__block_size,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active \
  "$CARRY/bench_engine_cuda" "$CKPT" --contexts 1024 --batches "" --steps 4 --ncu-steps 1 \
  > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
echo "ncu rc $?"
# NCU_DETAIL=regex: warp stall reasons, occupancy and issue rates of the first two launches of the
# kernels whose names match (inside the profiled decode step) -> $OUT/ncu_detail.txt.
if [[ -n ${NCU_DETAIL:-} ]]; then
  timeout 200 "$NCU" --profile-from-start off --clock-control none -k "regex:${NCU_DETAIL}" --launch-count 2 \
    --section WarpStateStats --section Occupancy --section SchedulerStats --section LaunchStats \
    "$CARRY/bench_engine_cuda" "$CKPT" --contexts 1024 --batches "" --steps 4 --ncu-steps 1 \
    > "$OUT/ncu_detail.txt" 2>&1
fi
