"""Benchmark and report of the point-in-time features.

    python benchmarks/bench_features.py [--sim-runners 1000000 --memory-limit 3GB] [--report docs/features_report.md]
    python benchmarks/bench_features.py --card-only   # one 14-runner race card only (median of 20)
    python benchmarks/bench_features.py --sim-only --sim-runners 1000000 [--sim-db FILE]  # the large build only

Measures the full HK 1997-2005 build, one 14-runner race card, a naive per-horse pandas implementation of a
handful of the same features, optionally a large simulated build (time and peak RSS of a child process
running `racequant features build`, the user's command), and writes the coverage table and univariate win
AUCs used in docs/features.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from features_helpers import card_of, warehouse_from_folder, warehouse_from_simulation
from racequant.features import build_features, features_for_card
from racequant.features.build import refresh_card_state
from racequant.features.manifest import all_specs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def card_benchmark(conn, card: dict, name: str, rounds: int = 5, per_round: int = 20) -> None:  # type: ignore[no-untyped-def]
    """One card by the compiled engine (the serving path) and by the SQL statements (``compiled=False``), in
    interleaved rounds of ``per_round`` calls each, so both see the same load; medians per round and overall."""
    started = time.perf_counter()
    features_for_card(conn, card)  # loads the engine (the stored state in memory, the compiled program)
    print(f"{name}: race-card engine loaded in {time.perf_counter() - started:.2f} s (once per warehouse change)")
    features_for_card(conn, card, compiled=False)  # warm-up
    times: dict[str, list[float]] = {"compiled": [], "sql": []}
    for r in range(rounds):
        load = os.getloadavg()[0]
        medians = {}
        for mode in ("compiled", "sql"):
            round_times = []
            for _ in range(per_round):
                t = time.perf_counter()
                features_for_card(conn, card, compiled=mode == "compiled")
                round_times.append(time.perf_counter() - t)
            times[mode] += round_times
            medians[mode] = np.median(round_times) * 1000
        print(
            f"{name}: round {r + 1}: one 14-runner card, median of {per_round}: compiled {medians['compiled']:.1f} ms, "
            f"SQL {medians['sql']:.0f} ms (load average {load:.2f})"
        )
    fast, sql = (np.array(times[m]) * 1000 for m in ("compiled", "sql"))
    print(
        f"{name}: one 14-runner card, median of {len(fast)}: compiled {np.median(fast):.1f} ms (min {fast.min():.1f}, "
        f"max {fast.max():.1f}); SQL {np.median(sql):.0f} ms (min {sql.min():.0f}, max {sql.max():.0f}); "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    # as the API serves: the warehouse file on a read-only connection (its fingerprint is checked once)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "warehouse.duckdb"
        conn.execute(f"ATTACH '{path}' AS bench_file")
        conn.execute("COPY FROM DATABASE memory TO bench_file")
        conn.execute("DETACH bench_file")
        with duckdb.connect(str(path), read_only=True) as served:
            features_for_card(served, card)
            load = os.getloadavg()[0]
            served_times = []
            for _ in range(rounds * per_round):
                t = time.perf_counter()
                features_for_card(served, card)
                served_times.append(time.perf_counter() - t)
    ms = np.array(served_times) * 1000
    print(
        f"{name}: one 14-runner card on a read-only warehouse file (as served), median of {len(ms)}: "
        f"{np.median(ms):.1f} ms (min {ms.min():.1f}, max {ms.max():.1f}); load average {load:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    ranks = pd.Series(score).rank().to_numpy()
    pos = label == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_table(conn, frame: pd.DataFrame) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    won = conn.execute(
        "SELECT race_id, horse_id, (status = 'finished' AND finish_position = 1)::INT AS won FROM runners"
    ).df()
    data = frame.merge(won, on=["race_id", "horse_id"])
    rows = []
    for spec in all_specs():
        if spec.dtype != "double":
            continue
        ok = data[spec.name].notna()
        if ok.sum() < 100 or data.loc[ok, "won"].nunique() < 2:
            continue
        auc = _auc(data.loc[ok, spec.name].to_numpy(float), data.loc[ok, "won"].to_numpy())
        rows.append(
            {
                "feature": spec.name,
                "category": spec.category,
                "auc": auc,
                "strength": max(auc, 1 - auc),
                "direction": "+" if auc >= 0.5 else "-",
            }
        )
    return pd.DataFrame(rows).sort_values("strength", ascending=False)


def naive_pandas(conn) -> float:  # type: ignore[no-untyped-def]
    """A per-horse Python loop: last-3 mean finishing position, career win rate, days since last run."""
    runs = conn.execute(
        "SELECT u.race_id, u.horse_id, r.date, r.race_no, u.finish_position, "
        "(u.finish_position = 1)::INT AS won FROM runners u JOIN races r USING (race_id) "
        "WHERE u.status <> 'withdrawn' ORDER BY r.date, r.race_no"
    ).df()
    started = time.perf_counter()
    out = []
    for _horse, g in runs.groupby("horse_id", sort=False):
        for i in range(len(g)):
            past = g.iloc[:i]
            out.append(
                (
                    past["finish_position"].tail(3).mean() if i else np.nan,
                    past["won"].mean() if i else np.nan,
                    (g["date"].iloc[i] - past["date"].iloc[-1]).days if i else np.nan,
                )
            )
    return time.perf_counter() - started


def _simulated_warehouse(n_runners: int, db_path: Path) -> None:
    """Simulate about ``n_runners`` runners into a new warehouse file ``db_path``."""
    from racequant.ingest import parse
    from racequant.ingest.simulator import simulate, write_results
    from racequant.warehouse import migrate
    from racequant.warehouse.load import load_results

    with tempfile.TemporaryDirectory() as tmp:
        n_races = max(round(n_runners / 12.3), 10)  # the simulator averages about 12.3 runners a race
        started = time.perf_counter()
        write_results(simulate(n_races, 1), Path(tmp) / "results")
        conn = duckdb.connect(str(db_path))
        migrate(conn)
        load_results(conn, parse(Path(tmp) / "results", "racequant", skip_invalid=True), tmp)
        n = conn.execute("SELECT count(*) FROM runners").fetchall()[0][0]
        conn.close()
    print(f"simulated: {n_races} races, {n} runners written and loaded in {time.perf_counter() - started:.0f} s")


def big_simulated_build(n_runners: int, memory_limit: str, sim_db: Path | None) -> None:
    """Time ``racequant features build`` (the user's command: build, store, race-card state) on about
    ``n_runners`` simulated runners, in a child process whose peak RSS is the command's own.

    ``sim_db``: a simulated warehouse to reuse (created there if missing); the build runs on a copy of it.
    """
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "sim.duckdb"
        if sim_db is None:
            _simulated_warehouse(n_runners, db_path)
        else:
            if not sim_db.exists():
                _simulated_warehouse(n_runners, sim_db)
            shutil.copyfile(sim_db, db_path)
        env = {**os.environ, "RACEQUANT_FEATURES_MEMORY_LIMIT": memory_limit}
        command = [sys.executable, "-c", "from racequant.cli import main; main()", "features", "build"]
        load = os.getloadavg()
        started = time.perf_counter()
        done = subprocess.run(
            [*command, "--db", str(db_path), "--json"], capture_output=True, text=True, check=True, env=env
        )
        wall = time.perf_counter() - started
        summary = json.loads(done.stdout)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak = usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux
        print(
            f"simulated: `racequant features build` stored {summary['rows']} feature rows of {summary['races']} "
            f"races; build {summary['seconds']:.1f} s, command wall {wall:.1f} s, CPU {usage.ru_utime:.0f} s user "
            f"+ {usage.ru_stime:.0f} s system; peak RSS {peak / 2**30:.2f} GiB ({peak / 1e9:.2f} GB); memory_limit "
            f"{memory_limit}; load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sim-runners", type=int, default=0, help="also build on about this many simulated runners")
    parser.add_argument("--report", type=Path, default=None, help="write coverage and AUC tables (markdown)")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--card-only", action="store_true", help="only the race card on HK 1997-2005")
    parser.add_argument(
        "--memory-limit", default="3GB", help="RACEQUANT_FEATURES_MEMORY_LIMIT of the large simulated build"
    )
    parser.add_argument("--sim-db", type=Path, default=None, help="reuse (or create) this simulated warehouse")
    parser.add_argument("--sim-only", action="store_true", help="only the large simulated build")
    args = parser.parse_args()
    if args.sim_only:
        big_simulated_build(args.sim_runners or 1_000_000, args.memory_limit, args.sim_db)
        return
    mem = psutil.virtual_memory().total / 2**30
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, {mem:.1f} GiB RAM")
    report: list[str] = []
    sets = (("hkjc-1997-2005", "hkjc-kaggle"), ("hkjc-2016-2021", "racequant"))
    for name, fmt in sets[:1] if args.card_only else sets:
        conn = warehouse_from_folder(DATA / name, fmt)
        if not args.card_only:
            build_features(conn)  # warm-up
            started = time.perf_counter()
            frame = build_features(conn)
            seconds = time.perf_counter() - started
            print(f"{name}: full build {seconds:.2f} s for {len(frame)} runners")
        if name == "hkjc-1997-2005":
            race_id = conn.execute(
                "SELECT race_id FROM runners WHERE status <> 'withdrawn' GROUP BY race_id HAVING count(*) = 14 "
                "ORDER BY race_id DESC LIMIT 1"
            ).fetchone()[0]
            card = card_of(conn, race_id)
            started = time.perf_counter()
            refresh_card_state(conn, force=True)
            seconds = time.perf_counter() - started
            print(f"{name}: race-card state (base stage + group totals) stored in {seconds:.2f} s")
            card_benchmark(conn, card, name)
            print(f"load average {os.getloadavg()[0]:.2f}")
            if args.card_only:
                return
            if not args.skip_naive:
                naive = naive_pandas(conn)
                print(f"{name}: naive per-horse pandas (3 features) {naive:.1f} s")
        cov = frame[[s.name for s in all_specs()]].notna().mean()
        report.append(f"## Coverage on {name}\n\n| feature | share non-missing |\n|---|---|")
        report += [f"| {k} | {v:.3f} |" for k, v in cov.items()]
        aucs = auc_table(conn, frame)
        report.append(
            f"\n## Strongest univariate win AUC on {name}\n\n| feature | category | AUC | direction |\n"
            "|---|---|---|---|"
        )
        report += [
            f"| {r.feature} | {r.category} | {r.strength:.3f} | {r.direction} |"
            for r in aucs[aucs["category"] != "market"].head(20).itertuples()
        ]
        report.append("")
        conn.close()
    with tempfile.TemporaryDirectory() as tmp:
        conn = warehouse_from_simulation(3000, 7, Path(tmp))
        frame = build_features(conn)
        aucs = auc_table(conn, frame).set_index("feature")
        ped = aucs.loc[[n for n in aucs.index if n.startswith(("sire", "dam"))]].sort_values("strength")
        report.append("## Pedigree signal on the simulator (3,000 races)\n")
        report.append("| feature | AUC | direction |\n|---|---|---|")
        report += [f"| {k} | {r.strength:.3f} | {r.direction} |" for k, r in ped.iloc[::-1].iterrows()]
        conn.close()
    if args.sim_runners:
        big_simulated_build(args.sim_runners, args.memory_limit, args.sim_db)
    if args.report:
        args.report.write_text("\n".join(report) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
