"""Plain functions behind ``racequant backtest`` and the demo's last step (the CLI only prints).

``backtest_from_warehouse`` reads the stored features and results, runs the walk-forward backtest with the
models pipeline, writes the outputs and stores the run; ``demo_backtest`` does the same on a short recent
window with a light pipeline; ``headline_text`` is the headline table as fixed-width text.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from racequant.backtest.engine import BacktestResult, BettingConfig, Progress, headline_rows, run_backtest
from racequant.backtest.report import store_result, write_outputs
from racequant.backtest.splitter import WalkForwardSplit

logger = logging.getLogger(__name__)


# The walk-forward backtest refits the pipeline once per fold (80 folds over HK 1998-2005, 289,177 training
# races in all with --expanding), and CatBoost is more than half of each fit's CPU. On 2003, by the selection
# protocol of docs/models.md (train < 2002-01-09, validate on 2002, score 2003 uncalibrated, one thread per
# booster, with the pipeline's refit on train + validation; 2026-11-27) the blend without CatBoost is as good as
# with it: pseudo-R2 0.1471 against 0.1465 (CatBoost's blend weight 0.17, CatBoost alone 0.1320). So the
# backtest's per-fold pipeline was the models pipeline's defaults with LightGBM and XGBoost. With the place
# boosters in the win blend (2026-11-27, session 3) and the same protocol, LightGBM alone scores 2003 as well as
# LightGBM + XGBoost: pseudo-R2 0.1493 against 0.1489, AUC 0.7587 / 0.7583, ECE 0.0055 / 0.0067, top pick 27.4% /
# 28.1% (within one standard error, 1.6 points) for 54% less fit CPU (20.7 s against 44.6 s). The full expanding
# run over 1998-2005 could not fit 20 minutes on 2 cores with XGBoost (~1,360 s). So the per-fold pipeline is
# LightGBM's win and place boosters; ``libraries=`` (``racequant backtest --libraries``) brings the others back.
BACKTEST_LIBRARIES: tuple[str, ...] = ("lightgbm",)


def default_estimator(**params: Any) -> Any:
    """The models pipeline (``racequant.models.pipeline.RacePipeline``) with ``params``; the libraries default
    to ``BACKTEST_LIBRARIES`` and the cross-fitted calibration to off (``refit_on_calibration=False``): a fold
    refits monthly anyway, and the option's two extra fits would double the 80 folds' time."""
    from racequant.models.pipeline import RacePipeline

    return RacePipeline(**{"libraries": BACKTEST_LIBRARIES, "refit_on_calibration": False, **params})


def backtest_from_warehouse(
    conn: duckdb.DuckDBPyConnection,
    out_dir: Path | str,
    splitter: WalkForwardSplit,
    *,
    estimator: Any = None,
    betting: BettingConfig | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Progress | None = None,
    store: bool = True,
    **run_kwargs: Any,
) -> tuple[BacktestResult, dict[str, Path]]:
    """Run the backtest on the warehouse's stored features; write DIR/metrics.json, predictions.parquet,
    bankroll.csv, report.html; store the run (``store``); return the result and the paths. ``run_kwargs`` go to
    ``run_backtest`` (second_stage_min_races, n_bootstrap, random_state)."""
    from racequant.models.api import fundamental_columns
    from racequant.warehouse.backtest_store import load_backtest_frame

    frame = load_backtest_frame(conn, until=splitter.end)
    estimator = estimator if estimator is not None else default_estimator()
    result = run_backtest(
        frame,
        estimator,
        splitter,
        feature_columns=fundamental_columns(frame),
        betting=betting,
        workers=workers,
        scheduler=scheduler,
        progress=progress,
        **run_kwargs,
    )
    paths = write_outputs(result, out_dir)
    if store:
        store_result(conn, result)
    return result, paths


def demo_backtest(
    conn: duckdb.DuckDBPyConnection,
    out_dir: Path | str,
    *,
    test_days: int = 120,
    workers: int | None = None,
    progress: Progress | None = None,
) -> tuple[BacktestResult, dict[str, Path]]:
    """A short expanding-window backtest over the last ``test_days`` of the warehouse with a light pipeline
    (LightGBM only, 200 trees), retrained every 30 days; the second stage starts once 50 earlier test races
    exist."""
    last = conn.execute("SELECT max(date) FROM races").fetchall()[0][0]
    end = pd.Timestamp(last)
    splitter = WalkForwardSplit(
        end - pd.Timedelta(days=test_days - 1), end, test_window_days=30, retrain_every_days=30, expanding=True
    )
    estimator = default_estimator(libraries=("lightgbm",), n_estimators=200, n_bootstrap=30, n_jobs=1)
    return backtest_from_warehouse(
        conn, out_dir, splitter, estimator=estimator, workers=workers, progress=progress, second_stage_min_races=50
    )


def _cell(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def headline_text(metrics: dict[str, Any]) -> str:
    """The headline table (model, market, market recalibrated, combined) and the gain, as text."""
    header = f"{'':28}{'races':>7}{'pseudo-R2':>11}{'logloss':>9}{'ECE':>8}{'top pick':>10}{'ROI':>8}  ROI 95% CI"
    lines = [header]
    for r in headline_rows(metrics):
        lo, hi = r["roi_ci"]
        ci = f"[{_cell(lo, 3)}, {_cell(hi, 3)}]" if lo is not None else "-"
        lines.append(
            f"{r['row']:28}{_cell(r['races']):>7}{_cell(r['pseudo_r2']):>11}{_cell(r['winner_logloss'], 3):>9}"
            f"{_cell(r['ece']):>8}{_cell(r['top_pick'], 3):>10}{_cell(r['roi_kelly'], 3):>8}  {ci}"
        )
    lines.append(
        f"gain of combined over market: {_cell(metrics.get('delta_r2'))} "
        f"[{_cell(metrics.get('delta_r2_ci_low'))}, {_cell(metrics.get('delta_r2_ci_high'))}] (95% CI, races); "
        f"over the recalibrated market: {_cell(metrics.get('delta_r2_vs_recal_market'))}"
    )
    lines.append(
        f"Kelly ROI ({metrics.get('betting_probabilities')}, win and place bets, one bankroll): "
        f"{_cell(metrics.get('roi_kelly'), 3)} [{_cell(metrics.get('roi_kelly_ci_low'), 3)}, "
        f"{_cell(metrics.get('roi_kelly_ci_high'), 3)}] on {metrics.get('n_bets')} bets; win "
        f"{_cell(metrics.get('roi_kelly_win'), 3)} [{_cell(metrics.get('roi_ci_low'), 3)}, "
        f"{_cell(metrics.get('roi_ci_high'), 3)}], place {_cell(metrics.get('roi_kelly_place'), 3)}"
    )
    return "\n".join(lines)
