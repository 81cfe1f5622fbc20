"""Daily metrics of the served predictions: counts, win and place AUC, Brier, ECE and mean latency.

Computed in full from the log (every scored runner of the day, no sampling) with the scores of
``racequant.calibration.metrics``. A runner predicted several times in a day counts once, by its last prediction.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pandas as pd

from racequant.calibration.metrics import brier, expected_calibration_error, runner_auc
from racequant.monitor.source import LogSource, log_access
from racequant.warehouse import prediction_log

logger = logging.getLogger(__name__)


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 6)


def _auc(p: np.ndarray, y: np.ndarray) -> float | None:
    """AUC, or None when the outcomes are all one class (it is undefined then)."""
    if len(y) == 0 or y.all() or not y.any():
        return None
    return runner_auc(p, y)


def score_predictions(predictions: pd.DataFrame) -> dict[str, Any]:
    """n, win and place AUC, Brier and ECE of the predictions with a known outcome."""
    win = predictions[predictions["won"].notna()] if len(predictions) else predictions
    place = predictions[predictions["placed"].notna() & predictions["place_prob"].notna()] if len(predictions) else win
    out: dict[str, Any] = {"n_scored": len(win), "n_races": int(win["race_id"].nunique()) if len(win) else 0}
    if len(win):
        p, y = win["win_prob"].to_numpy(float), win["won"].to_numpy(bool)
        out.update(
            win_auc=_finite(_auc(p, y)),
            win_brier=_finite(brier(p, y)),
            win_ece=_finite(expected_calibration_error(p, y)),
        )
    else:
        out.update(win_auc=None, win_brier=None, win_ece=None)
    if len(place):
        p, y = place["place_prob"].to_numpy(float), place["placed"].to_numpy(bool)
        out.update(
            place_auc=_finite(_auc(p, y)),
            place_brier=_finite(brier(p, y)),
            place_ece=_finite(expected_calibration_error(p, y)),
        )
    else:
        out.update(place_auc=None, place_brier=None, place_ece=None)
    return out


def _as_day(day: date | datetime | str) -> date:
    if isinstance(day, datetime):
        return day.date()
    if isinstance(day, date):
        return day
    return date.fromisoformat(str(day))


def compute_daily_metrics(predictions: pd.DataFrame, latencies: pd.DataFrame, day: date) -> dict[str, Any]:
    """The metrics row of one day from its logged predictions and request latencies."""
    row: dict[str, Any] = {"day": day, "n_predictions": len(predictions)}
    row.update(score_predictions(predictions))
    row["mean_latency_ms"] = _finite(float(latencies["latency_ms"].mean())) if len(latencies) else None
    row["n_requests"] = len(latencies)
    return row


def daily_metrics(source: LogSource, day: date | datetime | str, store: bool = True) -> dict[str, Any]:
    """Compute (and with ``store`` keep in the log's daily_metrics table) the metrics of one UTC day.

    ``source`` is the server's LogWriter, a prediction log file, or a warehouse path (its default log beside it).
    """
    day = _as_day(day)
    with log_access(source, write=store) as log:
        predictions = log.read(lambda c: prediction_log.predictions_frame(c, day, day))
        latencies = log.read(lambda c: prediction_log.request_latencies(c, day, day))
        row = compute_daily_metrics(predictions, latencies, day)
        row["computed_at"] = datetime.now(UTC).replace(tzinfo=None)
        if store:
            log.write(lambda c: prediction_log.store_daily_metrics(c, row))
    logger.info("daily metrics of %s: %d predictions, %d scored", day, row["n_predictions"], row["n_scored"])
    return {**row, "day": day.isoformat(), "computed_at": row["computed_at"].isoformat() + "Z"}
