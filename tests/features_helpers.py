"""Helpers of the feature tests: in-memory warehouses and exact frame comparison."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from racequant.features.build import feature_columns
from racequant.ingest import parse
from racequant.warehouse import migrate
from racequant.warehouse.load import load_results


def warehouse_from_folder(path: Path | str, fmt: str) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory warehouse holding the result files at ``path``."""
    conn = duckdb.connect()
    migrate(conn)
    load_results(conn, parse(path, fmt, skip_invalid=True), str(path))
    return conn


def warehouse_from_simulation(n_races: int, seed: int, tmp: Path) -> duckdb.DuckDBPyConnection:
    from racequant.ingest.simulator import simulate, write_results

    write_results(simulate(n_races, seed), tmp)
    return warehouse_from_folder(tmp, "racequant")


def copy_warehouse(conn: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """An independent in-memory copy of the data tables."""
    copy = duckdb.connect()
    migrate(copy)
    for table in ("races", "runners", "horses"):
        copy.register("_src", conn.execute(f"SELECT * FROM {table}").to_arrow_table())
        copy.execute(f"DELETE FROM {table}")
        copy.execute(f"INSERT INTO {table} SELECT * FROM _src")
        copy.unregister("_src")
    return copy


def delete_from(conn: duckdb.DuckDBPyConnection, cut: str) -> None:
    conn.execute("DELETE FROM runners WHERE race_id IN (SELECT race_id FROM races WHERE date >= ?)", [cut])
    conn.execute("DELETE FROM races WHERE date >= ?", [cut])


def scramble_results_from(conn: duckdb.DuckDBPyConnection, cut: str) -> None:
    """Alter every result on or after ``cut``: reversed finishing order, other times, margins and odds."""
    conn.execute(
        """
        UPDATE runners SET finish_position = 15 - coalesce(finish_position, 0),
               finish_time_s = finish_time_s * 1.03 + 0.7, margin_lengths = coalesce(margin_lengths, 0) + 2.5,
               section_times_s = list_transform(section_times_s, lambda x: x * 0.97),
               running_positions = list_reverse(running_positions), win_odds = win_odds * 2 + 1,
               rating = rating + 7
        WHERE race_id IN (SELECT race_id FROM races WHERE date >= ?)
        """,
        [cut],
    )


def mismatched_columns(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, int]:
    """Feature columns that are not bit-identical (NaN positions included) and how many rows differ."""
    assert list(a["race_id"]) == list(b["race_id"])
    assert list(a["horse_id"]) == list(b["horse_id"])
    bad = {}
    for col in feature_columns(a):
        x, y = a[col], b[col]
        if pd.api.types.is_float_dtype(x):
            xv, yv = x.to_numpy(float), y.to_numpy(float)
            same = (xv.view(np.int64) == yv.view(np.int64)) | (np.isnan(xv) & np.isnan(yv))
        else:
            same = (x.astype(object) == y.astype(object)) | (x.isna() & y.isna())
            same = np.asarray(same, dtype=bool)
        if not same.all():
            bad[col] = int((~same).sum())
    return bad


def card_of(conn: duckdb.DuckDBPyConnection, race_id: str) -> dict:
    """A race card (race and declared runners, results left in to prove they are ignored)."""
    race = conn.execute("SELECT * FROM races WHERE race_id = ?", [race_id]).df().iloc[0].to_dict()
    runners = conn.execute("SELECT * FROM runners WHERE race_id = ?", [race_id]).df()
    return {"race": race, "runners": runners.to_dict("records")}
