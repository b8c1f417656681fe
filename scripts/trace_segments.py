#!/usr/bin/env python3
"""Median time between consecutive mHC boundaries (hyper_grid_kernel starts) of the last 14
graph replays of each traced run (DIR/trace_NAME.csv.gz, bench/trace/cupti_trace.cc's CSV):
which sublayers of a decode step grew between two configurations.

  python3 scripts/trace_segments.py DIR NAME...
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
    rl = sorted(reps.values(), key=lambda v: min(int(x["start_ns"]) for x in v))[-14:]
    segs = []
    for v in rl:
        h = sorted(int(x["start_ns"]) for x in v if "hyper_grid" in x["name"])
        segs.append([(h[i + 1] - h[i]) / 1e3 for i in range(len(h) - 1)])
    med = [statistics.median(s[i] for s in segs) for i in range(min(map(len, segs)))]
    print(f"{n:8s}", " ".join(f"{x:6.1f}" for x in med), f"sum {sum(med):6.1f}")
