"""Benchmark and report of the point-in-time features.

    python benchmarks/bench_features.py [--sim-runners 1000000] [--report docs/features_report.md]

Measures the full HK 1997-2005 build, one 14-runner race card, a naive per-horse pandas implementation of a
handful of the same features, optionally a large simulated build (time and peak RSS), and writes the
coverage table and univariate win AUCs used in docs/features.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from features_helpers import card_of, warehouse_from_folder, warehouse_from_simulation
from racequant.features import build_features, features_for_card
from racequant.features.manifest import all_specs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
        rows.append({"feature": spec.name, "category": spec.category, "auc": auc,
                     "strength": max(auc, 1 - auc), "direction": "+" if auc >= 0.5 else "-"})
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
            out.append((
                past["finish_position"].tail(3).mean() if i else np.nan,
                past["won"].mean() if i else np.nan,
                (g["date"].iloc[i] - past["date"].iloc[-1]).days if i else np.nan,
            ))
    return time.perf_counter() - started


class PeakRss:
    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process(os.getpid())
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sim-runners", type=int, default=0, help="also build on about this many simulated runners")
    parser.add_argument("--report", type=Path, default=None, help="write coverage and AUC tables (markdown)")
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()
    mem = psutil.virtual_memory().total / 2**30
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, {mem:.1f} GiB RAM")
    report: list[str] = []
    for name, fmt in (("hkjc-1997-2005", "hkjc-kaggle"), ("hkjc-2016-2021", "racequant")):
        conn = warehouse_from_folder(DATA / name, fmt)
        build_features(conn)  # warm-up
        started = time.perf_counter()
        frame = build_features(conn)
        seconds = time.perf_counter() - started
        print(f"{name}: full build {seconds:.2f} s for {len(frame)} runners")
        if name == "hkjc-1997-2005":
            race_id = conn.execute(
                "SELECT race_id FROM runners WHERE status <> 'withdrawn' GROUP BY race_id HAVING count(*) = 14 "
                "ORDER BY race_id DESC LIMIT 1").fetchone()[0]
            card = card_of(conn, race_id)
            times = []
            for _ in range(5):
                started = time.perf_counter()
                features_for_card(conn, card)
                times.append(time.perf_counter() - started)
            print(f"{name}: one 14-runner card, median {np.median(times) * 1000:.0f} ms")
            if not args.skip_naive:
                naive = naive_pandas(conn)
                print(f"{name}: naive per-horse pandas (3 features) {naive:.1f} s")
        cov = frame[[s.name for s in all_specs()]].notna().mean()
        report.append(f"## Coverage on {name}\n\n| feature | share non-missing |\n|---|---|")
        report += [f"| {k} | {v:.3f} |" for k, v in cov.items()]
        aucs = auc_table(conn, frame)
        report.append(f"\n## Strongest univariate win AUC on {name}\n\n| feature | category | AUC | direction |\n"
                      "|---|---|---|---|")
        report += [f"| {r.feature} | {r.category} | {r.strength:.3f} | {r.direction} |"
                   for r in aucs[aucs["category"] != "market"].head(20).itertuples()]
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
        with tempfile.TemporaryDirectory() as tmp:
            n_races = max(args.sim_runners // 12, 10)
            conn = warehouse_from_simulation(n_races, 1, Path(tmp))
            n = conn.execute("SELECT count(*) FROM runners").fetchone()[0]
            with PeakRss() as rss:
                started = time.perf_counter()
                build_features(conn)
                seconds = time.perf_counter() - started
            print(f"simulated: {n} runners built in {seconds:.1f} s, peak RSS {rss.peak / 2**30:.2f} GiB")
    if args.report:
        args.report.write_text("\n".join(report) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
