"""What the API needs of a predictor, the stand-in that uses the card's own odds, and the registry loader.

The API holds one ``Predictor`` for its lifetime (loaded by the app's lifespan). Any object with these
attributes and a ``predict(card, as_of)`` returning one record per runner in the quantitative output schema
will do; tests pass a small one. A record may carry an extra ``_features``: the runner's feature values as
a mapping, or as that mapping's JSON text (the model's predictor encodes it itself), which the API logs for
feature-drift monitoring and strips from the response.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import numpy as np

from racequant.models.card import RaceCard
from racequant.models.place import harville_place_probabilities

logger = logging.getLogger(__name__)

SIX_MODELS = ("catboost_win", "lightgbm_win", "xgboost_win", "catboost_place", "lightgbm_place", "xgboost_place")


@runtime_checkable
class Predictor(Protocol):
    """A loaded model version that quantifies race cards."""

    model_version: str
    feature_version: str
    feature_count: int
    models_loaded: dict[str, bool]

    def predict(self, card: RaceCard, as_of: datetime | None) -> list[dict[str, Any]]: ...


class MarketPredictor:
    """Stand-in predictor: the card's normalised win odds (equal chances without odds), Harville places.

    For tests, the API benchmark and running the API without a trained model; it has no boosters, so
    ``models_loaded`` is all False and the model status says "degraded".
    """

    blocking = False  # microseconds per card: the API calls it on the event loop
    model_version = "market-baseline"
    feature_version = "none"
    feature_count = 0
    models_loaded = dict.fromkeys(SIX_MODELS, False)

    def predict(self, card: RaceCard, as_of: datetime | None) -> list[dict[str, Any]]:
        runners = card.declared()
        odds = np.array([r.win_odds or np.nan for r in runners], dtype=float)
        q = np.where(np.isfinite(odds), 1.0 / odds, np.nan)
        if np.isnan(q).all():
            q = np.ones(len(runners))
        q = np.where(np.isnan(q), np.nanmin(q), q)
        p = q / q.sum()
        place = harville_place_probabilities(p, np.zeros(len(p), dtype=int))
        now = datetime.now(UTC)
        return [
            {
                "race_id": card.race_id,
                "horse_id": r.horse_id,
                "horse_name": r.horse_name,
                "win_prob_base": float(pw),
                "place_prob_base": float(pp),
                "win_prob_lower": float(pw * 0.8),
                "win_prob_upper": float(min(1.0, pw * 1.25)),
                "place_prob_lower": float(pp * 0.85),
                "place_prob_upper": float(min(1.0, pp * 1.15)),
                "top_features": [],
                "model_version": self.model_version,
                "feature_version": self.feature_version,
                "calibration_group": card.track,
                "prediction_timestamp": now,
            }
            for r, pw, pp in zip(runners, p, place, strict=True)
        ]
