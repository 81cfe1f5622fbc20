"""The data ``racequant train`` and the demo fit on: stored features joined with results, checked for staleness."""

from __future__ import annotations

import logging

import duckdb
import pandas as pd

from racequant.features.manifest import feature_version
from racequant.warehouse import feature_store
from racequant.warehouse.backtest_store import load_backtest_frame
from racequant.warehouse.queries import db_info

logger = logging.getLogger(__name__)


def stored_features_problem(conn: duckdb.DuckDBPyConnection) -> str | None:
    """Why the stored features cannot be trained on as they are (missing, other version, fewer races), or None."""
    stored = feature_store.stored_version(conn)
    if stored is None:
        return "the warehouse has no stored features"
    current = feature_version()
    if stored != current:
        return f"the stored features are feature version {stored}, the feature definitions are at {current}"
    frame_races = load_backtest_frame(conn)["race_id"].nunique()
    races = int(db_info(conn)["races"])  # type: ignore[arg-type]
    if frame_races < races:
        return f"the stored features cover {frame_races:,} of the warehouse's {races:,} races"
    return None


def training_frame(conn: duckdb.DuckDBPyConnection, until: str | pd.Timestamp | None = None) -> pd.DataFrame:
    """One row per runner (withdrawn excluded): stored features, ``race_date``, ``finish_position``, ``track``.

    ``until`` keeps races dated before it (train_model applies the same rule).
    """
    frame = load_backtest_frame(conn)
    frame["race_date"] = pd.to_datetime(frame["date"])
    if until is not None:
        frame = frame[frame["race_date"] < pd.Timestamp(until)].reset_index(drop=True)
    logger.info("training frame: %d runners in %d races", len(frame), frame["race_id"].nunique())
    return frame


__all__ = ["stored_features_problem", "training_frame"]
