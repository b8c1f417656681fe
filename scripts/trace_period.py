#!/usr/bin/env python3
"""Per traced run (bench/trace/cupti_trace.cc's CSV, gzipped as DIR/trace_NAME.csv.gz): the last
16 graph replays' median period (start to start), wall, gap before each, internal streams, and
when a replay's second kernel starts after its first (us). The step of a decode + pick loop.

  python3 scripts/trace_period.py DIR NAME...
"""
import collections, csv, gzip, statistics, sys
d = sys.argv[1]
for n in sys.argv[2:]:
    try:
        rows = list(csv.DictReader(gzip.open(f"{d}/trace_{n}.csv.gz", "rt")))
    except OSError as e:
        print(n, "no trace:", e); continue
    reps = collections.defaultdict(list)
    for r in rows:
        if r["graph"] not in ("0", ""):
            reps[(r["graph"], r["correlation"])].append(r)
    rl = sorted((min(int(x["start_ns"]) for x in v), max(int(x["end_ns"]) for x in v), v) for v in reps.values())
    last = rl[-16:]
    per = [(last[i][0] - last[i - 1][0]) / 1e3 for i in range(1, len(last))]
    gap = [(last[i][0] - last[i - 1][1]) / 1e3 for i in range(1, len(last))]
    wall = [(x[1] - x[0]) / 1e3 for x in last]
    second = []
    for x in last:
        starts = sorted(int(r["start_ns"]) for r in x[2])
        if len(starts) > 1: second.append((starts[1] - starts[0]) / 1e3)
    streams = statistics.median(len({r["stream"] for r in x[2]}) for x in last)
    print(f"{n:12s} period {statistics.median(per):7.1f} wall {statistics.median(wall):7.1f} "
          f"gap {statistics.median(gap):5.1f} second {statistics.median(second):5.1f} streams {streams}")
