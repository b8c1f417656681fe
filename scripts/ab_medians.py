#!/usr/bin/env python3
"""Medians of bench_engine_cuda runs, one set of logs per configuration.

  python3 scripts/ab_medians.py [--prefix ab] DIR NAME...   # reads DIR/PREFIX_NAME_*.log

Prints, for every measurement line the logs share (decode @ 1024, decode+pick, batches), each
configuration's median tokens/s and its spread, and the change of each configuration's median
against the first one's. Used by scripts/device_ab.sh and the device call scripts to compare
interleaved runs.
"""
import glob
import re
import statistics
import sys


def read(path):
    # The benchmark prints "%-28s %12.1f ...": the name, then tokens/s.
    out = {}
    for line in open(path, errors="replace"):
        if re.match(r"^(decode|prefill)", line) and len(line) > 29:
            fields = line[28:].split()
            if fields and re.match(r"^[\d.]+$", fields[0]):
                out.setdefault(line[:28].strip(), float(fields[0]))
    return out


def main():
    args, prefix = sys.argv[1:], "ab"
    if args[:1] == ["--prefix"] and len(args) > 1:
        prefix, args = args[1], args[2:]
    if len(args) < 2:
        sys.exit(__doc__)
    d, names = args[0], args[1:]
    runs = {n: [read(p) for p in sorted(glob.glob(f"{d}/{prefix}_{n}_*.log"))] for n in names}
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
