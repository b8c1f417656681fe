#!/usr/bin/env bash
# Back-to-back benchmark of two builds (or two option sets) on the GPU machine (docs/cuda.md):
# runs are interleaved, ROUNDS each (default 2), so drifts of the card's clocks hit both alike,
# and each measurement's median, range and change are printed (scripts/ab_medians.py) ->
# $OUT/ab$TAG.txt (raw logs in $OUT/ab${TAG}_*.log; TAG tells several comparisons of one call
# apart).
#
#   BASE=bench_base [BASE_ARGS=...] [NEW=bench_engine_cuda] [NEW_ARGS=...] [ARGS=...] \
#     scripts/device_ab.sh
#
# BASE / NEW: binaries in .device-carry-cuda/ (NEW defaults to bench_engine_cuda; BASE to the
# same, for comparing option sets: NEW_ARGS="--fp4-expert-gemm 1"). ARGS go to both (default:
# decode at 1K and 16K, batches 8 and 64). Binaries come from the dev box as for
# scripts/device_cuda.sh.
set -uo pipefail
OUT=${OUT:?set OUT}
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
CKPT=/tmp/v4flash
[[ -e $CKPT/config.json ]] || python3 scripts/make_v4_flash_checkpoint.py --out "$CKPT" > "$OUT/ckpt.log" 2>&1
NEW=${NEW:-bench_engine_cuda}
BASE=${BASE:-$NEW}
ARGS=${ARGS:---contexts 1024,16384 --batches 8,64 --steps 32}
for ((r = 1; r <= ${ROUNDS:-2}; ++r)); do
  timeout "${RUN_TIMEOUT:-200}" "$CARRY/$BASE" "$CKPT" $ARGS ${BASE_ARGS:-} > "$OUT/ab${TAG:-}_base_$r.log" 2>&1
  timeout "${RUN_TIMEOUT:-200}" "$CARRY/$NEW" "$CKPT" $ARGS ${NEW_ARGS:-} > "$OUT/ab${TAG:-}_new_$r.log" 2>&1
done
# Each measurement's median over the rounds, its range, and the new build's change.
{
  echo "base: $BASE ${BASE_ARGS:-}   new: $NEW ${NEW_ARGS:-}   args: $ARGS"
  python3 scripts/ab_medians.py --prefix "ab${TAG:-}" "$OUT" base new
} | tee "$OUT/ab${TAG:-}.txt"
