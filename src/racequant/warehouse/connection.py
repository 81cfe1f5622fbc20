"""Opening the warehouse: writers migrate it first, readers open it read-only."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from racequant.errors import WarehouseError
from racequant.warehouse.migrations import MIGRATIONS, apply_migrations

logger = logging.getLogger(__name__)


def migrate(conn: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply every warehouse migration not yet applied, each in its own transaction; return those applied."""
    return apply_migrations(conn, MIGRATIONS, table="schema_migrations", what="warehouse")


def _quiet(conn: duckdb.DuckDBPyConnection) -> None:
    # DuckDB prints a progress bar to stdout for queries over 2 s, which would corrupt the CLI's --json output
    conn.execute("SET enable_progress_bar = false")


@contextmanager
def connect(db: Path | str) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse for writing (creating and migrating it if needed)."""
    path = Path(db)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = duckdb.connect(str(path))
    except duckdb.Error as exc:
        raise WarehouseError(f"Cannot open the warehouse {path} for writing: {exc}") from exc
    try:
        _quiet(conn)
        migrate(conn)
        yield conn
    finally:
        conn.close()


@contextmanager
def connect_read_only(db: Path | str) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open an existing warehouse read-only."""
    path = Path(db)
    if not path.exists():
        raise WarehouseError(
            f"There is no warehouse at {path}; create one with 'racequant ingest' or 'racequant demo'."
        )
    try:
        conn = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise WarehouseError(f"Cannot open the warehouse {path} read-only: {exc}") from exc
    try:
        _quiet(conn)
        yield conn
    finally:
        conn.close()
