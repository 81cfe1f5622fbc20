"""The backtest's figures, from the frame of test predictions (one row per runner).

Scores come from ``racequant.calibration.metrics``; this module adds what needs whole races or the betting
ledger: the market and combined rows on the same races, race-level bootstrap intervals, Kelly ROI and its
interval, and the breakdowns by fold, track and class.

Columns read: race_id, date, fold, won, placed, win_prob, place_prob, win_prob_lower, win_prob_upper,
market_prob, market_ok (all runners of the race priced), combined_prob, market_recal_prob (NaN where the
second stage was not yet fitted), win_odds, place_odds, and the ledger columns stake_win_kelly,
return_win_kelly, stake_place_kelly, return_place_kelly, stake_win_fundamental, ... (see ``engine``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from racequant.calibration import metrics as M

logger = logging.getLogger(__name__)

ODDS_BANDS: tuple[tuple[float, float], ...] = ((1.0, 3.0), (3.0, 6.0), (6.0, 10.0), (10.0, 20.0), (20.0, math.inf))


def _nan() -> float:
    return float("nan")


def _safe(fn: Any, *args: Any) -> float:
    try:
        return float(fn(*args))
    except (ValueError, ZeroDivisionError, IndexError):
        return _nan()


def winner_logs(frame: pd.DataFrame, prob_col: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per race with a winner: race ids, log P(winner) (dead heats summed) and log(1/n)."""
    won = frame["won"].to_numpy() > 0
    p = frame[prob_col].to_numpy(dtype=float)
    race = frame["race_id"].to_numpy()
    g = pd.DataFrame({"race_id": race, "pw": np.where(won, p, 0.0), "won": won})
    agg = g.groupby("race_id", sort=True).agg(pw=("pw", "sum"), n=("pw", "size"), w=("won", "sum"))
    agg = agg[agg["w"] > 0]
    return (
        agg.index.to_numpy(),
        np.log(np.clip(agg["pw"].to_numpy(), 1e-15, None)),
        np.log(1.0 / agg["n"].to_numpy()),
    )


def bootstrap_delta_r2(
    frame: pd.DataFrame, col_a: str, col_b: str, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """R2(col_a) - R2(col_b) on the same races, with a race-level bootstrap percentile interval."""
    _, la, base = winner_logs(frame, col_a)
    _, lb, _ = winner_logs(frame, col_b)
    if len(la) == 0:
        return _nan(), _nan(), _nan()
    delta = (1 - la.sum() / base.sum()) - (1 - lb.sum() / base.sum())
    if n_boot <= 0 or len(la) < 2:
        return float(delta), _nan(), _nan()
    idx = np.random.default_rng(seed).integers(0, len(la), size=(n_boot, len(la)))
    sa, sb, s0 = la[idx].sum(axis=1), lb[idx].sum(axis=1), base[idx].sum(axis=1)
    deltas = (sb - sa) / s0
    alpha = (1 - confidence) / 2
    return float(delta), float(np.quantile(deltas, alpha)), float(np.quantile(deltas, 1 - alpha))


def bootstrap_roi(
    race_ids: np.ndarray,
    stakes: np.ndarray,
    returns: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """ROI = sum(returns - stakes) / sum(stakes), with a race-level bootstrap percentile interval."""
    bet = stakes > 0
    if not bet.any():
        return _nan(), _nan(), _nan()
    g = pd.DataFrame({"race": race_ids[bet], "s": stakes[bet], "r": returns[bet]}).groupby("race").sum()
    s, r = g["s"].to_numpy(), g["r"].to_numpy()
    roi = (r.sum() - s.sum()) / s.sum()
    if n_boot <= 0 or len(s) < 2:
        return float(roi), _nan(), _nan()
    idx = np.random.default_rng(seed).integers(0, len(s), size=(n_boot, len(s)))
    ss, rr = s[idx].sum(axis=1), r[idx].sum(axis=1)
    rois = (rr - ss) / np.where(ss > 0, ss, np.nan)
    alpha = (1 - confidence) / 2
    return float(roi), float(np.nanquantile(rois, alpha)), float(np.nanquantile(rois, 1 - alpha))


def interval_coverage(frame: pd.DataFrame, n_bins: int = 20, kind: str = "win") -> float:
    """Share of runners whose [lower, upper] holds the frequency behind their probability.

    The true frequency is known only on simulated data (column ``true_win_prob``); otherwise it is
    estimated by the observed frequency of the runner's bin of equal-count predicted probability.
    """
    lo, hi = f"{kind}_prob_lower", f"{kind}_prob_upper"
    if lo not in frame.columns or hi not in frame.columns or frame.empty:
        return _nan()
    if kind == "win" and "true_win_prob" in frame.columns:
        truth = frame["true_win_prob"].to_numpy(dtype=float)
    else:
        p = frame[f"{kind}_prob"].to_numpy(dtype=float)
        y = frame["won" if kind == "win" else "placed"].to_numpy(dtype=float)
        order = np.argsort(p, kind="stable")
        truth = np.empty(len(p))
        for chunk in np.array_split(order, min(n_bins, len(p))):
            truth[chunk] = y[chunk].mean()
    lower, upper = frame[lo].to_numpy(dtype=float), frame[hi].to_numpy(dtype=float)
    return float(np.mean((truth >= lower) & (truth <= upper)))


def _binary_log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _favourite_strike_rate(frame: pd.DataFrame) -> float:
    """Share of races won by the market favourite (shortest win odds; ties: both count as the pick)."""
    odds = frame["win_odds"].to_numpy(dtype=float)
    return M.top_pick_strike_rate(frame["race_id"].to_numpy(), -np.nan_to_num(odds, nan=np.inf), frame["won"])


def probability_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """Scores of the model's win and place probabilities on every race of ``frame``."""
    race = frame["race_id"].to_numpy()
    won = frame["won"].to_numpy(dtype=float)
    placed = frame["placed"].to_numpy(dtype=float)
    pw, pp = frame["win_prob"].to_numpy(dtype=float), frame["place_prob"].to_numpy(dtype=float)
    return {
        "n_races": int(frame["race_id"].nunique()),
        "n_runners": len(frame),
        "win_auc": _safe(M.runner_auc, pw, won),
        "place_auc": _safe(M.runner_auc, pp, placed),
        "win_brier": _safe(M.brier, pw, won),
        "place_brier": _safe(M.brier, pp, placed),
        "win_logloss": _binary_log_loss(pw, won),
        "place_logloss": _binary_log_loss(pp, placed),
        "ece": _safe(M.expected_calibration_error, pw, won),
        "place_ece": _safe(M.expected_calibration_error, pp, placed),
        "winner_logloss_per_race": _safe(M.winner_log_loss, race, pw, won),
        "pseudo_r2": _safe(M.pseudo_r2, race, pw, won),
        "top_pick_strike_rate": _safe(M.top_pick_strike_rate, race, pw, won),
        "interval_coverage_win": interval_coverage(frame, kind="win"),
        "interval_coverage_place": interval_coverage(frame, kind="place"),
    }


def market_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """The market's scores on the races of ``frame`` whose every runner is priced."""
    m = frame[frame["market_ok"]]
    if m.empty:
        return {
            "n_races_market": 0,
            "market_pseudo_r2": _nan(),
            "market_winner_logloss_per_race": _nan(),
            "favourite_strike_rate": _nan(),
            "market_ece": _nan(),
            "market_auc": _nan(),
            "market_brier": _nan(),
        }
    race, won, p = m["race_id"].to_numpy(), m["won"].to_numpy(dtype=float), m["market_prob"].to_numpy(dtype=float)
    return {
        "n_races_market": int(m["race_id"].nunique()),
        "market_pseudo_r2": _safe(M.pseudo_r2, race, p, won),
        "market_winner_logloss_per_race": _safe(M.winner_log_loss, race, p, won),
        "favourite_strike_rate": _favourite_strike_rate(m),
        "market_ece": _safe(M.expected_calibration_error, p, won),
        "market_auc": _safe(M.runner_auc, p, won),
        "market_brier": _safe(M.brier, p, won),
        "model_pseudo_r2_market_races": _safe(M.pseudo_r2, race, m["win_prob"].to_numpy(dtype=float), won),
    }


def combined_metrics(frame: pd.DataFrame, n_boot: int, seed: int) -> dict[str, float]:
    """Second-stage figures on the races where it was applied (every later fold), against the market there."""
    c = frame[frame["market_ok"] & frame["combined_prob"].notna()]
    keys = (
        "combined_pseudo_r2",
        "combined_winner_logloss_per_race",
        "combined_ece",
        "market_recal_pseudo_r2",
        "market_pseudo_r2_combined_races",
        "delta_r2",
        "delta_r2_ci_low",
        "delta_r2_ci_high",
        "delta_r2_vs_recal_market",
        "delta_r2_vs_recal_market_ci_low",
        "delta_r2_vs_recal_market_ci_high",
        "market_recal_gain_r2",
        "combined_top_pick_strike_rate",
    )
    if c.empty:
        return {"n_races_combined": 0, **{k: _nan() for k in keys}}
    race, won = c["race_id"].to_numpy(), c["won"].to_numpy(dtype=float)
    pc = c["combined_prob"].to_numpy(dtype=float)
    d, lo, hi = bootstrap_delta_r2(c, "combined_prob", "market_prob", n_boot, seed)
    d2, lo2, hi2 = bootstrap_delta_r2(c, "combined_prob", "market_recal_prob", n_boot, seed)
    market_r2 = _safe(M.pseudo_r2, race, c["market_prob"].to_numpy(dtype=float), won)
    recal_r2 = _safe(M.pseudo_r2, race, c["market_recal_prob"].to_numpy(dtype=float), won)
    return {
        "n_races_combined": int(c["race_id"].nunique()),
        "combined_pseudo_r2": _safe(M.pseudo_r2, race, pc, won),
        "combined_winner_logloss_per_race": _safe(M.winner_log_loss, race, pc, won),
        "combined_ece": _safe(M.expected_calibration_error, pc, won),
        "combined_top_pick_strike_rate": _safe(M.top_pick_strike_rate, race, pc, won),
        "market_pseudo_r2_combined_races": market_r2,
        "market_recal_pseudo_r2": recal_r2,
        "market_recal_gain_r2": recal_r2 - market_r2,
        "delta_r2": d,
        "delta_r2_ci_low": lo,
        "delta_r2_ci_high": hi,
        "delta_r2_vs_recal_market": d2,
        "delta_r2_vs_recal_market_ci_low": lo2,
        "delta_r2_vs_recal_market_ci_high": hi2,
    }


def _roi(frame: pd.DataFrame, stake: str, ret: str) -> tuple[float, float]:
    s, r = frame[stake].to_numpy(dtype=float), frame[ret].to_numpy(dtype=float)
    total = s.sum()
    return (float((r.sum() - total) / total) if total > 0 else _nan()), float(total)


def betting_metrics(frame: pd.DataFrame, source: str, n_boot: int, seed: int) -> dict[str, float]:
    """Kelly ROI (the chosen probabilities: ``source``), flat references, their intervals and bet counts.

    ``roi_kelly`` (and ``roi_kelly_{source}`` per source) is the ROI of the whole betting run: every win and
    place bet of the source, profit over stakes, with its race-level bootstrap interval; ``roi_kelly_win`` and
    ``roi_kelly_place`` split it by bet type (same bankroll path)."""
    race = frame["race_id"].to_numpy()
    out: dict[str, float] = {"betting_probabilities": source}  # type: ignore[dict-item]
    for src in ("fundamental", "combined"):
        for kind in ("win", "place"):
            stake, ret = f"stake_{kind}_{src}", f"return_{kind}_{src}"
            if stake not in frame.columns:
                continue
            roi, lo, hi = bootstrap_roi(
                race, frame[stake].to_numpy(dtype=float), frame[ret].to_numpy(dtype=float), n_boot, seed
            )
            out[f"roi_kelly_{kind}_{src}"] = roi
            out[f"roi_kelly_{kind}_{src}_ci_low"] = lo
            out[f"roi_kelly_{kind}_{src}_ci_high"] = hi
            out[f"n_bets_{kind}_{src}"] = int((frame[stake] > 0).sum())
            out[f"turnover_{kind}_{src}"] = float(frame[stake].sum())
        # the whole betting run of the source: its win and place bets, one bankroll
        parts = [k for k in ("win", "place") if f"stake_{k}_{src}" in frame.columns]
        if parts:
            stakes = sum(frame[f"stake_{k}_{src}"].to_numpy(dtype=float) for k in parts)
            returns = sum(frame[f"return_{k}_{src}"].to_numpy(dtype=float) for k in parts)
            roi, lo, hi = bootstrap_roi(race, stakes, returns, n_boot, seed)  # type: ignore[arg-type]
            out[f"roi_kelly_{src}"], out[f"roi_kelly_{src}_ci_low"], out[f"roi_kelly_{src}_ci_high"] = roi, lo, hi
            out[f"n_bets_{src}"] = sum(int(out[f"n_bets_{k}_{src}"]) for k in parts)
            out[f"turnover_{src}"] = float(np.sum(stakes))
            out[f"profit_{src}"] = float(np.sum(returns) - np.sum(stakes))
    out["roi_kelly"] = out.get(f"roi_kelly_{source}", _nan())
    out["roi_kelly_ci_low"] = out.get(f"roi_kelly_{source}_ci_low", _nan())
    out["roi_kelly_ci_high"] = out.get(f"roi_kelly_{source}_ci_high", _nan())
    for kind in ("win", "place"):
        out[f"roi_kelly_{kind}"] = out.get(f"roi_kelly_{kind}_{source}", _nan())
    out["roi_ci_low"] = out.get(f"roi_kelly_win_{source}_ci_low", _nan())
    out["roi_ci_high"] = out.get(f"roi_kelly_win_{source}_ci_high", _nan())
    out["roi_kelly_place_ci_low"] = out.get(f"roi_kelly_place_{source}_ci_low", _nan())
    out["roi_kelly_place_ci_high"] = out.get(f"roi_kelly_place_{source}_ci_high", _nan())
    out["n_bets"] = int(out.get(f"n_bets_win_{source}", 0)) + int(out.get(f"n_bets_place_{source}", 0))
    for name in ("top_pick", "favourite"):
        stake, ret = f"stake_flat_{name}", f"return_flat_{name}"
        if stake in frame.columns:
            roi, lo, hi = bootstrap_roi(
                race, frame[stake].to_numpy(dtype=float), frame[ret].to_numpy(dtype=float), n_boot, seed
            )
            out[f"roi_flat_{name}"], out[f"roi_flat_{name}_ci_low"], out[f"roi_flat_{name}_ci_high"] = roi, lo, hi
    return out


def roi_by_odds_band(frame: pd.DataFrame, source: str) -> list[dict[str, float]]:
    """Kelly win bets grouped by their odds: bets, staked, ROI."""
    stake, ret = f"stake_win_{source}", f"return_win_{source}"
    rows = []
    if stake not in frame.columns:
        return rows
    bets = frame[frame[stake] > 0]
    for lo, hi in ODDS_BANDS:
        b = bets[(bets["win_odds"] >= lo) & (bets["win_odds"] < hi)]
        roi, staked = _roi(b, stake, ret)
        label = f"{lo:g}-{hi:g}" if math.isfinite(hi) else f"{lo:g}+"
        rows.append({"band": label, "n_bets": len(b), "staked": staked, "roi": roi})
    return rows


def all_metrics(frame: pd.DataFrame, *, source: str = "combined", n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every headline figure for the races of ``frame``: model, market, combined, betting."""
    if frame.empty:
        return {"n_races": 0}
    return {
        **probability_metrics(frame),
        **market_metrics(frame),
        **combined_metrics(frame, n_boot, seed),
        **betting_metrics(frame, source, n_boot, seed),
    }


def grouped_metrics(
    frame: pd.DataFrame, column: str, *, source: str = "combined", n_boot: int = 200, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """``all_metrics`` per value of a race-level column (track, race_class, fold)."""
    if column not in frame.columns:
        return {}
    out = {}
    for value, part in frame.groupby(frame[column].astype("string").fillna("unknown"), sort=True):
        out[str(value)] = all_metrics(part, source=source, n_boot=n_boot, seed=seed)
    return out


def reliability(frame: pd.DataFrame, n_bins: int = 10) -> dict[str, list[dict[str, float]]]:
    """Reliability-diagram points of the model, the market and the combined probabilities."""
    out = {"model": M.reliability_table(frame["win_prob"], frame["won"], n_bins)}
    m = frame[frame["market_ok"]]
    if not m.empty:
        out["market"] = M.reliability_table(m["market_prob"], m["won"], n_bins)
    c = m[m["combined_prob"].notna()]
    if not c.empty:
        out["combined"] = M.reliability_table(c["combined_prob"], c["won"], n_bins)
    return out
