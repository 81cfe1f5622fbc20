"""Benchmark of the walk-forward backtest on Hong Kong 1997-2005.

    python benchmarks/bench_backtest.py [--runs goal,rolling,expanding] [--workers 2]
                                        [--libraries lightgbm,xgboost] [--out bench-backtest]
                                        [--pipeline-params JSON] [--booster-params JSON]

Builds the warehouse and the point-in-time features from ../shared/data/hkjc-1997-2005, then runs:

- ``goal``: 2004-01-01..2005-08-31, expanding training window (the models issue's goals on the fundamental
  model: pseudo-R2 >= 0.13, ECE <= 0.005);
- ``rolling``: the seed's windows over the whole data (test windows 1998-09-01..2005-08-31, 365-day training
  window, 30-day test windows, retrained every 30 days);
- ``expanding``: the same test windows, training on all history before each fold.

The estimator is ``racequant.backtest.api.default_estimator`` (the models pipeline's defaults with LightGBM and
XGBoost, the backtest's libraries; ``--libraries catboost,lightgbm,xgboost`` for all three) with ``n_jobs=1`` per
fold; ``--pipeline-params`` / ``--booster-params`` override it.

Each run writes its report folder under --out and prints its headline; the summary goes to --out/summary.json
(strict JSON: a figure that does not exist is null, never NaN), with the machine (nproc, CPU model, RAM, date),
the load average (1/5/15 min) at the start and the end of each run and the 1-minute figure sampled every 15 s
during it (min / mean / max), since wall times on a shared machine mean little without it, and the CPU seconds
of the folds (summed over the worker processes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

# the test helpers, and this folder (benchcommon) also when the script is loaded by path, as a test does
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchcommon import LoadSampler, machine_info
from features_helpers import warehouse_from_folder
from racequant.backtest import WalkForwardSplit, run_backtest, write_outputs
from racequant.backtest.api import BACKTEST_LIBRARIES, default_estimator
from racequant.backtest.report import json_safe
from racequant.features.api import build_and_store
from racequant.models.api import fundamental_columns
from racequant.warehouse.backtest_store import load_backtest_frame

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hkjc-1997-2005"
RUNS: dict[str, dict[str, Any]] = {
    "goal": {"start": "2004-01-01", "end": "2005-08-31", "expanding": True},
    "rolling": {"start": "1998-09-01", "end": "2005-08-31", "expanding": False},
    "expanding": {"start": "1998-09-01", "end": "2005-08-31", "expanding": True},
}
HEADLINE = [
    "n_races",
    "pseudo_r2",
    "ece",
    "win_auc",
    "market_pseudo_r2",
    "combined_pseudo_r2",
    "market_recal_pseudo_r2",
    "delta_r2",
    "delta_r2_ci_low",
    "delta_r2_ci_high",
    "delta_r2_vs_recal_market",
    "delta_r2_vs_recal_market_ci_low",
    "delta_r2_vs_recal_market_ci_high",
    "roi_kelly",
    "roi_kelly_ci_low",
    "roi_kelly_ci_high",
    "roi_kelly_fundamental",
    "roi_kelly_fundamental_ci_low",
    "roi_kelly_fundamental_ci_high",
    "roi_kelly_combined",
    "roi_kelly_combined_ci_low",
    "roi_kelly_combined_ci_high",
    "n_bets_fundamental",
    "n_bets_combined",
    "final_bankroll_fundamental",
    "final_bankroll_combined",
    "roi_kelly_win",
    "roi_ci_low",
    "roi_ci_high",
    "roi_kelly_place",
    "roi_kelly_place_ci_low",
    "roi_kelly_place_ci_high",
    "roi_kelly_win_fundamental",
    "roi_kelly_win_fundamental_ci_low",
    "roi_kelly_win_fundamental_ci_high",
    "roi_flat_top_pick",
    "roi_flat_favourite",
    "n_bets",
    "n_bets_win_fundamental",
    "n_bets_place_fundamental",
    "n_bets_win_combined",
    "n_bets_place_combined",
    "roi_kelly_place_fundamental",
    "roi_kelly_place_fundamental_ci_low",
    "roi_kelly_place_fundamental_ci_high",
    "market_recal_gain_r2",
    "n_races_market",
    "n_races_combined",
    "market_pseudo_r2_combined_races",
    "interval_coverage_win",
    "favourite_strike_rate",
    "top_pick_strike_rate",
]


def machine() -> dict[str, Any]:
    """nproc, CPU model, RAM and date, for the benchmark record."""
    return {**machine_info(), "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """summary.json as strict JSON: NaN and infinities (a ROI without bets, a CI of one race) become null."""
    path.write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False, default=str) + "\n")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", default="goal,rolling,expanding")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--libraries", default=",".join(BACKTEST_LIBRARIES))
    parser.add_argument("--out", type=Path, default=Path("bench-backtest"))
    parser.add_argument("--pipeline-params", default=None, help="JSON of RacePipeline parameters over the default")
    parser.add_argument("--booster-params", default=None, help="JSON {library: {param: value}} over the default's")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    conn = warehouse_from_folder(DATA, "hkjc-kaggle")
    build_and_store(conn)
    frame = load_backtest_frame(conn)
    columns = fundamental_columns(frame)
    prep = time.perf_counter() - started
    print(f"warehouse + features: {len(frame)} runners, {len(columns)} fundamental features, {prep:.1f} s", flush=True)
    libraries = tuple(args.libraries.split(","))
    params: dict[str, Any] = {"libraries": libraries, "n_jobs": 1, **json.loads(args.pipeline_params or "{}")}
    estimator = default_estimator(**params)
    if args.booster_params:
        extra = json.loads(args.booster_params)
        base = estimator.booster_params or {}
        estimator.booster_params = {k: {**base.get(k, {}), **extra.get(k, {})} for k in {*base, *extra}}
    estimator_params = {k: v for k, v in vars(estimator).items() if not k.endswith("_")}
    summary: dict[str, Any] = {
        "machine": machine(),
        "prepare_seconds": round(prep, 1),
        "libraries": libraries,
        "estimator": estimator_params,
        "workers": args.workers,
        "runs": {},
    }
    summary_path = args.out / "summary.json"
    if summary_path.exists():  # keep the runs already recorded
        summary["runs"] = json.loads(summary_path.read_text()).get("runs", {})
    for name in args.runs.split(","):
        spec = RUNS[name]
        splitter = WalkForwardSplit(
            spec["start"],
            spec["end"],
            train_window_days=365,
            test_window_days=30,
            retrain_every_days=30,
            expanding=spec["expanding"],
        )
        t0, load_start = time.perf_counter(), load()
        sampler = LoadSampler().start()

        def tick(done: int, total: int, name: str = name, t0: float = t0) -> None:
            print(f"  [{name}] fold {done}/{total} ({time.perf_counter() - t0:.0f} s)", flush=True)

        result = run_backtest(
            frame,
            estimator,
            splitter,
            feature_columns=columns,
            workers=args.workers if args.workers > 1 else None,
            progress=tick,
        )
        wall = time.perf_counter() - t0
        sampler.stop()
        load_average = {**sampler.summary(), "n": len(sampler.samples)}
        load_end = load()
        paths = write_outputs(result, args.out / name)
        m = result.metrics
        row = {k: m.get(k) for k in HEADLINE}
        row.update(
            wall_seconds=round(wall, 1),
            n_folds=len(result.folds),
            libraries=libraries,
            started=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - wall)),
            load_average_1min=load_average,
            load_average_start=load_start,
            load_average_end=load_end,
            fold_fit_seconds_sum=round(sum(f["fit_seconds"] for f in result.fold_info), 1),
            fold_cpu_seconds_sum=round(
                sum(f["fit_cpu_seconds"] + f["predict_cpu_seconds"] for f in result.fold_info), 1
            ),
            fold_train_races=[f["n_train_races"] for f in result.fold_info],
            a_mean=m["second_stage"]["a_mean"],
            b_mean=m["second_stage"]["b_mean"],
            report=str(paths["report"]),
        )
        summary["runs"][name] = row
        write_summary(summary_path, summary)
        print(f"{name}: {len(result.folds)} folds in {wall:.0f} s", flush=True)
        print(json.dumps(json_safe(row), indent=1, default=str), flush=True)


if __name__ == "__main__":
    main()
