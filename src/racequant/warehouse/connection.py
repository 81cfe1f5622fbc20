"""Opening the warehouse: writers migrate it first, readers open it read-only."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from racequant.errors import WarehouseError
from racequant.warehouse.migrations import LATEST_VERSION, MIGRATIONS

logger = logging.getLogger(__name__)


def migrate(conn: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply every migration not yet applied, each in its own transaction; return those applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER NOT NULL, description VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations").fetchall()}
    if done and max(done) > LATEST_VERSION:
        raise WarehouseError(
            f"The warehouse has schema version {max(done)}, newer than this racequant knows "
            f"({LATEST_VERSION}); upgrade racequant."
        )
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        conn.execute("BEGIN TRANSACTION")
        try:
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, now()::TIMESTAMP)",
                [migration.version, migration.description],
            )
            conn.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK")
            raise
        logger.info("Applied warehouse migration %d: %s", migration.version, migration.description)
        applied.append(migration.version)
    return applied


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
        yield conn
    finally:
        conn.close()
