"""The real components the API uses by default: the registry predictor on the warehouse, stored features,
the backtest engine. Each holds the warehouse read-only, so the CLI's and the dashboard's readers can run too."""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from racequant.errors import RacequantError, WarehouseError
from racequant.serve.errors import NotFoundError
from racequant.serve.jobs import BacktestRunner
from racequant.serve.predictor import MarketPredictor, Predictor
from racequant.serve.service import FeatureLookup
from racequant.settings import Settings

logger = logging.getLogger(__name__)

MARKET_BASELINE = "market-baseline"


def load_predictor(settings: Settings, resources: ExitStack) -> Predictor:
    """The registry version ``settings.model_version`` (latest by default) attached to the warehouse, read-only.

    ``RACEQUANT_MODEL_VERSION=market-baseline`` serves the odds-only stand-in instead (no warehouse, no model).
    The warehouse connection stays open until ``resources`` is closed.
    """
    if settings.model_version == MARKET_BASELINE:
        logger.warning("serving the market-baseline stand-in predictor, not a trained model")
        return MarketPredictor()
    from racequant.models.predictor import Predictor as RegistryPredictor
    from racequant.warehouse import connect_read_only

    predictor = RegistryPredictor.load(settings.models_dir, settings.model_version)
    conn = resources.enter_context(connect_read_only(settings.db))
    resources.callback(predictor.detach)  # the threads' cursors close before the connection
    return predictor.attach(conn).warm_up()


class WarehouseFeatures:
    """Features of a horse: stored (race_id) or built for a race context, on a read-only warehouse connection."""

    def __init__(self, db: Path, predictor: Predictor) -> None:
        self.db = Path(db)
        self.predictor = predictor
        self._lock = threading.Lock()

    def __call__(self, horse_id: str, race_id: str | None, race: dict[str, Any] | None) -> dict[str, Any]:
        from racequant.features.api import show
        from racequant.warehouse import connect_read_only
        from racequant.warehouse.feature_store import read_features

        with self._lock, connect_read_only(self.db) as conn:
            if race_id is not None:
                runners = read_features(conn, race_id=race_id)
                if runners.empty:
                    raise NotFoundError(f"race_id: race {race_id!r} has no stored features (unknown race).")
                if horse_id not in set(runners["horse_id"].astype(str)):
                    raise NotFoundError(f"horse_id: horse {horse_id!r} did not run in race {race_id!r}.")
                return show(conn, horse_id, race_id)
            assert race is not None
            if read_features(conn, horse_id=horse_id).empty:
                raise NotFoundError(f"horse_id: horse {horse_id!r} is not in the warehouse.")
            features = getattr(self.predictor, "features", None)
            if features is None:
                raise RacequantError("The loaded predictor cannot build features for a race context.")
            card = {
                "race_id": "features-query",
                "date": race["date"],
                "track": race["track"],
                "distance": race["distance_m"],
                "surface": race["surface"],
                "going": race.get("going"),
                "race_class": race.get("race_class"),
                "country": race.get("country") or "HK",
                "horses": [
                    {
                        "horse_id": horse_id,
                        "horse_name": horse_id,
                        "draw": 1,
                        "weight": 126.0,
                        "jockey": "unknown",
                        "trainer": "unknown",
                    }
                ],
            }
            frame = features(conn, card, None)
        row = frame.iloc[0]
        skip = {"race_id", "horse_id", "race_date", "race_seq"}
        values = {c: _plain(row[c]) for c in frame.columns if c not in skip}
        return {
            "horse_id": horse_id,
            "race_id": None,
            "feature_version": getattr(self.predictor, "feature_version", None),
            "features": values,
        }


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def default_feature_lookup(settings: Settings, predictor: Predictor) -> FeatureLookup | None:
    if isinstance(predictor, MarketPredictor) or not Path(settings.db).exists():
        return None
    return WarehouseFeatures(settings.db, predictor)


def default_backtest_runner(settings: Settings) -> BacktestRunner | None:
    """A walk-forward backtest of the default pipeline on the warehouse's stored features (not stored back: the
    API holds the warehouse read-only); outputs under ``<db folder>/backtests/api-<time>/``."""

    def run(params: dict[str, Any]) -> dict[str, Any]:
        from racequant.backtest import WalkForwardSplit
        from racequant.backtest.api import backtest_from_warehouse
        from racequant.backtest.report import metrics_document
        from racequant.warehouse import connect_read_only

        if not Path(settings.db).exists():
            raise WarehouseError("There is no warehouse to backtest on.")
        splitter = WalkForwardSplit(
            params["start"],
            params["end"],
            train_window_days=params["train_window_days"],
            test_window_days=params["test_window_days"],
            retrain_every_days=params["retrain_every_days"],
        )
        out_dir = Path(settings.db).parent / "backtests" / f"api-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
        with connect_read_only(settings.db) as conn:
            result, _ = backtest_from_warehouse(conn, out_dir, splitter, store=False)
        return metrics_document(result)

    return run


def reference_features(predictor: Predictor, settings: Settings) -> pd.DataFrame | None:
    """The training window's stored features (a sample of at most 20,000 runners), for feature drift."""
    if isinstance(predictor, MarketPredictor) or not Path(settings.db).exists():
        return None
    manifest: dict[str, Any] = getattr(predictor, "manifest", {}) or {}
    window = manifest.get("training_window") or {}
    columns = list(getattr(getattr(predictor, "pipeline", None), "feature_columns_", []) or [])
    try:
        from racequant.warehouse import connect_read_only
        from racequant.warehouse.feature_store import read_features

        with connect_read_only(settings.db) as conn:
            frame = read_features(conn)
    except RacequantError as exc:
        logger.warning("no reference features for feature drift: %s", exc)
        return None
    dates = pd.to_datetime(frame["race_date"])
    start, end = window.get("start") or window.get("first_date"), window.get("end") or window.get("last_date")
    if start:
        frame = frame[dates >= pd.Timestamp(start)]
    if end:
        frame = frame[pd.to_datetime(frame["race_date"]) <= pd.Timestamp(end)]
    keep = [c for c in columns if c in frame.columns] or [
        c for c in frame.columns if c not in ("race_id", "horse_id", "race_date", "race_seq", "feature_version")
    ]
    frame = frame[keep]
    return frame.sample(n=min(len(frame), 20_000), random_state=0) if len(frame) else None
