"""Ingest benchmark: parse + load of the real data sets into a fresh temporary DuckDB warehouse.

Run: ``.venv/bin/python benchmarks/bench_ingest.py [--repeats 3] [--json]``. The goal is the full
HK 1997-2005 files (parse + load) in under 10 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from racequant.ingest import parse
from racequant.warehouse import connect
from racequant.warehouse.load import load_results
from racequant.warehouse.queries import db_info

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CASES = (("hkjc-1997-2005", "hkjc-kaggle"), ("hkjc-2016-2021", "racequant"))
GOAL_S = 10.0


def machine() -> dict[str, object]:
    """nproc, CPU model and RAM of this machine."""
    cpu = platform.processor() or "unknown"
    ram_gb = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gb = round(int(line.split()[1]) / 1024**2, 1)
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gb": ram_gb, "python": platform.python_version()}


def bench_one(folder: Path, fmt: str) -> dict[str, object]:
    """One parse + load into a new warehouse; seconds of each step and the counts stored."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        parsed = parse(folder, fmt)
        parsed_at = time.perf_counter()
        with connect(Path(tmp) / "bench.duckdb") as conn:
            connected_at = time.perf_counter()
            load_results(conn, parsed, str(folder))
            loaded_at = time.perf_counter()
            info = db_info(conn)
    return {
        "parse_s": parsed_at - started,
        "load_s": loaded_at - connected_at,
        "total_s": loaded_at - started,
        "races": info["races"],
        "runners": info["runners"],
        "horses": info["horses"],
    }


def run(repeats: int = 3) -> dict[str, object]:
    """Median timings over ``repeats`` runs of every data set present."""
    results: dict[str, object] = {"date": date.today().isoformat(), "machine": machine(), "cases": []}
    for name, fmt in CASES:
        folder = DATA / name
        if not folder.is_dir():
            continue
        runs = [bench_one(folder, fmt) for _ in range(repeats)]
        case = {"data": name, "format": fmt, "repeats": repeats}
        for key in ("parse_s", "load_s", "total_s"):
            case[key] = round(statistics.median(float(r[key]) for r in runs), 2)  # type: ignore[arg-type]
        case.update({k: runs[0][k] for k in ("races", "runners", "horses")})
        results["cases"].append(case)  # type: ignore[attr-defined]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    results = run(args.repeats)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    m = results["machine"]
    print(f"{results['date']}  {m['nproc']} cores, {m['cpu']}, {m['ram_gb']} GB RAM")  # type: ignore[index]
    for case in results["cases"]:  # type: ignore[attr-defined]
        flag = (
            ""
            if case["data"] != "hkjc-1997-2005"
            else ("  (goal < 10 s: met)" if case["total_s"] < GOAL_S else "  (goal < 10 s: MISSED)")
        )
        print(
            f"{case['data']:<16} {case['format']:<12} parse {case['parse_s']:5.2f} s  load {case['load_s']:5.2f} s  "
            f"total {case['total_s']:5.2f} s  ({case['races']} races, {case['runners']} runners, "
            f"{case['horses']} horses; median of {case['repeats']}){flag}"
        )


if __name__ == "__main__":
    main()
