"""Plain functions behind ``racequant features build | list | show | export`` (the CLI only prints)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from racequant.errors import RacequantError
from racequant.features.build import built_features
from racequant.features.manifest import all_specs, feature_version
from racequant.warehouse import feature_store

logger = logging.getLogger(__name__)


def list_features() -> list[dict[str, Any]]:
    """Every feature: name, category, description, columns read, dtype, and whether it is fundamental."""
    return [{**s.as_dict(), "fundamental": s.category != "market"} for s in all_specs()]


def build_and_store(
    conn: duckdb.DuckDBPyConnection,
    *,
    progress: Callable[[str], None] | None = None,
    memory_limit: str | None = None,
) -> dict[str, Any]:
    """Build the features of every race in the warehouse and store them; return a summary.

    The built rows go to the features table inside DuckDB, never through a DataFrame, so the peak memory is
    DuckDB's: ``memory_limit`` (e.g. "3GB") caps it for the build (it spills to disk beyond it).
    """
    started = time.perf_counter()
    with built_features(conn, progress=progress, save_card_state=True, memory_limit=memory_limit) as table:
        summary = feature_store.store_feature_table(
            conn,
            table,
            feature_version=feature_version(),
            manifest=list_features(),
            seconds=time.perf_counter() - started,
        )
    summary["coverage_mean"] = round(feature_store.stored_coverage(conn, [s.name for s in all_specs()]), 4)
    return summary


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return value


def show(conn: duckdb.DuckDBPyConnection, horse_id: str, race_id: str) -> dict[str, Any]:
    """The stored features of one runner: {race_id, horse_id, feature_version, features: {name: value}}."""
    frame = feature_store.read_features(conn, race_id=race_id, horse_id=horse_id)
    if frame.empty:
        raise RacequantError(f"No stored features for horse {horse_id!r} in race {race_id!r}.")
    row = frame.iloc[0]
    return {
        "race_id": race_id,
        "horse_id": horse_id,
        "feature_version": str(row["feature_version"]),
        "race_date": _clean(row["race_date"]),
        "features": {s.name: _clean(row[s.name]) for s in all_specs()},
    }


def export(conn: duckdb.DuckDBPyConnection, out_path: Path | str) -> dict[str, Any]:
    """Write the stored features to ``out_path`` (Parquet, or CSV by extension)."""
    rows = feature_store.export_features(conn, out_path)
    return {"path": str(out_path), "rows": rows, "feature_version": feature_store.stored_version(conn)}
