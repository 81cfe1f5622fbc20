"""The prediction log: every served prediction, the race outcomes, daily metrics and alerts, in its own DuckDB file.

The log lives beside the warehouse (``<db stem>.predlog.duckdb`` by default), not in it: DuckDB admits one writing
process per file, so the API server can hold the log while the CLI and the dashboard use the warehouse. The server
writes it through one writer (``racequant.monitor.writer``); other processes open it read-only.

Served predictions reach the log through a write-ahead journal beside it (``<log>.journal``, sealed segments
``<log>.journal.<n>``): one JSON line per request, ``{"v": 1, "rows": [...]}``. Whoever opens the log for writing
first replays the journal into ``predictions`` (skipping prediction_ids already there) and then empties it; a torn
last line (a write cut by a kill) was never acknowledged and is dropped with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from racequant.errors import WarehouseError
from racequant.warehouse.migrations import Migration, apply_migrations

logger = logging.getLogger(__name__)


PREDICTION_COLUMNS: dict[str, str] = {
    "prediction_id": "VARCHAR NOT NULL",
    "request_id": "VARCHAR NOT NULL",
    "race_id": "VARCHAR NOT NULL",
    "horse_id": "VARCHAR NOT NULL",
    "timestamp": "TIMESTAMP NOT NULL",
    "race_date": "DATE",
    "win_prob": "DOUBLE NOT NULL",
    "place_prob": "DOUBLE",
    "win_prob_lower": "DOUBLE",
    "win_prob_upper": "DOUBLE",
    "place_prob_lower": "DOUBLE",
    "place_prob_upper": "DOUBLE",
    "model_version": "VARCHAR NOT NULL",
    "feature_version": "VARCHAR",
    "calibration_group": "VARCHAR",
    "latency_ms": "DOUBLE NOT NULL",
    "features_json": "VARCHAR",
}
PREDICTION_INPUT_COLUMNS = tuple(PREDICTION_COLUMNS)
# the Arrow types of the columns: a row that does not fit them is refused before it is journaled
_ARROW_TYPES = {"VARCHAR": pa.string(), "TIMESTAMP": pa.timestamp("us"), "DATE": pa.date32(), "DOUBLE": pa.float64()}
PREDICTION_SCHEMA = pa.schema(
    [
        pa.field(name, _ARROW_TYPES[sql_type.split()[0]], nullable="NOT NULL" not in sql_type)
        for name, sql_type in PREDICTION_COLUMNS.items()
    ]
)
# the outcome columns the scored_predictions view adds to each prediction
OUTCOME_COLUMNS = ("finish_position", "won", "placed", "outcome_at")

LOG_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "predictions, outcomes, qualitative submissions, daily metrics and alerts",
        "CREATE TABLE IF NOT EXISTS predictions ("
        + ", ".join(f"{name} {sql_type}" for name, sql_type in PREDICTION_COLUMNS.items())
        + ");"
        + """
        CREATE TABLE IF NOT EXISTS outcomes (
            race_id VARCHAR NOT NULL,
            horse_id VARCHAR NOT NULL,
            finish_position INTEGER,
            status VARCHAR NOT NULL,
            recorded_at TIMESTAMP NOT NULL
        );
        -- predictions are never updated: the outcome of a race joins them here (Hong Kong place terms: the
        -- first 3 place with 7 or more starters, the first 2 with 4 to 6, none with fewer)
        CREATE OR REPLACE VIEW scored_predictions AS
        WITH terms AS (
            SELECT race_id,
                   CASE WHEN count(*) FILTER (WHERE status <> 'withdrawn') >= 7 THEN 3
                        WHEN count(*) FILTER (WHERE status <> 'withdrawn') >= 4 THEN 2 ELSE 0 END AS places
            FROM outcomes GROUP BY race_id
        )
        SELECT p.*, o.finish_position,
               CASE WHEN o.status IS NULL OR o.status = 'withdrawn' THEN NULL
                    ELSE coalesce(o.finish_position = 1, false) END AS won,
               CASE WHEN o.status IS NULL OR o.status = 'withdrawn' OR t.places = 0 THEN NULL
                    ELSE coalesce(o.finish_position <= t.places, false) END AS placed,
               o.recorded_at AS outcome_at
        FROM predictions AS p
        LEFT JOIN outcomes AS o ON o.race_id = p.race_id AND o.horse_id = p.horse_id
        LEFT JOIN terms AS t ON t.race_id = p.race_id;
        CREATE TABLE IF NOT EXISTS qualitative_submissions (
            race_id VARCHAR NOT NULL,
            horse_id VARCHAR NOT NULL,
            record_json VARCHAR NOT NULL,
            submitted_at TIMESTAMP NOT NULL
        );
        CREATE TABLE IF NOT EXISTS daily_metrics (
            day DATE NOT NULL,
            n_predictions BIGINT NOT NULL,
            n_scored BIGINT NOT NULL,
            n_races BIGINT NOT NULL,
            win_auc DOUBLE,
            place_auc DOUBLE,
            win_brier DOUBLE,
            place_brier DOUBLE,
            win_ece DOUBLE,
            place_ece DOUBLE,
            mean_latency_ms DOUBLE,
            computed_at TIMESTAMP NOT NULL
        );
        CREATE TABLE IF NOT EXISTS alerts (
            raised_at TIMESTAMP NOT NULL,
            kind VARCHAR NOT NULL,
            message VARCHAR NOT NULL,
            payload_json VARCHAR NOT NULL,
            delivered BOOLEAN NOT NULL
        );
        """,
    ),
)


def default_log_path(db: Path | str) -> Path:
    """``<db stem>.predlog.duckdb`` beside the warehouse file."""
    db = Path(db)
    return db.with_name(f"{db.stem}.predlog.duckdb")


def migrate_log(conn: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply the log's migrations not yet applied, each in its own transaction; return those applied."""
    return apply_migrations(conn, LOG_MIGRATIONS, table="log_migrations", what="prediction log")


def connect_log(path: Path | str) -> duckdb.DuckDBPyConnection:
    """Open (creating and migrating) the prediction log for writing; the caller closes the connection."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = duckdb.connect(str(path))
    except duckdb.Error as exc:
        raise WarehouseError(
            f"Cannot open the prediction log {path} for writing (is a racequant server holding it? "
            f"then ask its /api/v1/monitoring endpoints): {exc}"
        ) from exc
    try:
        migrate_log(conn)
        replay_journal(conn, path)
    except Exception:
        conn.close()
        raise
    return conn


@contextmanager
def open_log(path: Path | str, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """The prediction log for one job: read-write (migrated) or read-only (it must exist)."""
    path = Path(path)
    if read_only:
        if not path.exists():
            raise WarehouseError(f"There is no prediction log at {path}; it is created by 'racequant serve'.")
        _replay_before_reading(path)
        try:
            conn = duckdb.connect(str(path), read_only=True)
        except duckdb.Error as exc:
            raise WarehouseError(
                f"Cannot open the prediction log {path} read-only (is a racequant server holding it? "
                f"then ask its /api/v1/monitoring endpoints): {exc}"
            ) from exc
    else:
        conn = connect_log(path)
    try:
        yield conn
    finally:
        conn.close()


def reader(conn: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A cursor for reading in another thread while the writer thread holds ``conn``."""
    return conn.cursor()


def begin(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("BEGIN TRANSACTION")


def commit(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("COMMIT")


def rollback(conn: duckdb.DuckDBPyConnection) -> None:
    """Roll back the open transaction, if any."""
    with suppress(duckdb.Error):
        conn.execute("ROLLBACK")


# --- the write-ahead journal of served predictions ---

JOURNAL_VERSION = 1
_SEGMENT = re.compile(r"\.journal\.(\d+)$")


def journal_path(log_path: Path | str) -> Path:
    """The active journal segment beside the log: ``<log>.journal``."""
    log_path = Path(log_path)
    return log_path.with_name(f"{log_path.name}.journal")


# journals appended to by a live writer of this process: replaying one under it would insert its rows twice
_OWNED_JOURNALS: set[Path] = set()


def own_journal(log_path: Path | str, owned: bool = True) -> None:
    """Mark the log's journal as appended to (or, ``owned=False``, no longer) by a writer of this process; a
    second writer of the same log in this process is refused (each would empty the journal under the other)."""
    key = journal_path(log_path).resolve()
    if not owned:
        _OWNED_JOURNALS.discard(key)
    elif key in _OWNED_JOURNALS:
        raise WarehouseError(f"The prediction log {Path(log_path).name} already has a writer in this process.")
    else:
        _OWNED_JOURNALS.add(key)


def journal_segments(log_path: Path | str) -> list[Path]:
    """The journal's files in write order: the sealed segments ``<log>.journal.<n>`` by n, then the active one."""
    active = journal_path(log_path)
    sealed = []
    for candidate in active.parent.glob(f"{active.name}.*"):
        match = _SEGMENT.search(candidate.name)
        if match and candidate.name == f"{active.name}.{match.group(1)}":
            sealed.append((int(match.group(1)), candidate))
    return [path for _, path in sorted(sealed)] + ([active] if active.exists() else [])


def _journal_default(value: Any) -> Any:
    """JSON of the values ``json`` does not know: timestamps as naive UTC ISO text, dates as ISO, numpy scalars."""
    if isinstance(value, datetime | date):
        return _naive_utc(value).isoformat()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"a {type(value).__name__} value cannot be journaled")


def encode_journal_record(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """One request's (or batch's) predictions as one journal line (JSON, ending in a newline)."""
    cols = PREDICTION_INPUT_COLUMNS
    record = {"v": JOURNAL_VERSION, "rows": [{c: r.get(c) for c in cols} for r in rows]}
    return json.dumps(record, separators=(",", ":"), default=_journal_default).encode() + b"\n"


def _decoded_row(row: dict[str, Any]) -> dict[str, Any]:
    if isinstance(row.get("timestamp"), str):
        row["timestamp"] = datetime.fromisoformat(row["timestamp"])
    if isinstance(row.get("race_date"), str):
        row["race_date"] = date.fromisoformat(row["race_date"])
    return row


def read_journal(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The prediction rows of the journal files, in order. A last line without its newline was cut by a kill
    while being written (never acknowledged): it is dropped with a warning, like any line that does not parse."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        data = path.read_bytes()
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        if torn:
            logger.warning(
                "prediction journal %s: dropped a torn last record (%d bytes, cut while written: never acknowledged)",
                path,
                len(torn),
            )
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if record.get("v") != JOURNAL_VERSION:
                    raise ValueError(f"unknown journal version {record.get('v')!r}")
                rows.extend(_decoded_row(dict(r)) for r in record["rows"])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                logger.error("prediction journal %s: line %d cannot be read and is skipped: %s", path, number, exc)
    return rows


def replay_journal(conn: duckdb.DuckDBPyConnection, log_path: Path | str) -> int:
    """Move the journal's predictions into the log (those whose prediction_id is not there yet), commit, then empty
    the journal. Idempotent: a kill between the commit and the emptying only replays rows that are then skipped.
    Returns how many rows were inserted."""
    if journal_path(log_path).resolve() in _OWNED_JOURNALS:
        return 0  # this process's writer drains it
    paths = journal_segments(log_path)
    rows = read_journal(paths) if any(p.stat().st_size for p in paths) else []
    inserted = 0
    if rows:
        table = prediction_table(rows)
        begin(conn)
        try:
            inserted = _insert_table(conn, table, skip_logged=True)
            commit(conn)
        except Exception:
            rollback(conn)
            raise
    for path in paths:  # committed: the journal is emptied (the active segment stays, empty)
        if path == journal_path(log_path):
            if path.stat().st_size:
                os.truncate(path, 0)
        else:
            path.unlink(missing_ok=True)
    if not rows:
        return 0
    logger.info(
        "prediction journal replayed: %d of its %d predictions were not in the log yet and were inserted",
        inserted,
        len(rows),
    )
    return inserted


def _replay_before_reading(path: Path) -> None:
    """Before a read-only opening: replay a journal a killed server left (needs the log writable; else warn)."""
    if journal_path(path).resolve() in _OWNED_JOURNALS or not any(p.stat().st_size for p in journal_segments(path)):
        return
    try:
        conn = connect_log(path)  # replays
    except (WarehouseError, OSError) as exc:
        logger.warning(
            "the prediction journal beside %s is not empty and could not be replayed here (%s): a running server "
            "drains it itself; else it is replayed when the server or a writing command next opens the log",
            path,
            exc,
        )
        return
    conn.close()


# --- writes (the server's writer thread calls these; each runs inside the writer's transaction) ---


def _naive_utc(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


_INSERT_CHUNK = 400  # rows per multi-row VALUES statement (outcomes)
_BATCH_VIEW = "_predlog_batch"


def prediction_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Served predictions as an Arrow table of the log's columns, checked: a value of the wrong type or a missing
    required value raises ``WarehouseError`` naming the column (before anything is journaled or inserted)."""
    columns = []
    for field in PREDICTION_SCHEMA:
        values = [_naive_utc(r.get(field.name)) for r in rows]
        try:
            column = pa.array(values, type=field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
            raise WarehouseError(f"prediction row: {field.name}: not a {field.type} value ({exc})") from exc
        if not field.nullable and column.null_count:
            raise WarehouseError(f"prediction row: {field.name}: a value is required")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=PREDICTION_SCHEMA)


def insert_predictions(conn: duckdb.DuckDBPyConnection, rows: Sequence[Mapping[str, Any]] | pa.Table) -> int:
    """Append served predictions (``PREDICTION_INPUT_COLUMNS`` per row; timestamps aware or naive UTC), or a
    ``prediction_table``.

    The rows go in as one Arrow table (a large multi-row VALUES statement binds slowly: 140 rows took 36 ms
    against 7 ms through Arrow). No ``fetchone`` may precede this on the connection (DuckDB 2.0 then refuses
    ``register``).
    """
    table = rows if isinstance(rows, pa.Table) else prediction_table(rows) if rows else None
    if table is None or table.num_rows == 0:
        return 0
    return _insert_table(conn, table, skip_logged=False)


def _insert_table(conn: duckdb.DuckDBPyConnection, table: pa.Table, skip_logged: bool) -> int:
    """Insert the table's rows (with ``skip_logged`` only those whose prediction_id is not in the log yet)."""
    cols = ", ".join(PREDICTION_INPUT_COLUMNS)
    sql = f"INSERT INTO predictions ({cols}) SELECT {cols} FROM {_BATCH_VIEW}"
    if skip_logged:  # a replay: rows committed before the kill are not inserted twice
        sql += (
            " WHERE prediction_id NOT IN (SELECT prediction_id FROM predictions)"
            " QUALIFY row_number() OVER (PARTITION BY prediction_id) = 1"
        )
    conn.register(_BATCH_VIEW, table)
    try:
        inserted = conn.execute(sql).fetchall()
    finally:
        conn.unregister(_BATCH_VIEW)
    return int(inserted[0][0]) if inserted else table.num_rows


def insert_qualitative(conn: duckdb.DuckDBPyConnection, rows: Iterable[tuple[str, str, str]], at: datetime) -> int:
    """Store qualitative submissions: (race_id, horse_id, record_json) each."""
    rows = list(rows)
    if rows:
        conn.executemany(
            "INSERT INTO qualitative_submissions VALUES (?, ?, ?, ?)", [(*r, at.replace(tzinfo=None)) for r in rows]
        )
    return len(rows)


def logged_horses(conn: duckdb.DuckDBPyConnection, race_id: str) -> set[str]:
    """The horses with a logged prediction in the race (empty when the race has none)."""
    rows = conn.execute("SELECT DISTINCT horse_id FROM predictions WHERE race_id = ?", [race_id]).fetchall()
    return {r[0] for r in rows}


def record_outcomes(
    conn: duckdb.DuckDBPyConnection, race_id: str, outcomes: list[tuple[str, int | None, str]], at: datetime
) -> int:
    """Store a race's result, (horse_id, finish_position, status) per runner; a re-submitted result replaces the
    earlier one. The ``scored_predictions`` view joins it to the race's predictions. Returns how many it scores."""
    return record_many_outcomes(conn, {race_id: outcomes}, at)


def record_many_outcomes(
    conn: duckdb.DuckDBPyConnection, results: Mapping[str, list[tuple[str, int | None, str]]], at: datetime
) -> int:
    """``record_outcomes`` for several races at once (race_id -> outcomes)."""
    if not results:
        return 0
    at = at.replace(tzinfo=None)
    race_ids = list(results)
    marks = ", ".join("?" for _ in race_ids)
    conn.execute(f"DELETE FROM outcomes WHERE race_id IN ({marks})", race_ids)
    values = [v for race_id, rows in results.items() for h, pos, status in rows for v in (race_id, h, pos, status, at)]
    for lo in range(0, len(values), 5 * _INSERT_CHUNK):
        chunk = values[lo : lo + 5 * _INSERT_CHUNK]
        conn.execute("INSERT INTO outcomes VALUES " + ", ".join(["(?, ?, ?, ?, ?)"] * (len(chunk) // 5)), chunk)
    scored = conn.execute(
        f"SELECT count(*) FROM predictions SEMI JOIN outcomes USING (race_id, horse_id) WHERE race_id IN ({marks})",
        race_ids,
    ).fetchall()
    return int(scored[0][0])


def store_daily_metrics(conn: duckdb.DuckDBPyConnection, row: Mapping[str, Any]) -> None:
    """Replace the stored metrics of ``row['day']`` with ``row``."""
    conn.execute("DELETE FROM daily_metrics WHERE day = ?", [row["day"]])
    cols = (
        "day",
        "n_predictions",
        "n_scored",
        "n_races",
        "win_auc",
        "place_auc",
        "win_brier",
        "place_brier",
        "win_ece",
        "place_ece",
        "mean_latency_ms",
        "computed_at",
    )
    conn.execute(
        f"INSERT INTO daily_metrics ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
        [row.get(c) for c in cols],
    )


def insert_alert(
    conn: duckdb.DuckDBPyConnection, kind: str, message: str, payload_json: str, delivered: bool, at: datetime
) -> None:
    conn.execute(
        "INSERT INTO alerts VALUES (?, ?, ?, ?, ?)", [at.replace(tzinfo=None), kind, message, payload_json, delivered]
    )


# --- reads ---


def _day_filter(start: date | None, end: date | None, column: str = "timestamp") -> tuple[str, list[Any]]:
    clauses, params = [], []
    if start is not None:
        clauses.append(f"CAST({column} AS DATE) >= ?")
        params.append(start)
    if end is not None:
        clauses.append(f"CAST({column} AS DATE) <= ?")
        params.append(end)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def predictions_frame(
    conn: duckdb.DuckDBPyConnection, start: date | None = None, end: date | None = None, latest_only: bool = True
) -> pd.DataFrame:
    """Logged predictions served between ``start`` and ``end`` (UTC days, inclusive) with their outcomes.

    With ``latest_only`` a runner predicted several times counts once, by its last prediction in the window.
    """
    where, params = _day_filter(start, end)
    sql = f"SELECT * FROM scored_predictions{where}"
    if latest_only:
        sql += " QUALIFY row_number() OVER (PARTITION BY race_id, horse_id ORDER BY timestamp DESC) = 1"
    return conn.execute(sql, params).df()


def request_latencies(
    conn: duckdb.DuckDBPyConnection, start: date | None = None, end: date | None = None
) -> pd.DataFrame:
    """One row per served request in the window: request_id, day, latency_ms."""
    where, params = _day_filter(start, end)
    return conn.execute(
        f"SELECT request_id, CAST(min(timestamp) AS DATE) AS day, max(latency_ms) AS latency_ms "
        f"FROM predictions{where} GROUP BY request_id",
        params,
    ).df()


def prediction_count(conn: duckdb.DuckDBPyConnection) -> int:
    return int(conn.execute("SELECT count(*) FROM predictions").fetchall()[0][0])


def prediction_ids(conn: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT prediction_id FROM predictions").fetchall()}


def daily_metrics_frame(conn: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return conn.execute("SELECT * FROM daily_metrics ORDER BY day").df()


def alerts_frame(conn: duckdb.DuckDBPyConnection, limit: int = 100) -> pd.DataFrame:
    return conn.execute("SELECT * FROM alerts ORDER BY raised_at DESC LIMIT ?", [limit]).df()


def list_predictions(
    conn: duckdb.DuckDBPyConnection, race_id: str | None = None, day: date | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """Logged predictions (newest first), optionally of one race and/or one UTC day; no feature values."""
    clauses, params = [], []
    if race_id is not None:
        clauses.append("race_id = ?")
        params.append(race_id)
    if day is not None:
        clauses.append("CAST(timestamp AS DATE) = ?")
        params.append(day)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    cols = [c for c in (*PREDICTION_COLUMNS, *OUTCOME_COLUMNS) if c != "features_json"]
    rows = conn.execute(
        f"SELECT {', '.join(cols)} FROM scored_predictions{where} ORDER BY timestamp DESC, prediction_id LIMIT ?",
        [*params, limit],
    ).fetchall()
    out = [dict(zip(cols, row, strict=True)) for row in rows]
    for row in out:  # the log keeps naive UTC; say so
        for col in ("timestamp", "outcome_at"):
            if row[col] is not None:
                row[col] = row[col].replace(tzinfo=UTC)
    return out
