"""Named read queries of the warehouse."""

from __future__ import annotations

import duckdb

DATA_TABLES = ("races", "runners", "horses")


def db_info(conn: duckdb.DuckDBPyConnection) -> dict[str, object]:
    """Counts of races, runners and horses, and the date range of each source."""
    totals = {
        table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])  # type: ignore[index]
        for table in DATA_TABLES
    }
    rows = conn.execute(
        """
        SELECT r.source, count(DISTINCT r.race_id) AS races, count(u.race_id) AS runners,
               count(DISTINCT u.horse_id) AS horses, min(r.date) AS first_date, max(r.date) AS last_date
        FROM races r LEFT JOIN runners u USING (race_id)
        GROUP BY r.source ORDER BY r.source
        """
    ).fetchall()
    sources = [
        {
            "source": source,
            "races": int(n_races),
            "runners": int(n_runners),
            "horses": int(n_horses),
            "first_date": first.isoformat() if first else None,
            "last_date": last.isoformat() if last else None,
        }
        for source, n_races, n_runners, n_horses, first, last in rows
    ]
    version = conn.execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0]  # type: ignore[index]
    imports = int(conn.execute("SELECT count(*) FROM import_log").fetchall()[0][0])  # type: ignore[index]
    return {**totals, "schema_version": version, "imports": imports, "sources": sources}


def table_checksum(conn: duckdb.DuckDBPyConnection, table: str) -> tuple[int, int]:
    """Row count and an order-independent hash of every row's content."""
    count, digest = conn.execute(f"SELECT count(*), coalesce(sum(hash(t)), 0) FROM {table} AS t").fetchall()[0]  # type: ignore[misc]
    return int(count), int(digest)
