#!/usr/bin/env python3
"""A traced decode + pick loop's steps (bench/trace/cupti_trace.cc's CSV, gzipped as
DIR/trace_NAME.csv.gz), one line per run NAME:

  python3 scripts/trace_period.py DIR NAME...             # the last 16 graph replays' median
      # period (start to start), wall, gap before each, internal streams, and when a replay's
      # second kernel starts after its first (us)
  python3 scripts/trace_period.py --segments DIR NAME...  # the median time between consecutive
      # mHC boundaries (hyper_grid_kernel starts): which sublayers grew between two runs
"""
import collections
import csv
import gzip
import statistics
import sys


def replays(path, last):
    """The last `last` graph replays, each its records sorted by start."""
    reps = collections.defaultdict(list)
    for r in csv.DictReader(gzip.open(path, "rt")):
        if r["graph"] not in ("0", ""):
            reps[(r["graph"], r["correlation"])].append(r)
    ordered = sorted(reps.values(), key=lambda v: min(int(x["start_ns"]) for x in v))[-last:]
    return [sorted(v, key=lambda x: int(x["start_ns"])) for v in ordered]


def period_line(reps):
    med = statistics.median
    starts = [int(v[0]["start_ns"]) for v in reps]
    ends = [max(int(x["end_ns"]) for x in v) for v in reps]
    per = [(starts[i] - starts[i - 1]) / 1e3 for i in range(1, len(reps))]
    gap = [(starts[i] - ends[i - 1]) / 1e3 for i in range(1, len(reps))]
    wall = [(e - s) / 1e3 for s, e in zip(starts, ends)]
    second = [(int(v[1]["start_ns"]) - int(v[0]["start_ns"])) / 1e3 for v in reps if len(v) > 1]
    streams = med(len({r["stream"] for r in v}) for v in reps)
    return (f"period {med(per):7.1f} wall {med(wall):7.1f} gap {med(gap):5.1f} "
            f"second {med(second):5.1f} streams {streams}")


def segments_line(reps):
    segs = []
    for v in reps:
        h = [int(x["start_ns"]) for x in v if "hyper_grid" in x["name"]]
        segs.append([(h[i + 1] - h[i]) / 1e3 for i in range(len(h) - 1)])
    med = [statistics.median(s[i] for s in segs) for i in range(min(map(len, segs)))]
    return " ".join(f"{x:6.1f}" for x in med) + f" sum {sum(med):6.1f}"


def main():
    args = sys.argv[1:]
    segments = args[:1] == ["--segments"]
    if segments:
        args = args[1:]
    if len(args) < 2:
        sys.exit(__doc__)
    for name in args[1:]:
        try:
            reps = replays(f"{args[0]}/trace_{name}.csv.gz", 14 if segments else 16)
        except OSError as e:
            print(f"{name:12s} no trace: {e}")
            continue
        print(f"{name:12s}", segments_line(reps) if segments else period_line(reps))


if __name__ == "__main__":
    main()
