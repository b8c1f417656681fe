#!/usr/bin/env bash
# One device call (docs/cuda.md): every GPU test, the issue's table (decode @1K/16K/64K with and
# without the greedy pick, prefill, batches 8/32/64, peak memory) and transformers on the same
# checkpoint, each under a time limit, results in $OUT/summary.txt and $OUT/r.tgz. ARGS go to the
# table's bench_engine_cuda (e.g. options not yet the defaults); AB="NAME:FLAGS;NAME:FLAGS" adds,
# before the table, an interleaved decode + pick @1K comparison of the defaults against each
# named flag set (ROUNDS of them, default 3).
# TABLE=0 skips the table and transformers, TRANSFORMERS=0 transformers; AB_TIMEOUT (s, default
# 60) limits each comparison run; TESTS=FILTER picks the
# tests.
#   OUT=... [ARGS=...] [TABLE=0] [AB="attn:--attention-chunk 48 --attention-ka 4 --attention-bulk 1"] \
#     bash scripts/device_table.sh
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
[[ -e $CKPT/config.json ]] ||
  python3 scripts/make_v4_flash_checkpoint.py --out "$CKPT" > "$R/ckpt.log" 2>&1 &
timeout 150 "$CARRY/engine_tests" --gtest_filter="${TESTS:-*Cuda*:*Golden*:*Attention*:ModelInit.*}" \
  > "$R/tests.log" 2>&1
echo "tests rc $? ($((SECONDS - T0)) s)" >> "$S"
grep -E "^\[  PASSED|^\[  FAILED|Failure" "$R/tests.log" | head -20 >> "$S"
wait
# The SM clock and power while the benchmarks run (a power-capped clock would slow every
# latency-bound kernel of a decode step alike; docs/cuda.md, "For the next session").
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv \
  -lms 100 > "$R/clocks.csv" 2>&1 &
CLOCKS=$!
if [[ -n ${AB:-} ]]; then
  names=(def) flags=("")
  IFS=';' read -r -a arms <<< "$AB"
  for arm in "${arms[@]}"; do
    names+=("${arm%%:*}")
    flags+=("${arm#*:}")
  done
  for ((r = 1; r <= ${ROUNDS:-3}; ++r)); do
    for i in "${!names[@]}"; do
      timeout "${AB_TIMEOUT:-60}" "$BENCH" "$CKPT" --contexts 1024 --batches "" --steps 32 ${flags[$i]} \
        > "$R/ab_${names[$i]}_$r.log" 2>&1
    done
  done
  python3 scripts/ab_medians.py "$R" "${names[@]}" >> "$S" 2>&1
  echo "a/b ($((SECONDS - T0)) s)" >> "$S"
fi
if [[ ${TABLE:-1} != 0 ]]; then
  timeout 120 "$BENCH" "$CKPT" --contexts 1024,16384,65536 --batches 8,32,64 --steps 16 ${ARGS:-} \
    > "$R/table.log" 2>&1
  echo "table rc $? ($((SECONDS - T0)) s)" >> "$S"
  cat "$R/table.log" >> "$S"
fi
kill "$CLOCKS" 2>/dev/null
# The clocks' spread over the run (MHz, W): min / median / max.
python3 - "$R/clocks.csv" >> "$S" 2>&1 <<'PY'
import csv, statistics, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) >= 4 and r[1].strip()[:1].isdigit()]
for name, col in (("SM MHz", 1), ("power W", 3)):
    v = sorted(float(r[col].split()[0]) for r in rows)
    if v:
        print(f"{name}: {v[0]:.0f} / {statistics.median(v):.0f} / {v[-1]:.0f} ({len(v)} samples)")
PY
if [[ ${TABLE:-1} != 0 && ${TRANSFORMERS:-1} != 0 ]]; then
  timeout 90 python3 scripts/bench_transformers_v4.py "$CKPT" --contexts 1024 --batches 8 \
    --budget-s 30 > "$R/transformers.log" 2>&1
  echo "transformers rc $? ($((SECONDS - T0)) s)" >> "$S"
  tail -15 "$R/transformers.log" >> "$S"
fi
cat "$S"
