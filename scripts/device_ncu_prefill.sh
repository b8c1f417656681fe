#!/usr/bin/env bash
# Nsight Compute on a 16K fp8 prefill's two largest kernels, on the GPU machine (docs/cuda.md):
# the prefill attention (attend_wgmma_kernel) and the grouped FP8 experts
# (grouped_expert_kernel), their second launch each, with the sections that say where a kernel's
# time goes (speed of light, memory, warp stalls, scheduler, occupancy) and the per-instruction
# stall samples (SourceCounters), summarised by scripts/ncu_sass_summary.py
#   scripts/device_ncu_prefill.sh -> $OUT/ncu_prefill.txt, $OUT/bench.log, $OUT/sass.tgz
#                                    (sass_KERNEL.csv: the SASS pages, for the summary's options)
# KERNELS=regex picks other kernels; BENCH_ARGS are added to the benchmark's arguments.
# Binaries come from the dev box in .device-carry-cuda/ as for scripts/device_cuda.sh.
set -uo pipefail
OUT=${OUT:?set OUT}
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
NCU=$(command -v ncu || find / -name ncu -type f -perm -u+x -not -path '*/proc/*' 2>/dev/null | head -1)
CKPT=/tmp/v4flash
[[ -e $CKPT/config.json ]] || python3 scripts/make_v4_flash_checkpoint.py --out "$CKPT" > "$OUT/ckpt.log" 2>&1
ARGS=(--contexts 16384 --batches "" --steps 2 --precision fp8 ${BENCH_ARGS:-})
timeout 120 "$CARRY/bench_engine_cuda" "$CKPT" "${ARGS[@]}" --profile 1 > "$OUT/bench.log" 2>&1
echo "bench rc $?"
for k in ${KERNELS:-attend_wgmma_kernel grouped_expert_kernel}; do
  timeout 240 "$NCU" --clock-control none -k "regex:$k" --launch-skip 1 --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
    --section SchedulerStats --section Occupancy --section LaunchStats --section InstructionStats \
    --section SourceCounters --import-source no -o "/tmp/ncu_$k" -f \
    "$CARRY/bench_engine_cuda" "$CKPT" "${ARGS[@]}" > "$OUT/ncu_$k.log" 2>&1
  echo "ncu $k rc $?"
  "$NCU" -i "/tmp/ncu_$k.ncu-rep" --page details >> "$OUT/ncu_prefill.txt" 2>&1
  "$NCU" -i "/tmp/ncu_$k.ncu-rep" --page source --csv --print-source sass > "/tmp/sass_$k.csv" 2>&1
  python3 scripts/ncu_sass_summary.py "/tmp/sass_$k.csv" >> "$OUT/ncu_prefill.txt" 2>&1
done
# A call returns at most 8 files: the SASS pages travel as one archive.
tar czf "$OUT/sass.tgz" -C /tmp $(cd /tmp && ls sass_*.csv 2>/dev/null)
