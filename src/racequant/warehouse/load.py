"""Storing parsed results: one transaction per import, whole races replaced, nothing lost on failure."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import duckdb
import pyarrow as pa

from racequant.errors import ImportValidationError, WarehouseError
from racequant.ingest.schema import (
    HORSE_COLUMNS,
    RACE_COLUMNS,
    RUNNER_COLUMNS,
    ParsedResults,
)

logger = logging.getLogger(__name__)

_ARROW_TYPES = {
    "string": pa.string(),
    "Int64": pa.int64(),
    "Float64": pa.float64(),
    "datetime64[ns]": pa.timestamp("ns"),
}
_LIST_TYPES = {
    "section_distances_m": pa.list_(pa.int64()),
    "running_positions": pa.list_(pa.int64()),
    "section_times_s": pa.list_(pa.float64()),
}


def _arrow_schema(columns: dict[str, str]) -> pa.Schema:
    return pa.schema(
        [(name, _LIST_TYPES[name] if dtype == "object" else _ARROW_TYPES[dtype]) for name, dtype in columns.items()]
    )


def to_arrow(frame, columns: dict[str, str]) -> pa.Table:  # type: ignore[no-untyped-def]
    """The canonical frame as an Arrow table with the canonical types."""
    return pa.Table.from_pandas(frame[list(columns)], schema=_arrow_schema(columns), preserve_index=False)


@dataclass(frozen=True)
class ImportSummary:
    """What one import did."""

    import_id: int
    source: str
    format: str
    races_added: int
    races_replaced: int
    races_unchanged: int
    runners_written: int
    horses_written: int
    rows_rejected: int

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _race_digests(races: str, runners: str) -> str:
    """SQL for one content digest per race (the race row and all its runner rows)."""
    race_cols = ", ".join(RACE_COLUMNS)
    runner_cols = ", ".join(RUNNER_COLUMNS)
    return (
        f"SELECT r.race_id, hash({race_cols}) AS race_digest, coalesce(u.runner_digest, 0) AS runner_digest "
        f"FROM {races} AS r LEFT JOIN (SELECT race_id, sum(hash({runner_cols})) AS runner_digest "
        f"FROM {runners} GROUP BY race_id) AS u USING (race_id)"
    )


def load_results(conn: duckdb.DuckDBPyConnection, parsed: ParsedResults, path: str) -> ImportSummary:
    """Store parsed results in one transaction.

    A race already in the warehouse with the same content (race row and runners) is left as it is; one
    whose content changed is replaced whole. So importing the same files twice changes nothing and
    importing later race days only adds them. Horses are upserted: a known value is never overwritten
    by a missing one. Any failure rolls everything back.
    """
    if parsed.problems:
        raise ImportValidationError(parsed.problems)
    started = datetime.now()
    arrow = {
        "_new_races": to_arrow(parsed.races, RACE_COLUMNS),
        "_new_runners": to_arrow(parsed.runners, RUNNER_COLUMNS),
        "_new_horses": to_arrow(parsed.horses, HORSE_COLUMNS),
    }
    for name, table in arrow.items():
        conn.register(name, table)
    race_cols = ", ".join(RACE_COLUMNS)
    runner_cols = ", ".join(RUNNER_COLUMNS)
    horse_cols = ", ".join(HORSE_COLUMNS)
    conn.execute("BEGIN TRANSACTION")
    try:
        # Stage with the warehouse's own column types, so digests compare like with like.
        conn.execute("CREATE OR REPLACE TEMP TABLE _stage_races AS SELECT * EXCLUDE (import_id) FROM races LIMIT 0")
        conn.execute(f"INSERT INTO _stage_races SELECT {race_cols} FROM _new_races")
        conn.execute("CREATE OR REPLACE TEMP TABLE _stage_runners AS SELECT * FROM runners LIMIT 0")
        conn.execute(f"INSERT INTO _stage_runners SELECT {runner_cols} FROM _new_runners")
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _race_change AS
            SELECT n.race_id,
                   CASE WHEN o.race_id IS NULL THEN 'added'
                        WHEN o.race_digest = n.race_digest AND o.runner_digest = n.runner_digest THEN 'unchanged'
                        ELSE 'replaced' END AS change
            FROM ({_race_digests("_stage_races", "_stage_runners")}) AS n
            LEFT JOIN ({
                _race_digests(
                    "(SELECT * FROM races WHERE race_id IN (SELECT race_id FROM _stage_races))",
                    "(SELECT * FROM runners WHERE race_id IN (SELECT race_id FROM _stage_races))",
                )
            }) AS o USING (race_id)
            """
        )
        counts = dict(conn.execute("SELECT change, count(*) FROM _race_change GROUP BY change").fetchall())
        import_id = conn.execute("SELECT nextval('import_id_seq')").fetchall()[0][0]
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE _to_write AS SELECT race_id FROM _race_change WHERE change <> 'unchanged'"
        )
        conn.execute("DELETE FROM runners WHERE race_id IN (SELECT race_id FROM _to_write)")
        conn.execute("DELETE FROM races WHERE race_id IN (SELECT race_id FROM _to_write)")
        conn.execute(
            f"INSERT INTO races ({race_cols}, import_id) SELECT {race_cols}, ? FROM _stage_races "
            "WHERE race_id IN (SELECT race_id FROM _to_write)",
            [import_id],
        )
        conn.execute(
            f"INSERT INTO runners ({runner_cols}) SELECT {runner_cols} FROM _stage_runners "
            "WHERE race_id IN (SELECT race_id FROM _to_write)"
        )
        runners_written = conn.execute(
            "SELECT count(*) FROM _stage_runners WHERE race_id IN (SELECT race_id FROM _to_write)"
        ).fetchall()[0][0]
        sets = ", ".join(f"{c} = coalesce(n.{c}, h.{c})" for c in HORSE_COLUMNS if c != "horse_id")
        conn.execute(f"UPDATE horses AS h SET {sets} FROM _new_horses AS n WHERE h.horse_id = n.horse_id")
        conn.execute(
            f"INSERT INTO horses ({horse_cols}) SELECT {horse_cols} FROM _new_horses "
            "WHERE horse_id NOT IN (SELECT horse_id FROM horses)"
        )
        summary = ImportSummary(
            import_id=int(import_id),
            source=parsed.source,
            format=parsed.format,
            races_added=int(counts.get("added", 0)),
            races_replaced=int(counts.get("replaced", 0)),
            races_unchanged=int(counts.get("unchanged", 0)),
            runners_written=int(runners_written),
            horses_written=arrow["_new_horses"].num_rows,
            rows_rejected=len(parsed.rejected_rows),
        )
        conn.execute(
            "INSERT INTO import_log VALUES (?, ?, ?, ?, ?, now()::TIMESTAMP, ?, ?, ?, ?, ?, ?, ?)",
            [
                summary.import_id,
                summary.source,
                summary.format,
                path,
                started,
                summary.races_added,
                summary.races_replaced,
                summary.races_unchanged,
                summary.runners_written,
                summary.horses_written,
                summary.rows_rejected,
                parsed.files,
            ],
        )
        conn.execute("COMMIT")
    except duckdb.Error as exc:
        conn.execute("ROLLBACK")
        raise WarehouseError(f"Storing the import of {path} failed and was rolled back: {exc}") from exc
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        for name in arrow:
            conn.unregister(name)
        for name in ("_stage_races", "_stage_runners", "_race_change", "_to_write"):
            conn.execute(f"DROP TABLE IF EXISTS {name}")
    logger.info(
        "Imported %s from %s: %d races added, %d replaced, %d unchanged, %d runners written, %d horses, "
        "%d rows rejected",
        parsed.format,
        path,
        summary.races_added,
        summary.races_replaced,
        summary.races_unchanged,
        summary.runners_written,
        summary.horses_written,
        summary.rows_rejected,
    )
    return summary
