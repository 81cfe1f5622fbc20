"""The real components the API uses by default: the registry predictor, warehouse features, the backtest engine."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from racequant.errors import RacequantError
from racequant.serve.jobs import BacktestRunner
from racequant.serve.predictor import MarketPredictor, Predictor
from racequant.serve.service import FeatureLookup
from racequant.settings import Settings

logger = logging.getLogger(__name__)

MARKET_BASELINE = "market-baseline"


def load_predictor(settings: Settings) -> Predictor:
    """The registry version ``settings.model_version`` (latest by default); "market-baseline" gives the stand-in."""
    if settings.model_version == MARKET_BASELINE:
        logger.warning("serving the market-baseline stand-in predictor, not a trained model")
        return MarketPredictor()
    raise RacequantError("No registry predictor is wired yet; set RACEQUANT_MODEL_VERSION=market-baseline.")


def default_feature_lookup(settings: Settings) -> FeatureLookup | None:
    return None


def default_backtest_runner(settings: Settings) -> BacktestRunner | None:
    return None


def reference_features(predictor: Predictor, settings: Settings) -> pd.DataFrame | None:
    get: Any = getattr(predictor, "reference_features", None)
    if callable(get):
        try:
            return get()
        except RacequantError as exc:
            logger.warning("no reference features for feature drift: %s", exc)
    return None
