"""Scores of win and place probabilities, per GLOSSARY.md; scikit-learn's metrics where they exist.

Every function takes one row per runner: the race it ran in, the probability given, and the outcome
(won: 1 for a winner, dead heats give several winners in a race).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

logger = logging.getLogger(__name__)

_EPS = 1e-15

ArrayLike = Sequence[float] | np.ndarray


def _codes(race_ids: Sequence[object] | np.ndarray) -> tuple[np.ndarray, int]:
    _, inverse = np.unique(np.asarray(race_ids), return_inverse=True)
    return inverse.astype(np.int64), int(inverse.max()) + 1 if len(inverse) else 0


def _winner_logs(
    race_ids: Sequence[object] | np.ndarray, p: ArrayLike, won: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """log P(winner) per race with a winner (dead heats: log of the summed probability) and the field sizes."""
    codes, n_races = _codes(race_ids)
    p = np.asarray(p, dtype=float)
    is_winner = np.asarray(won, dtype=float) > 0
    p_win = np.bincount(codes[is_winner], weights=p[is_winner], minlength=n_races)
    has_winner = np.bincount(codes[is_winner], minlength=n_races) > 0
    sizes = np.bincount(codes, minlength=n_races)
    return np.log(np.clip(p_win[has_winner], _EPS, None)), sizes[has_winner]


def winner_log_loss(race_ids: Sequence[object] | np.ndarray, p: ArrayLike, won: ArrayLike) -> float:
    """Mean over races of -log P(winner)."""
    logs, _ = _winner_logs(race_ids, p, won)
    return float(-logs.mean())


def pseudo_r2(race_ids: Sequence[object] | np.ndarray, p: ArrayLike, won: ArrayLike) -> float:
    """Benter's R2 = 1 - sum log p(winner) / sum log(1/n); 0 for equal chances, 1 for certainty."""
    logs, sizes = _winner_logs(race_ids, p, won)
    return float(1.0 - logs.sum() / np.sum(np.log(1.0 / sizes)))


def runner_auc(p: ArrayLike, won: ArrayLike) -> float:
    """Area under the ROC curve, winners against losers across all races."""
    return float(roc_auc_score(np.asarray(won, dtype=float) > 0, np.asarray(p, dtype=float)))


def brier(p: ArrayLike, outcome: ArrayLike) -> float:
    """Mean squared error of the probability per runner."""
    return float(brier_score_loss(np.asarray(outcome, dtype=float) > 0, np.clip(np.asarray(p, dtype=float), 0, 1)))


def expected_calibration_error(p: ArrayLike, outcome: ArrayLike, n_bins: int = 10) -> float:
    """ECE: sum over equal-width bins of (n_b / N) * |mean predicted - observed frequency|."""
    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    y = np.asarray(outcome, dtype=float) > 0
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    n_b = np.bincount(bins, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y.astype(float), minlength=n_bins)
    filled = n_b > 0
    return float(np.sum(np.abs(sum_p[filled] - sum_y[filled])) / len(p))


def reliability_table(p: ArrayLike, outcome: ArrayLike, n_bins: int = 10) -> list[dict[str, float]]:
    """Per equal-width bin: count, mean predicted and observed frequency (a reliability diagram's points)."""
    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    y = (np.asarray(outcome, dtype=float) > 0).astype(float)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    rows = []
    for b in range(n_bins):
        m = bins == b
        if m.any():
            rows.append(
                {"bin": b, "n": int(m.sum()), "mean_predicted": float(p[m].mean()), "observed": float(y[m].mean())}
            )
    return rows


def top_pick_strike_rate(race_ids: Sequence[object] | np.ndarray, p: ArrayLike, won: ArrayLike) -> float:
    """Share of races whose highest-probability runner won (a dead heat counts as a win)."""
    codes, _ = _codes(race_ids)
    p = np.asarray(p, dtype=float)
    won = np.asarray(won, dtype=float) > 0
    order = np.lexsort((-p, codes))  # by race, then probability descending
    first = np.ones(len(order), dtype=bool)
    first[1:] = codes[order][1:] != codes[order][:-1]
    return float(won[order][first].mean())


def place_log_loss(p_place: ArrayLike, placed: ArrayLike) -> float:
    """Binary log loss of place probabilities per runner."""
    p = np.clip(np.asarray(p_place, dtype=float), _EPS, 1 - _EPS)
    return float(log_loss(np.asarray(placed, dtype=float) > 0, p, labels=[False, True]))


def benchmark_metrics(
    race_ids: Sequence[object] | np.ndarray,
    p_win: ArrayLike,
    won: ArrayLike,
    p_place: ArrayLike | None = None,
    placed: ArrayLike | None = None,
) -> dict[str, float]:
    """Every figure of the benchmark table for one set of probabilities."""
    out = {
        "winner_log_loss": winner_log_loss(race_ids, p_win, won),
        "pseudo_r2": pseudo_r2(race_ids, p_win, won),
        "runner_auc": runner_auc(p_win, won),
        "brier": brier(p_win, won),
        "ece": expected_calibration_error(p_win, won),
        "top_pick_strike_rate": top_pick_strike_rate(race_ids, p_win, won),
    }
    if p_place is not None and placed is not None:
        out["place_log_loss"] = place_log_loss(p_place, placed)
        out["place_brier"] = brier(p_place, placed)
    return out
