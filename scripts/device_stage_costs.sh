#!/usr/bin/env bash
# What each stage of a graph-replayed batch-1 decode step costs where it stands in the graph, on
# the GPU machine (docs/cuda.md): the benchmark once as is, then once per stage with that stage's
# kernels launched twice (bench_engine_cuda --repeat-stage), then as is again. A stage's cost is
# the step time it adds. -> $OUT/stage_costs.txt. Binaries come from .device-carry-cuda/ as for
# scripts/device_cuda.sh. CONTEXT (1024), STEPS (96), STAGES (all), ROUNDS (1: single runs
# spread by +-20-30 us a step on the H200; each round runs every stage once more and the table
# gives the mean).
set -uo pipefail
OUT=${OUT:?set OUT}
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
CKPT=/tmp/v4flash
[[ -e $CKPT/config.json ]] || python3 scripts/make_v4_flash_checkpoint.py --out "$CKPT" > "$OUT/ckpt.log" 2>&1
STAGES=${STAGES:-"mhc x_products q_norm wq_b indexer_wq_b indexer_rope indexer_scores top_k attention wo_a wo_b router route experts shared head"}
rate() {  # decode tok/s at CONTEXT, with --repeat-stage $1 when given
  local extra=()
  [[ -n $1 ]] && extra=(--repeat-stage "$1")
  timeout 90 "$CARRY/bench_engine_cuda" "$CKPT" --contexts "${CONTEXT:-1024}" --batches "" \
    --steps "${STEPS:-96}" "${extra[@]}" 2>&1 | awk '/^decode @/ {print $4}'
}
mean_rate() {  # the mean step rate over ROUNDS runs
  local sum=0 r
  for ((i = 0; i < ${ROUNDS:-1}; ++i)); do
    r=$(rate "$1")
    sum=$(awk -v s="$sum" -v r="${r:-0}" 'BEGIN { print s + r }')
  done
  awk -v s="$sum" -v n="${ROUNDS:-1}" 'BEGIN { printf "%.1f", s / n }'
}
{
  echo "stage tok/s us_added_per_step"
  base1=$(mean_rate "")
  echo "(none) $base1 -"
  results=()
  for s in $STAGES; do results+=("$s $(mean_rate "$s")"); done
  base2=$(mean_rate "")
  echo "(none) $base2 -"
  for r in "${results[@]}"; do
    echo "$r" | awk -v a="$base1" -v b="$base2" \
      '{ base = 2e6 / (a + b); printf "%s %s %.1f\n", $1, $2, ($2 > 0 ? 1e6 / $2 - base : 0) }'
  done
} | awk '{ printf "%-16s %10s %18s\n", $1, $2, $3 }' | tee "$OUT/stage_costs.txt"
