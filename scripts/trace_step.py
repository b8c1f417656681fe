#!/usr/bin/env python3
"""One replay of a captured CUDA graph, kernel by kernel, from bench/trace/cupti_trace.cc's CSV.

  python3 scripts/trace_step.py trace.csv [--graph 0] [--launch -1] [--top 25]
  python3 scripts/trace_step.py trace.csv --eager     # everything outside graphs (prefill), by name
  python3 scripts/trace_step.py trace.csv --gaps      # what runs between consecutive replays
  python3 scripts/trace_step.py trace.csv --overlap [--burst -1] [--gap-ms 2]
      # one burst of work outside graphs (a prefill: bursts are split by --gap-ms of no kernel),
      # each kernel's time alone on the GPU against its time beside other streams' kernels

Graphs are numbered by their first launch in the run (0: the first graph launched, which in
`bench_engine_cuda --contexts 1024 ...` is the batch-1 decode step at 1K); --launch picks the
replay (-1: the last, warm one). Prints every kernel and memset of that replay in start order
with its duration and the idle time before it (no other work of the replay running), then the
replay's wall time, its idle total, and the kernels summed by name.
"""
import argparse
import csv
import shutil
import subprocess
import sys
from collections import defaultdict


def demangle(names):
    if not shutil.which("c++filt"):
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


def short(name, width):
    # "void ns::kernel<T, 1>(args)" -> "kernel<T, 1>"
    head = name.replace("(anonymous namespace)::", "").replace("agentrt::engine::cuda::", "")
    head = head.split("(")[0]
    if head.startswith("void "):
        head = head[5:]
    return head[:width]


def eager_records(rows):
    recs = sorted((r for r in rows if not r["graph"]), key=lambda r: r["start_ns"])
    if not recs:
        sys.exit("trace_step: no records outside graphs")
    return recs


def eager_summary(rows, a):
    recs = eager_records(rows)
    names = demangle(sorted({r["name"] for r in recs}))
    by_name = defaultdict(lambda: [0, 0.0])
    busy, until = 0, recs[0]["start_ns"]
    for r in recs:
        s = by_name[short(names[r["name"]], a.width)]
        s[0] += 1
        s[1] += (r["end_ns"] - r["start_ns"]) / 1e6
        busy += max(0, r["end_ns"] - max(r["start_ns"], until))
        until = max(until, r["end_ns"])
    wall = until - recs[0]["start_ns"]
    print(f"{len(recs)} records outside graphs: wall {wall / 1e6:.1f} ms, "
          f"some kernel running {busy / 1e6:.1f} ms")
    print(f"\n{'count':>6} {'sum ms':>9}  kernel (by total duration; streams overlap)")
    for n, (cnt, dur) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:a.top]:
        print(f"{cnt:6d} {dur:9.2f}  {n}")


def bursts(recs, gap_ns):
    """Start-ordered records split where nothing runs for gap_ns: a benchmark's prefills (its
    warm-up passes and the measured ones) are bursts of eager work with host time between."""
    out, until = [], None
    for r in recs:
        if until is None or r["start_ns"] - until > gap_ns:
            out.append([])
            until = r["start_ns"]
        out[-1].append(r)
        until = max(until, r["end_ns"])
    return out


def overlap_summary(rows, a):
    """Which kernels the wall time of a burst is made of. A sweep over the burst's start and end
    events: an interval with one kernel running counts to that kernel as alone; one with several
    counts to each as beside (split evenly, so the columns add up to the busy time), and to the
    pair. A kernel's alone time is what the wall loses if it vanishes; time beside others is
    what a faster kernel may not return."""
    groups = bursts(eager_records(rows), int(a.gap_ms * 1e6))
    print(f"{len(groups)} bursts of work outside graphs (split at {a.gap_ms} ms of no kernel): " +
          ", ".join(f"#{i} {len(g)} kernels {(max(r['end_ns'] for r in g) - g[0]['start_ns']) / 1e6:.1f} ms"
                    for i, g in enumerate(groups[:12])) + (" ..." if len(groups) > 12 else ""))
    if not -len(groups) <= a.burst < len(groups):
        sys.exit(f"trace_step: --burst {a.burst} is out of range")
    burst = groups[a.burst]
    names = demangle(sorted({r["name"] for r in burst}))
    label = [short(names[r["name"]], a.width) for r in burst]
    events = sorted([(r["start_ns"], 1, i) for i, r in enumerate(burst)] +
                    [(r["end_ns"], 0, i) for i, r in enumerate(burst)])
    alone, beside = defaultdict(float), defaultdict(float)
    pairs = defaultdict(float)
    running, last, idle = set(), events[0][0], 0.0
    for t, kind, i in events:
        span = (t - last) / 1e6
        if span > 0:
            if not running:
                idle += span
            elif len(running) == 1:
                alone[label[next(iter(running))]] += span
            else:
                now = sorted({label[j] for j in running})
                for j in running:
                    beside[label[j]] += span / len(running)
                for x in range(len(now)):
                    for y in range(x + 1, len(now)):
                        pairs[(now[x], now[y])] += span
        last = t
        if kind:
            running.add(i)
        else:
            running.discard(i)
    wall = (max(r["end_ns"] for r in burst) - burst[0]["start_ns"]) / 1e6
    streams = sorted({r["stream"] for r in burst})
    print(f"\nburst {a.burst}: {len(burst)} kernels on {len(streams)} streams, wall {wall:.2f} ms: "
          f"one kernel alone {sum(alone.values()):.2f}, several at once "
          f"{wall - idle - sum(alone.values()):.2f}, nothing {idle:.2f}")
    total = defaultdict(float)
    count = defaultdict(int)
    for i, r in enumerate(burst):
        total[label[i]] += (r["end_ns"] - r["start_ns"]) / 1e6
        count[label[i]] += 1
    print(f"\n{'count':>5} {'sum ms':>8} {'alone':>8} {'beside':>8}  kernel (by alone time)")
    for n in sorted(total, key=lambda n: -alone[n])[:a.top]:
        print(f"{count[n]:5d} {total[n]:8.2f} {alone[n]:8.2f} {beside[n]:8.2f}  {n}")
    print(f"\n{'ms':>8}  kernels running at once (pairs, by time)")
    for (x, y), v in sorted(pairs.items(), key=lambda kv: -kv[1])[:a.top]:
        print(f"{v:8.2f}  {x}  |  {y}")


def gap_summary(rows, graphs, order, a):
    """Between two replays of one graph the GPU runs the host's work of a step (picks, copies,
    the metadata upload): its wall is the step's time beyond the graph's."""
    outside = sorted((r for r in rows if not r["graph"]), key=lambda r: r["start_ns"])
    names = demangle(sorted({r["name"] for r in outside}))
    for gi, g in enumerate(order):
        spans = sorted((min(r["start_ns"] for r in l), max(r["end_ns"] for r in l))
                       for l in graphs[g].values())
        if len(spans) < 3:
            continue
        walls = [(e - s) / 1e3 for s, e in spans]
        gaps = [(spans[i + 1][0] - spans[i][1]) / 1e3 for i in range(len(spans) - 1)]
        # Replays far apart belong to different phases of the run (another batch, a prefill).
        step = sorted(gaps)[len(gaps) // 2]
        near = [x for x in gaps if x < 4 * step + 50]
        print(f"graph #{gi}: {len(spans)} replays, wall median {sorted(walls)[len(walls) // 2]:.1f} "
              f"us, gap to the next median {step:.1f} us (mean {sum(near) / len(near):.1f} over "
              f"{len(near)} near pairs)")
        pairs = [i for i in range(len(gaps)) if gaps[i] < 4 * step + 50][-a.show:]
        for i in pairs:
            end, nxt = spans[i][1], spans[i + 1][0]
            print(f"  between replay {i} and {i + 1} (gap {(nxt - end) / 1e3:.1f} us):")
            for r in outside:
                if r["end_ns"] <= end - 20000 or r["start_ns"] >= nxt:
                    continue
                print(f"    {(r['start_ns'] - end) / 1e3:8.1f} {(r['end_ns'] - r['start_ns']) / 1e3:7.1f}"
                      f" st{r['stream']:<3d} {short(names[r['name']], a.width)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv")
    p.add_argument("--graph", type=int, default=0)
    p.add_argument("--launch", type=int, default=-1)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--width", type=int, default=70)
    p.add_argument("--quiet", action="store_true", help="summary only")
    p.add_argument("--eager", action="store_true",
                   help="sum the kernels launched outside graphs by name, with their busy time")
    p.add_argument("--gaps", action="store_true",
                   help="for every graph: the time between consecutive replays and, for the "
                        "last --show pairs, what ran outside graphs in between")
    p.add_argument("--show", type=int, default=2)
    p.add_argument("--overlap", action="store_true",
                   help="one burst of work outside graphs: each kernel's time alone against "
                        "its time beside other streams' kernels")
    p.add_argument("--burst", type=int, default=-1, help="--overlap's burst (-1: the last)")
    p.add_argument("--gap-ms", type=float, default=2.0,
                   help="--overlap: bursts are split where no kernel runs for this long")
    a = p.parse_args()

    with open(a.csv, newline="") as f:
        rows = [r for r in csv.DictReader(f)]
    if not rows:
        sys.exit(f"trace_step: {a.csv} holds no records")
    for r in rows:
        for k in ("start_ns", "end_ns", "correlation", "stream", "graph", "grid", "block"):
            r[k] = int(r[k])

    if a.eager:
        eager_summary(rows, a)
        return
    if a.overlap:
        overlap_summary(rows, a)
        return
    # graph id -> {correlation (one launch) -> records}
    graphs = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["graph"]:
            graphs[r["graph"]][r["correlation"]].append(r)
    if not graphs:
        sys.exit("trace_step: no graph launches in the trace")
    order = sorted(graphs, key=lambda g: min(r["start_ns"] for l in graphs[g].values() for r in l))
    if a.gaps:
        gap_summary(rows, graphs, order, a)
        return
    print(f"{len(order)} graphs: " + ", ".join(
        f"#{i} ({len(graphs[g])} launches, {len(next(iter(graphs[g].values())))} nodes)"
        for i, g in enumerate(order)))
    if not -len(order) <= a.graph < len(order):
        sys.exit(f"trace_step: --graph {a.graph} is out of range")
    launches = sorted(graphs[order[a.graph]].values(), key=lambda l: min(r["start_ns"] for r in l))
    if not -len(launches) <= a.launch < len(launches):
        sys.exit(f"trace_step: --launch {a.launch} is out of range ({len(launches)} launches)")
    recs = sorted(launches[a.launch], key=lambda r: r["start_ns"])
    names = demangle(sorted({r["name"] for r in recs}))

    t0 = recs[0]["start_ns"]
    busy_until = t0
    idle_total = 0
    by_name = defaultdict(lambda: [0, 0.0, 0.0])  # count, duration, idle before
    streams = sorted({r["stream"] for r in recs})
    if not a.quiet:
        print(f"{'start us':>9} {'dur us':>7} {'idle us':>7} {'st':>2} {'grid':>6}  kernel")
    for r in recs:
        idle = max(0, r["start_ns"] - busy_until)
        idle_total += idle
        busy_until = max(busy_until, r["end_ns"])
        dur = r["end_ns"] - r["start_ns"]
        n = short(names[r["name"]], a.width)
        s = by_name[n]
        s[0] += 1
        s[1] += dur / 1e3
        s[2] += idle / 1e3
        if not a.quiet:
            print(f"{(r['start_ns'] - t0) / 1e3:9.1f} {dur / 1e3:7.1f} {idle / 1e3:7.1f} "
                  f"{streams.index(r['stream']):2d} {r['grid']:6d}  {n}")
    wall = busy_until - t0
    print(f"\nreplay {a.launch} of graph #{a.graph}: {len(recs)} nodes, wall {wall / 1e3:.1f} us, "
          f"idle (nothing running) {idle_total / 1e3:.1f} us, {len(streams)} streams")
    print(f"\n{'count':>5} {'sum us':>8} {'idle before':>11}  kernel (by total duration)")
    for n, (cnt, dur, idle) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:a.top]:
        print(f"{cnt:5d} {dur:8.1f} {idle:11.1f}  {n}")


if __name__ == "__main__":
    main()
