#!/usr/bin/env python3
"""Where one kernel's warps spend their time, from Nsight Compute's SASS page.

  python3 scripts/ncu_sass_summary.py SASS.csv [--per N] [--top 25] [--regions 0.005]

SASS.csv is `ncu -i REPORT --page source --csv --print-source sass` of a report collected with
`--section SourceCounters` (scripts/device_ncu_prefill.sh writes one per kernel). Prints:
  - the stall reasons over all warp samples (a sample: one warp's state at one moment);
  - the kernel's code as regions of one loop level (neighbouring instructions whose execution
    counts are within a factor of 2), each with its share of the samples and, where that is 5%
    or more, its instructions per execution unit by opcode (--per N: divide by N, e.g. the
    warps times the tiles; default: the region's largest execution count);
  - the --top instructions with the most samples and their three largest stall reasons.
"""
import argparse
import collections
import csv
import sys

SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def read(path):
    rows = list(csv.reader(open(path, newline="", errors="replace")))
    start = next((i for i, r in enumerate(rows) if r and r[0] == "Address"), None)
    if start is None:
        sys.exit(f"{path}: no 'Address' header row (not a --page source --csv export?)")
    header = rows[start]
    for need in ("Source", SAMPLES, EXECUTED):
        if need not in header:
            sys.exit(f"{path}: no '{need}' column (collect with --section SourceCounters)")
    col = {name: i for i, name in enumerate(header)}
    stalls = [n for n in header if n.startswith("stall_") and "Not Issued" not in n]
    out = []
    for r in rows[start + 1:]:
        if len(r) < len(header):
            continue
        out.append({
            "source": r[col["Source"]].strip(),
            "samples": number(r[col[SAMPLES]]),
            "executed": number(r[col[EXECUTED]]),
            "stalls": {n[len("stall_"):]: number(r[col[n]]) for n in stalls},
        })
    return out


def opcode(source):
    words = source.split()
    if words and words[0].startswith("@"):  # predicate
        words = words[1:]
    return words[0].split(".")[0] if words else "?"


def regions(rows):
    # Neighbouring instructions of one loop level: execution counts within a factor of 2 of the
    # region's largest (a branch inside a loop body halves a count, a loop level multiplies it);
    # never-executed code forms regions of its own.
    out = []
    for i, r in enumerate(rows):
        c = r["executed"]
        g = out[-1] if out else None
        if g and (c == 0) == (g["count"] == 0) and (c == 0 or 0.5 <= c / g["count"] <= 2.0):
            g["last"] = i
            g["count"] = max(g["count"], c)
        else:
            out.append({"first": i, "last": i, "count": c})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv")
    p.add_argument("--per", type=float, default=0, help="divide instruction counts by this")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--regions", type=float, default=0.005,
                   help="merged code regions below this share of the samples are not listed")
    a = p.parse_args()
    rows = read(a.csv)
    total = sum(r["samples"] for r in rows) or 1.0
    executed = sum(r["executed"] for r in rows)
    print(f"{len(rows)} instructions, {executed:,.0f} executed (warp-level), {total:,.0f} samples")

    reasons = collections.Counter()
    for r in rows:
        reasons.update(r["stalls"])
    print("\nstall reasons, % of samples:")
    for name, v in reasons.most_common(12):
        print(f"  {name:<20} {100 * v / total:5.1f}")

    print("\ncode regions by loop level (instructions per unit: executed / the region's largest "
          "count, or --per):")
    for g in regions(rows):
        body = rows[g["first"]:g["last"] + 1]
        share = sum(r["samples"] for r in body) / total
        if share < a.regions:
            continue
        per = a.per or g["count"] or 1.0
        count = sum(r["executed"] for r in body)
        print(f"  [{g['first']}, {g['last']}] executed up to {g['count']:,.0f} times: "
              f"{100 * share:.1f}% of samples, {count / per:,.1f} instructions per unit")
        if share < 0.05:
            continue
        ops = collections.Counter()
        op_samples = collections.Counter()
        for r in body:
            ops[opcode(r["source"])] += r["executed"]
            op_samples[opcode(r["source"])] += r["samples"]
        for name, v in ops.most_common(10):
            print(f"      {name:<10} {v / per:8.1f}  ({100 * op_samples[name] / total:.1f}% of samples)")

    print(f"\nthe {a.top} instructions with the most samples (index, % of samples, executed, stalls):")
    order = sorted(range(len(rows)), key=lambda i: -rows[i]["samples"])[:a.top]
    for i in sorted(order):
        r = rows[i]
        top3 = sorted(r["stalls"].items(), key=lambda kv: -kv[1])[:3]
        why = " ".join(f"{k}:{100 * v / total:.2f}" for k, v in top3 if v > 0)
        print(f"  {i:5d} {100 * r['samples'] / total:5.2f} {r['executed']:13,.0f}  "
              f"{r['source'][:56]:<56} {why}")


if __name__ == "__main__":
    main()
