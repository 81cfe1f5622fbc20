"""Storing and reading qualitative records (likelihood ratios per runner) in the ``qualitative_records`` table.

Records arrive validated (racequant.fusion.schema). A submission replaces, in one transaction, every earlier
record of the same race from the same model chain, so re-importing a file is idempotent and a failed import
leaves the warehouse unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import duckdb
import pandas as pd

from racequant.errors import WarehouseError

logger = logging.getLogger(__name__)

COLUMNS = (
    "race_id",
    "horse_id",
    "horse_name",
    "lr_form_fitness",
    "lr_conditions",
    "lr_tactics",
    "lr_context",
    "lr_product",
    "key_strengths",
    "key_concerns",
    "race_narrative",
    "qualitative_confidence",
    "model_chain",
    "prediction_timestamp",
)


def _as_row(record: Any) -> dict[str, Any]:
    raw = record.model_dump(mode="json") if hasattr(record, "model_dump") else dict(record)
    row = {c: raw.get(c) for c in COLUMNS}
    ts = row["prediction_timestamp"]
    row["prediction_timestamp"] = ts.isoformat() if isinstance(ts, datetime) else str(ts)
    row["key_strengths"] = [str(s) for s in row["key_strengths"] or []]
    row["key_concerns"] = [str(s) for s in row["key_concerns"] or []]
    return row


def store_qualitative(
    conn: duckdb.DuckDBPyConnection, records: Sequence[Any], source: str = "submitted"
) -> dict[str, Any]:
    """Store validated records (QualitativeRecord or mappings); replace earlier ones of the same race and chain."""
    rows = [_as_row(r) for r in records]
    if not rows:
        return {"records": 0, "races": 0, "replaced": 0, "source": source}
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["source"] = source
    keys = frame[["race_id", "model_chain"]].drop_duplicates()
    conn.register("_qual_store", frame)
    conn.register("_qual_keys", keys)
    conn.execute("BEGIN TRANSACTION")
    try:
        replaced = conn.execute(
            "SELECT count(*) FROM qualitative_records q JOIN _qual_keys k USING (race_id, model_chain)"
        ).fetchall()[0][0]
        conn.execute("DELETE FROM qualitative_records WHERE (race_id, model_chain) IN (SELECT * FROM _qual_keys)")
        conn.execute(
            f"INSERT INTO qualitative_records SELECT {', '.join(COLUMNS)}, source, now()::TIMESTAMP FROM _qual_store"
        )
        conn.execute("COMMIT")
    except duckdb.Error as exc:
        conn.execute("ROLLBACK")
        raise WarehouseError(f"Storing the qualitative records failed; the warehouse is unchanged: {exc}") from exc
    finally:
        conn.unregister("_qual_store")
        conn.unregister("_qual_keys")
    summary = {
        "records": len(frame),
        "races": int(keys["race_id"].nunique()),
        "replaced": int(replaced),
        "source": source,
    }
    logger.info("Stored %(records)d qualitative records of %(races)d race(s), replaced %(replaced)d", summary)
    return summary


def load_qualitative(
    conn: duckdb.DuckDBPyConnection, race_ids: Sequence[str] | None = None, model_chain: str | None = None
) -> list[dict[str, Any]]:
    """Stored records as plain dicts (the schema's fields), optionally of some races and one model chain."""
    sql = f"SELECT {', '.join(COLUMNS)} FROM qualitative_records WHERE 1 = 1"
    params: list[Any] = []
    if race_ids is not None:
        sql += " AND list_contains(?, race_id)"
        params.append([str(r) for r in race_ids])
    if model_chain is not None:
        sql += " AND model_chain = ?"
        params.append(model_chain)
    sql += " ORDER BY race_id, model_chain, horse_id"
    try:
        rows = conn.execute(sql, params).fetchall()
    except duckdb.CatalogException as exc:
        raise WarehouseError(f"The warehouse has no qualitative records table; migrate it first: {exc}") from exc
    out = []
    for row in rows:
        rec: dict[str, Any] = dict(zip(COLUMNS, row, strict=True))
        rec["key_strengths"] = list(rec["key_strengths"])
        rec["key_concerns"] = list(rec["key_concerns"])
        out.append(rec)
    return out


def qualitative_summary(conn: duckdb.DuckDBPyConnection) -> list[Mapping[str, Any]]:
    """Per model chain: stored records, races and the latest prediction timestamp."""
    rows = conn.execute(
        "SELECT model_chain, count(*), count(DISTINCT race_id), max(prediction_timestamp) "
        "FROM qualitative_records GROUP BY model_chain ORDER BY model_chain"
    ).fetchall()
    return [{"model_chain": r[0], "records": r[1], "races": r[2], "latest": r[3]} for r in rows]
