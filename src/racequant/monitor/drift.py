"""Drift of the served model: performance (AUC, calibration), features (PSI) and interval coverage.

- Performance: the recent window (the last ``recent_days`` days up to ``as_of``) against everything scored
  before it; flags when the win AUC drops by more than ``auc_drop`` or the recent ECE exceeds ``ece_max``.
- Features: the Population Stability Index of each feature served in the recent window against a reference
  sample (the training window's features); PSI = sum over bins of (a - e) * ln(a / e), with deciles of the
  reference as bins (missing values a bin of their own); flags above ``psi_max``.
- Interval coverage: runners are binned by win probability (deciles, bins of at least ``min_bin`` scored
  runners); a bin is covered when its observed win frequency lies within its mean [lower, upper] interval.
  The share of runners in covered bins estimates the intervals' coverage of the true frequency; it flags
  below ``coverage_target - coverage_tolerance``.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from racequant.monitor.metrics import score_predictions
from racequant.monitor.source import LogSource, log_access
from racequant.warehouse import prediction_log

logger = logging.getLogger(__name__)

_PSI_EPS = 1e-4


def psi(reference: pd.Series | np.ndarray, current: pd.Series | np.ndarray, n_bins: int = 10) -> float:
    """Population Stability Index of ``current`` against ``reference`` (numeric: reference deciles; else levels)."""
    ref = pd.Series(reference)
    cur = pd.Series(current)
    if len(ref) == 0 or len(cur) == 0:
        return float("nan")
    numeric = pd.api.types.is_numeric_dtype(ref) and pd.api.types.is_numeric_dtype(cur)
    if numeric:
        ref_v = ref.astype(float)
        cur_v = cur.astype(float)
        edges = np.unique(np.nanquantile(ref_v, np.linspace(0, 1, n_bins + 1))) if ref_v.notna().any() else []
        inner = edges[1:-1] if len(edges) > 2 else np.asarray([])

        def shares(v: pd.Series) -> np.ndarray:
            codes = np.where(v.isna(), len(inner) + 1, np.searchsorted(inner, v.fillna(0).to_numpy(), side="right"))
            return np.bincount(codes, minlength=len(inner) + 2) / len(v)

        e, a = shares(ref_v), shares(cur_v)
    else:
        levels = sorted(set(ref.astype(str)) | set(cur.astype(str)))
        e = ref.astype(str).value_counts(normalize=True).reindex(levels, fill_value=0).to_numpy()
        a = cur.astype(str).value_counts(normalize=True).reindex(levels, fill_value=0).to_numpy()
    e = np.clip(e, _PSI_EPS, None)
    a = np.clip(a, _PSI_EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def feature_drift(
    reference: pd.DataFrame | None, served: pd.DataFrame, psi_max: float = 0.2, min_rows: int = 50
) -> dict[str, Any]:
    """PSI per feature present in both frames; ``drifted`` lists the features above ``psi_max``."""
    if reference is None or reference.empty:
        return {"status": "unavailable", "reason": "no reference (training window) features", "flag": False}
    if len(served) < min_rows:
        return {
            "status": "unavailable",
            "reason": f"fewer than {min_rows} served runners with logged features",
            "n_served": len(served),
            "flag": False,
        }
    columns = [c for c in reference.columns if c in served.columns]
    values = {c: psi(reference[c], served[c]) for c in columns}
    per_feature = {c: round(v, 6) for c, v in values.items() if math.isfinite(v)}
    drifted = sorted((c for c, v in per_feature.items() if v > psi_max), key=lambda c: -per_feature[c])
    return {
        "status": "ok",
        "n_reference": len(reference),
        "n_served": len(served),
        "psi_max": psi_max,
        "psi": per_feature,
        "drifted": drifted,
        "flag": bool(drifted),
    }


def interval_coverage(scored: pd.DataFrame, n_bins: int = 10, min_bin: int = 30) -> dict[str, Any]:
    """Share of runners in probability bins whose observed win frequency lies within the bin's mean interval."""
    frame = scored.dropna(subset=["won", "win_prob", "win_prob_lower", "win_prob_upper"])
    if len(frame) < min_bin:
        return {"coverage": None, "n": len(frame), "bins": 0}
    ranks = frame["win_prob"].rank(method="first") / len(frame)
    bins = np.minimum((ranks * n_bins).astype(int), n_bins - 1)
    covered = total = used = 0
    for _, group in frame.groupby(bins):
        if len(group) < min_bin:
            continue
        observed = group["won"].astype(float).mean()
        used += 1
        total += len(group)
        if group["win_prob_lower"].mean() <= observed <= group["win_prob_upper"].mean():
            covered += len(group)
    return {"coverage": round(covered / total, 6) if total else None, "n": total, "bins": used}


def _served_features(predictions: pd.DataFrame) -> pd.DataFrame:
    if predictions.empty or "features_json" not in predictions:
        return pd.DataFrame()
    rows = [json.loads(v) for v in predictions["features_json"].dropna()]
    return pd.DataFrame(rows)


def drift_report(
    predictions: pd.DataFrame,
    *,
    as_of: date,
    recent_days: int = 7,
    reference_features: pd.DataFrame | None = None,
    auc_drop: float = 0.05,
    ece_max: float = 0.10,
    psi_max: float = 0.2,
    coverage_target: float = 0.9,
    coverage_tolerance: float = 0.05,
) -> dict[str, Any]:
    """The three drift checks on logged predictions (one row per runner, latest prediction)."""
    start = as_of - timedelta(days=recent_days - 1)
    days = pd.to_datetime(predictions["timestamp"]).dt.date if len(predictions) else pd.Series([], dtype=object)
    recent = predictions[(days >= start) & (days <= as_of)] if len(predictions) else predictions
    history = predictions[days < start] if len(predictions) else predictions

    recent_scores = score_predictions(recent)
    history_scores = score_predictions(history)
    auc_now, auc_before = recent_scores["win_auc"], history_scores["win_auc"]
    auc_drop_seen = (auc_before - auc_now) if auc_now is not None and auc_before is not None else None
    performance = {
        "recent": recent_scores,
        "historical": history_scores,
        "auc_drop": None if auc_drop_seen is None else round(auc_drop_seen, 6),
        "auc_drop_max": auc_drop,
        "ece_max": ece_max,
        "auc_flag": bool(auc_drop_seen is not None and auc_drop_seen > auc_drop),
        "ece_flag": bool(recent_scores["win_ece"] is not None and recent_scores["win_ece"] > ece_max),
    }
    performance["flag"] = performance["auc_flag"] or performance["ece_flag"]

    coverage_now = interval_coverage(recent)
    coverage = {
        "recent": coverage_now,
        "historical": interval_coverage(history),
        "target": coverage_target,
        "tolerance": coverage_tolerance,
        "flag": bool(
            coverage_now["coverage"] is not None and coverage_now["coverage"] < coverage_target - coverage_tolerance
        ),
    }
    features = feature_drift(reference_features, _served_features(recent), psi_max=psi_max)
    report = {
        "as_of": as_of.isoformat(),
        "recent_window": {"start": start.isoformat(), "end": as_of.isoformat(), "days": recent_days},
        "performance": performance,
        "features": features,
        "interval_coverage": coverage,
    }
    report["flags"] = [name for name in ("performance", "features", "interval_coverage") if report[name]["flag"]]
    return report


def drift_thresholds(settings: Any) -> dict[str, float]:
    """The drift thresholds of ``settings`` as keyword arguments of ``drift`` / ``drift_report``."""
    return {
        "auc_drop": settings.drift_auc_drop,
        "ece_max": settings.drift_ece_max,
        "psi_max": settings.drift_psi_max,
        "coverage_target": settings.interval_coverage_target,
        "coverage_tolerance": settings.interval_coverage_tolerance,
    }


def drift(
    source: LogSource,
    *,
    as_of: date | str | None = None,
    recent_days: int = 7,
    reference_features: pd.DataFrame | None = None,
    auc_drop: float = 0.05,
    ece_max: float = 0.10,
    psi_max: float = 0.2,
    coverage_target: float = 0.9,
    coverage_tolerance: float = 0.05,
) -> dict[str, Any]:
    """The drift report of the log up to ``as_of`` (default today, UTC); see the module docstring."""
    as_of = date.fromisoformat(as_of) if isinstance(as_of, str) else as_of or datetime.now(UTC).date()
    with log_access(source) as log:
        predictions = log.read(lambda c: prediction_log.predictions_frame(c, None, as_of))
    return drift_report(
        predictions,
        as_of=as_of,
        recent_days=recent_days,
        reference_features=reference_features,
        auc_drop=auc_drop,
        ece_max=ece_max,
        psi_max=psi_max,
        coverage_target=coverage_target,
        coverage_tolerance=coverage_tolerance,
    )
