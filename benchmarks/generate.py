"""Time and peak memory of `generate` at scale (default 1M users, 1M items, 20M impressions).

Usage: .venv/bin/python benchmarks/generate.py [--users N] [--items M] [--interactions K]
Writes into a fresh temporary directory (removed afterwards unless --keep) and prints one
JSON line plus a markdown table row for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--interactions", type=int, default=20_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="parent of the output directory")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()

    from mstage.data.synthetic import generate

    parent = Path(tempfile.mkdtemp(prefix="mstage-generate-", dir=args.dir))
    out = parent / "raw"
    try:
        started = time.perf_counter()
        summary = generate(out, args.users, args.items, args.interactions, args.seed)
        seconds = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_SELF)
        peak_mib, cpu_seconds = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
        sizes = {p.name: round(p.stat().st_size / 2**20, 1) for p in out.iterdir()}
    finally:
        if not args.keep:
            shutil.rmtree(parent, ignore_errors=True)
    result = {
        "users": args.users, "items": args.items, "interactions": args.interactions,
        "clicks": summary.clicks, "ctr": summary.ctr, "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "rows_per_second": round(args.interactions / seconds),
        "peak_rss_mib": round(peak_mib), "file_mib": sizes, "python": platform.python_version(),
    }
    print(json.dumps(result))
    print(f"| {args.users:,} | {args.items:,} | {args.interactions:,} | {seconds:.1f} | "
          f"{result['rows_per_second']:,} | {peak_mib:,.0f} | "
          f"{sizes.get('interactions.parquet', 0)} | {summary.ctr} |")


if __name__ == "__main__":
    main()
