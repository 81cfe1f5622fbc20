"""Named read queries of the dashboard: race pickers, a stored race as card inputs, a backtest run's bankroll.

Every function takes an open (read-only) connection; the prediction log's readers take its path and open it
read-only here, so that only ``warehouse/`` opens DuckDB.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from racequant.errors import WarehouseError
from racequant.warehouse import prediction_log

logger = logging.getLogger(__name__)


def _has_table(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    found = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchall()
    return bool(found[0][0])


def race_dates(conn: duckdb.DuckDBPyConnection) -> list[dt.date]:
    """Every race day of the warehouse, newest first."""
    return [row[0] for row in conn.execute("SELECT DISTINCT date FROM races ORDER BY date DESC").fetchall()]


def races_on(conn: duckdb.DuckDBPyConnection, day: dt.date) -> pd.DataFrame:
    """The races of one day: race_id, track, race_no, off_time, distance_m, race_class, declared runners."""
    return conn.execute(
        """
        SELECT r.race_id, r.track, r.race_no, r.off_time, r.distance_m, r.race_class, r.going,
               count(u.horse_id) FILTER (WHERE u.status <> 'withdrawn') AS runners
        FROM races r LEFT JOIN runners u USING (race_id)
        WHERE r.date = ?
        GROUP BY ALL
        ORDER BY r.track, r.race_no NULLS LAST, r.off_time NULLS LAST, r.race_id
        """,
        [day],
    ).df()


def stored_race(conn: duckdb.DuckDBPyConnection, race_id: str) -> dict[str, Any]:
    """A stored race as ``models.card.card_from_results`` takes it: the races row, its runners rows and their
    horses rows by horse_id."""
    race = conn.execute("SELECT * FROM races WHERE race_id = ?", [race_id]).df()
    if race.empty:
        raise WarehouseError(f"There is no race {race_id!r} in the warehouse.")
    runners = conn.execute("SELECT * FROM runners WHERE race_id = ? ORDER BY saddle_no NULLS LAST", [race_id]).df()
    horses = conn.execute(
        "SELECT h.* FROM horses h SEMI JOIN runners u ON u.horse_id = h.horse_id AND u.race_id = ?", [race_id]
    ).df()
    return {
        "race": race.iloc[0].to_dict(),
        "runners": runners.to_dict("records"),
        "horses": horses.set_index("horse_id", drop=False).to_dict("index"),
    }


def race_results(conn: duckdb.DuckDBPyConnection, race_id: str) -> pd.DataFrame:
    """horse_id, status and finish_position of a stored race (to show the result beside a past race's card)."""
    return conn.execute(
        "SELECT horse_id, status, finish_position FROM runners WHERE race_id = ? ORDER BY saddle_no NULLS LAST",
        [race_id],
    ).df()


def backtest_run(conn: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """One stored backtest run: its keys, parameters and metrics (parsed) and its folds."""
    row = conn.execute(
        "SELECT run_id, created_at, test_start, test_end, n_folds, n_races, seconds, params_json, metrics_json "
        "FROM backtest_runs WHERE run_id = ?",
        [run_id],
    ).fetchall()
    if not row:
        raise WarehouseError(f"There is no backtest run {run_id!r} in the warehouse.")
    run_id, created, start, end, n_folds, n_races, seconds, params_json, metrics_json = row[0]
    folds = conn.execute("SELECT * FROM backtest_folds WHERE run_id = ? ORDER BY fold", [run_id]).df()
    return {
        "run_id": run_id,
        "created_at": created,
        "test_start": start,
        "test_end": end,
        "n_folds": n_folds,
        "n_races": n_races,
        "seconds": seconds,
        "params": json.loads(params_json),
        "metrics": json.loads(metrics_json),
        "folds": folds,
    }


def backtest_race_returns(conn: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Per test race of a run, in start order: date, race_id, fold, staked and returned on win and place bets.

    The stakes were sized on the compounding bankroll, so the bankroll after a race is the starting bankroll
    plus the running sum of (returned - staked)."""
    if not _has_table(conn, "backtest_predictions"):
        return pd.DataFrame(
            columns=["date", "race_id", "fold", "stake_win", "return_win", "stake_place", "return_place"]
        )
    return conn.execute(
        """
        SELECT r.date, p.race_id, min(p.fold) AS fold,
               coalesce(sum(p.stake_win), 0) AS stake_win, coalesce(sum(p.return_win), 0) AS return_win,
               coalesce(sum(p.stake_place), 0) AS stake_place, coalesce(sum(p.return_place), 0) AS return_place
        FROM backtest_predictions p JOIN races r USING (race_id)
        WHERE p.run_id = ?
        GROUP BY r.date, r.race_no, r.off_time, p.race_id
        ORDER BY r.date, r.race_no NULLS LAST, r.off_time NULLS LAST, p.race_id
        """,
        [run_id],
    ).df()


def has_backtest_runs(conn: duckdb.DuckDBPyConnection) -> bool:
    if not _has_table(conn, "backtest_runs"):
        return False
    return bool(conn.execute("SELECT count(*) FROM backtest_runs").fetchall()[0][0])


# --- the prediction log (its own DuckDB file, read-only) ---


def monitoring_tables(log_path: Path | str, alerts_limit: int = 50) -> dict[str, Any]:
    """The stored daily metrics (by day), the latest alerts and the count of logged predictions, read-only.

    Raises WarehouseError when the log does not exist yet or is held by a writer."""
    with prediction_log.open_log(log_path, read_only=True) as conn:
        return {
            "daily_metrics": prediction_log.daily_metrics_frame(conn),
            "alerts": prediction_log.alerts_frame(conn, alerts_limit),
            "n_predictions": prediction_log.prediction_count(conn),
            "last_day": conn.execute("SELECT max(CAST(timestamp AS DATE)) FROM predictions").fetchall()[0][0],
        }
