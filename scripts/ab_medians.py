#!/usr/bin/env python3
"""Medians of bench_engine_cuda runs, one set of logs per configuration.

  python3 scripts/ab_medians.py DIR NAME...   # reads DIR/ab_NAME_*.log

Prints, for every measurement line the logs share (decode @ 1024, decode+pick, batches), each
configuration's median tokens/s and its spread, and the change of each configuration's median
against the first one's. Used by the device call scripts to compare interleaved runs.
"""
import glob
import re
import statistics
import sys


def read(path):
    # "decode+pick @ 1024      978.4    1974 MB ...": the name, then two spaces or more, then tok/s.
    out = {}
    for line in open(path, errors="replace"):
        m = re.match(r"^((?:decode|prefill)\S*(?: \S+)*?)\s{2,}([0-9.]+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    d, names = sys.argv[1], sys.argv[2:]
    runs = {n: [read(p) for p in sorted(glob.glob(f"{d}/ab_{n}_*.log"))] for n in names}
    keys = []
    for n in names:
        for r in runs[n]:
            keys += [k for k in r if k not in keys]
    print(f"{'measurement':28s}" + "".join(f"{n:>30s}" for n in names))
    for k in keys:
        row, base = f"{k:28s}", None
        for n in names:
            v = [r[k] for r in runs[n] if k in r]
            if not v:
                row += f"{'-':>30s}"
                continue
            med = statistics.median(v)
            base = med if base is None else base
            rel = f" {100 * (med / base - 1):+.1f}%" if n != names[0] else ""
            row += f"{med:.1f} ({min(v):.0f}-{max(v):.0f}){rel}".rjust(30)
        print(row)


if __name__ == "__main__":
    main()
