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
    runners_written: int
    horses_written: int
    rows_rejected: int

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def load_results(conn: duckdb.DuckDBPyConnection, parsed: ParsedResults, path: str) -> ImportSummary:
    """Store parsed results in one transaction.

    Races already in the warehouse are replaced whole (their runners too), so importing the same
    files twice changes nothing and importing later race days only adds them. Horses are upserted:
    a known value is never overwritten by a missing one. Any failure rolls everything back.
    """
    if parsed.problems:
        raise ImportValidationError(parsed.problems)
    started = datetime.now()
    races = to_arrow(parsed.races, RACE_COLUMNS)
    runners = to_arrow(parsed.runners, RUNNER_COLUMNS)
    horses = to_arrow(parsed.horses, HORSE_COLUMNS)
    conn.register("_new_races", races)
    conn.register("_new_runners", runners)
    conn.register("_new_horses", horses)
    conn.execute("BEGIN TRANSACTION")
    try:
        import_id = conn.execute("SELECT nextval('import_id_seq')").fetchone()[0]  # type: ignore[index]
        replaced = conn.execute(
            "SELECT count(*) FROM races WHERE race_id IN (SELECT race_id FROM _new_races)"
        ).fetchone()[0]  # type: ignore[index]
        conn.execute("DELETE FROM runners WHERE race_id IN (SELECT race_id FROM _new_races)")
        conn.execute("DELETE FROM races WHERE race_id IN (SELECT race_id FROM _new_races)")
        race_cols = ", ".join(RACE_COLUMNS)
        conn.execute(f"INSERT INTO races ({race_cols}, import_id) SELECT {race_cols}, ? FROM _new_races", [import_id])
        runner_cols = ", ".join(RUNNER_COLUMNS)
        conn.execute(f"INSERT INTO runners ({runner_cols}) SELECT {runner_cols} FROM _new_runners")
        horse_cols = [c for c in HORSE_COLUMNS if c != "horse_id"]
        sets = ", ".join(f"{c} = coalesce(n.{c}, h.{c})" for c in horse_cols)
        conn.execute(f"UPDATE horses AS h SET {sets} FROM _new_horses AS n WHERE h.horse_id = n.horse_id")
        all_horse_cols = ", ".join(HORSE_COLUMNS)
        conn.execute(
            f"INSERT INTO horses ({all_horse_cols}) SELECT {all_horse_cols} FROM _new_horses "
            "WHERE horse_id NOT IN (SELECT horse_id FROM horses)"
        )
        conn.execute(
            "INSERT INTO import_log VALUES (?, ?, ?, ?, ?, now()::TIMESTAMP, ?, ?, ?, ?, ?, ?)",
            [
                import_id,
                parsed.source,
                parsed.format,
                path,
                started,
                races.num_rows - replaced,
                replaced,
                runners.num_rows,
                horses.num_rows,
                len(parsed.rejected_rows),
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
        for name in ("_new_races", "_new_runners", "_new_horses"):
            conn.unregister(name)
    summary = ImportSummary(
        import_id=int(import_id),
        source=parsed.source,
        format=parsed.format,
        races_added=races.num_rows - int(replaced),
        races_replaced=int(replaced),
        runners_written=runners.num_rows,
        horses_written=horses.num_rows,
        rows_rejected=len(parsed.rejected_rows),
    )
    logger.info(
        "Imported %s from %s: %d races added, %d replaced, %d runners, %d horses, %d rows rejected",
        parsed.format,
        path,
        summary.races_added,
        summary.races_replaced,
        summary.runners_written,
        summary.horses_written,
        summary.rows_rejected,
    )
    return summary
