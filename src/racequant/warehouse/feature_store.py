"""Writing and reading the stored point-in-time features (the ``features`` table and the ``feature_runs`` log).

The features table is replaced whole by each build, in one transaction, and carries the ``feature_version``
(the manifest hash) on every row, so a reader can refuse features built from other definitions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from racequant.errors import WarehouseError

logger = logging.getLogger(__name__)


def store_features(
    conn: duckdb.DuckDBPyConnection,
    frame: pd.DataFrame,
    *,
    feature_version: str,
    manifest: list[dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    """Replace the features table with ``frame`` and log the build; return the log record."""
    conn.register("_fx_store", frame)
    try:
        return store_feature_table(
            conn, "_fx_store", feature_version=feature_version, manifest=manifest, seconds=seconds
        )
    finally:
        conn.unregister("_fx_store")


def store_feature_table(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    *,
    feature_version: str,
    manifest: list[dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    """Replace the features table with the rows of the relation ``table`` and log the build; return the log record.

    The rows go from relation to table inside DuckDB (no copy through Python, which for a million runners
    would hold another 1.2 GB). ``race_date`` is stored as a TIMESTAMP whatever the source gives.
    """
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(
            "CREATE OR REPLACE TABLE features AS SELECT ?::VARCHAR AS feature_version, "
            f"* REPLACE (CAST(race_date AS TIMESTAMP) AS race_date) FROM {table}",
            [feature_version],
        )
        n_rows, n_races, first, last = conn.execute(  # type: ignore[misc]
            "SELECT count(*), count(DISTINCT race_id), min(race_date)::DATE, max(race_date)::DATE FROM features"
        ).fetchone()
        conn.execute(
            "INSERT INTO feature_runs VALUES (?, now()::TIMESTAMP, ?, ?, ?, ?, ?, ?, ?)",
            [feature_version, seconds, n_rows, n_races, len(manifest), first, last, json.dumps(manifest)],
        )
        conn.execute("COMMIT")
    except duckdb.Error as exc:
        conn.execute("ROLLBACK")
        raise WarehouseError(f"Storing the features failed; the warehouse is unchanged: {exc}") from exc
    logger.info("Stored %d feature rows (version %s)", n_rows, feature_version)
    return {
        "feature_version": feature_version,
        "rows": int(n_rows),
        "races": int(n_races),
        "features": len(manifest),
        "first_date": first.isoformat() if first else None,
        "last_date": last.isoformat() if last else None,
        "seconds": round(seconds, 3),
    }


def stored_coverage(conn: duckdb.DuckDBPyConnection, columns: list[str]) -> float:
    """The mean over ``columns`` of the stored features' share of non-missing values (0.0 if none stored)."""
    _require_features(conn)
    if not columns:
        return 0.0
    shares = ", ".join(f"count({_quoted(c)})" for c in columns)
    row = conn.execute(f"SELECT count(*), {shares} FROM features").fetchone()
    n, counts = int(row[0]), row[1:]  # type: ignore[index]
    return sum(counts) / (n * len(columns)) if n else 0.0


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _require_features(conn: duckdb.DuckDBPyConnection) -> None:
    found = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'features'").fetchone()[0]  # type: ignore[index]
    if not found:
        raise WarehouseError("The warehouse has no features yet; run 'racequant features build'.")


def stored_version(conn: duckdb.DuckDBPyConnection) -> str | None:
    """The feature_version of the stored features, or None if none are stored."""
    try:
        _require_features(conn)
    except WarehouseError:
        return None
    row = conn.execute("SELECT feature_version FROM features LIMIT 1").fetchone()
    return None if row is None else str(row[0])


def read_features(
    conn: duckdb.DuckDBPyConnection, *, race_id: str | None = None, horse_id: str | None = None
) -> pd.DataFrame:
    """Stored features, optionally of one race and/or one horse."""
    _require_features(conn)
    where, params = [], []
    if race_id is not None:
        where.append("race_id = ?")
        params.append(race_id)
    if horse_id is not None:
        where.append("horse_id = ?")
        params.append(horse_id)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    return conn.execute(f"SELECT * FROM features {clause} ORDER BY race_seq, horse_id", params).df()


def export_features(conn: duckdb.DuckDBPyConnection, out_path: Path | str) -> int:
    """Write the stored features to a Parquet (or, by extension, CSV) file; return the number of rows."""
    _require_features(conn)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "CSV, HEADER" if path.suffix.lower() == ".csv" else "PARQUET"
    target = str(path).replace("'", "''")
    conn.execute(f"COPY (SELECT * FROM features ORDER BY race_seq, horse_id) TO '{target}' (FORMAT {fmt})")
    return int(conn.execute("SELECT count(*) FROM features").fetchone()[0])  # type: ignore[index]


# The running state race cards start from (features.build.refresh_card_state): copies of the bulk build's
# base relations and group totals, named feature_state_<name>, with the warehouse fingerprint they match.


def warehouse_fingerprint(conn: duckdb.DuckDBPyConnection) -> str:
    """A cheap marker of the warehouse contents: row counts and the last import (every load is logged)."""
    # one column of five rows plans in about a third of the time of five scalar subqueries (~0.9 ms a card)
    rows = conn.execute(
        "SELECT 1, count(*) FROM races UNION ALL SELECT 2, count(*) FROM runners UNION ALL SELECT 3, count(*) "
        "FROM horses UNION ALL SELECT 4, count(*) FROM import_log UNION ALL SELECT 5, max(import_id) FROM import_log"
    ).fetchall()
    return ":".join(str(value) for _k, value in sorted(rows))


def card_state_fingerprint(conn: duckdb.DuckDBPyConnection) -> str | None:
    """The fingerprint the stored race-card state was built for, or None if there is none."""
    try:
        rows = conn.execute("SELECT fingerprint FROM feature_state_meta").fetchall()
    except duckdb.CatalogException:
        return None
    return str(rows[0][0]) if rows else None


def save_card_state(
    conn: duckdb.DuckDBPyConnection, sources: dict[str, str], *, fingerprint: str, version: str
) -> None:
    """Copy each source relation to feature_state_<name>, in one transaction; temp tables if read-only."""
    kind = "TEMP TABLE" if _read_only(conn) else "TABLE"
    conn.execute("BEGIN TRANSACTION")
    try:
        for name, source in sources.items():
            conn.execute(f"CREATE OR REPLACE {kind} feature_state_{name} AS SELECT * FROM {source}")
        conn.execute(
            f"CREATE OR REPLACE {kind} feature_state_meta AS "
            "SELECT ?::VARCHAR AS fingerprint, ?::VARCHAR AS feature_version, now()::TIMESTAMP AS built_at",
            [fingerprint, version],
        )
        conn.execute("COMMIT")
    except duckdb.Error as exc:
        conn.execute("ROLLBACK")
        raise WarehouseError(f"Storing the race-card state failed: {exc}") from exc
    logger.info("Stored the race-card state (%d relations, %s)", len(sources), kind.lower())


def _read_only(conn: duckdb.DuckDBPyConnection) -> bool:
    rows = conn.execute("SELECT readonly FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
    return bool(rows and rows[0][0])
