"""Backtest runs in the warehouse, and the runner frame a backtest reads (features joined with results).

``save_backtest_run`` writes one run (its parameters and metrics as JSON, its folds, and the per-runner
test predictions and stakes) in one transaction; ``load_backtest_frame`` reads the stored point-in-time
features of every runner that was not withdrawn, with the race keys, the result and the odds beside them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import duckdb
import pandas as pd

from racequant.errors import WarehouseError

logger = logging.getLogger(__name__)

_PREDICTION_COLUMNS = (
    "fold",
    "race_id",
    "horse_id",
    "win_prob",
    "place_prob",
    "win_prob_lower",
    "win_prob_upper",
    "market_prob",
    "combined_prob",
    "market_recal_prob",
    "stake_win",
    "return_win",
    "stake_place",
    "return_place",
)
_FOLD_COLUMNS = (
    "fold",
    "train_start",
    "train_end",
    "fit_end",
    "validation_start",
    "validation_end",
    "calibration_start",
    "calibration_end",
    "test_start",
    "test_end",
    "a",
    "b",
    "b_market_only",
)


def load_backtest_frame(conn: duckdb.DuckDBPyConnection, *, until: dt.date | str | None = None) -> pd.DataFrame:
    """One row per runner (withdrawn excluded): race keys, track, class, status, finish position, win and
    place odds, and every stored feature (the features table's market columns included: the backtest keeps
    them away from the model). ``until`` keeps races dated on or before it."""
    found = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'features'").fetchall()[0][
        0
    ]
    if not found:
        raise WarehouseError("The warehouse has no features yet; run 'racequant features build'.")
    params: list[Any] = []
    clause = ""
    if until is not None:
        clause = "AND r.date <= ?"
        params.append(pd.Timestamp(until).date())
    return conn.execute(
        f"""
        SELECT r.date, r.race_no, r.off_time, r.track, r.race_class, r.distance_m AS race_distance_m,
               u.status, u.finish_position, u.win_odds, u.place_odds,
               f.* EXCLUDE (feature_version, race_date)
        FROM features f
        JOIN runners u USING (race_id, horse_id)
        JOIN races r USING (race_id)
        WHERE u.status <> 'withdrawn' {clause}
        ORDER BY r.date, r.race_no NULLS LAST, r.off_time NULLS LAST, f.race_id, f.horse_id
        """,
        params,
    ).df()


def save_backtest_run(
    conn: duckdb.DuckDBPyConnection,
    *,
    run_id: str,
    params: dict[str, Any],
    metrics: dict[str, Any],
    folds: list[dict[str, Any]],
    predictions: pd.DataFrame,
    seconds: float,
) -> str:
    """Store one backtest run (replacing a run of the same id) in one transaction; return its id."""
    pred = predictions.reindex(columns=list(_PREDICTION_COLUMNS))
    pred.insert(0, "run_id", run_id)
    pred["race_id"] = pred["race_id"].astype("string")
    pred["horse_id"] = pred["horse_id"].astype("string")
    fold_rows = pd.DataFrame([{c: f.get(c if c != "fold" else "index") for c in _FOLD_COLUMNS} for f in folds])
    fold_rows = fold_rows.reindex(columns=list(_FOLD_COLUMNS))
    for col in _FOLD_COLUMNS[1:10]:
        fold_rows[col] = pd.to_datetime(fold_rows[col]).dt.date
    fold_rows.insert(0, "run_id", run_id)
    test_start = min((f["test_start"] for f in folds), default=None)
    test_end = max((f["test_end"] for f in folds), default=None)
    conn.register("_bt_pred", pred)
    conn.register("_bt_folds", fold_rows)
    conn.execute("BEGIN TRANSACTION")
    try:
        for table in ("backtest_runs", "backtest_folds", "backtest_predictions"):
            conn.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
        conn.execute(
            "INSERT INTO backtest_runs VALUES (?, now()::TIMESTAMP, ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id,
                None if test_start is None else pd.Timestamp(test_start).date(),
                None if test_end is None else pd.Timestamp(test_end).date(),
                len(folds),
                int(metrics.get("n_races") or 0),
                float(seconds),
                json.dumps(params, default=str),
                json.dumps(metrics, default=str),
            ],
        )
        conn.execute("INSERT INTO backtest_folds SELECT * FROM _bt_folds")
        conn.execute("INSERT INTO backtest_predictions SELECT * FROM _bt_pred")
        conn.execute("COMMIT")
    except duckdb.Error as exc:
        conn.execute("ROLLBACK")
        raise WarehouseError(f"Storing backtest run {run_id} failed; the warehouse is unchanged: {exc}") from exc
    finally:
        conn.unregister("_bt_pred")
        conn.unregister("_bt_folds")
    logger.info("stored backtest run %s: %d folds, %d predictions", run_id, len(folds), len(pred))
    return run_id


def list_backtest_runs(conn: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Stored runs, newest first, with their headline figures."""
    rows = conn.execute(
        "SELECT run_id, created_at, test_start, test_end, n_folds, n_races, seconds, metrics_json "
        "FROM backtest_runs ORDER BY created_at DESC"
    ).fetchall()
    out = []
    for run_id, created, start, end, n_folds, n_races, seconds, metrics_json in rows:
        m = json.loads(metrics_json)
        out.append(
            {
                "run_id": run_id,
                "created_at": created.isoformat(),
                "test_start": start.isoformat() if start else None,
                "test_end": end.isoformat() if end else None,
                "n_folds": n_folds,
                "n_races": n_races,
                "seconds": seconds,
                **{
                    k: m.get(k)
                    for k in ("pseudo_r2", "market_pseudo_r2", "combined_pseudo_r2", "delta_r2", "roi_kelly_win")
                },
            }
        )
    return out


def read_backtest_predictions(conn: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """The stored per-runner test predictions of one run."""
    return conn.execute(
        "SELECT * FROM backtest_predictions WHERE run_id = ? ORDER BY fold, race_id, horse_id", [run_id]
    ).df()
