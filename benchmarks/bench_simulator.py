"""Benchmark the race simulator: runners per second, peak memory, and CSV / Parquet write times.

Run as ``python benchmarks/bench_simulator.py [--races N] [--seed S]``; files go to a temporary folder.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from racequant.ingest.simulator import simulate, write_results


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--races", type=int, default=81_500, help="races to simulate (81,500 is about 1M runners)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    results = simulate(args.races, seed=args.seed)
    elapsed = time.perf_counter() - start
    n_runners = len(results.runners)
    print(f"simulate: {args.races:,} races, {n_runners:,} runners, {len(results.horses):,} horses in {elapsed:.1f} s")
    print(f"          {n_runners / elapsed:,.0f} runners/s, peak RSS {_peak_rss_mb():,.0f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        for file_format in ("csv", "parquet"):
            start = time.perf_counter()
            paths = write_results(results, Path(tmp) / file_format, file_format=file_format)  # type: ignore[arg-type]
            size_mb = sum(p.stat().st_size for p in paths) / 1e6
            print(f"write {file_format}: {time.perf_counter() - start:.1f} s, {size_mb:,.0f} MB")
    print(f"peak RSS overall {_peak_rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()
