"""Fractional Kelly staking, sized together over the runners of one race.

The outcomes of a race are mutually exclusive, so win bets on several of its runners must be sized
together, not one by one as if independent. Smoczynski and Tomkins (2010) give the exact optimum
(GLOSSARY.md): sort runners by expected return p_i * o_i, descending; grow the set S while
p_i * o_i > R(S), with R(S) = (1 - sum_S p) / (1 - sum_S 1/o); then f_i = p_i - R(S) / o_i for i in S.

On top of the full-Kelly optimum ``KellyStaking`` applies three risk controls: only runners whose edge
p * o - 1 reaches ``min_edge`` are candidates (the optimum over the permitted bets, which is the same
algorithm on that subset), every fraction is multiplied by ``fraction``, and no single stake exceeds
``max_stake`` of the bankroll.

Place outcomes are not exclusive (three runners place), so place bets are sized one at a time with the
single-bet Kelly fraction f = (p * o - 1) / (o - 1), then scaled down together if their total would
exceed ``max_race_stake`` of the bankroll.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from racequant.errors import ConfigurationError

logger = logging.getLogger(__name__)


def race_kelly_fractions(p: np.ndarray, odds: np.ndarray) -> np.ndarray:
    """Full-Kelly bankroll fractions for win bets on the runners of ONE race (Smoczynski-Tomkins).

    ``p`` are the bettor's win probabilities, ``odds`` decimal odds (stake included); runners with a
    missing or non-positive price (NaN, <= 1) are never backed. Returns one fraction per runner, 0 for
    those not backed. The probabilities of the runners listed need not sum to 1 (a subset of the field).
    """
    p = np.asarray(p, dtype=float)
    odds = np.asarray(odds, dtype=float)
    f = np.zeros(len(p))
    valid = np.isfinite(p) & np.isfinite(odds) & (odds > 1.0) & (p > 0)
    idx = np.flatnonzero(valid)
    if len(idx) == 0:
        return f
    expected = p[idx] * odds[idx]
    order = idx[np.argsort(-expected, kind="stable")]
    chosen: list[int] = []
    sum_p = 0.0
    sum_q = 0.0
    reserve = 1.0  # R of the empty set
    for i in order:
        if p[i] * odds[i] <= reserve:
            break
        new_q = sum_q + 1.0 / odds[i]
        if new_q >= 1.0:  # backing this set would cover the whole book; R is no longer defined
            break
        chosen.append(int(i))
        sum_p += p[i]
        sum_q = new_q
        reserve = (1.0 - sum_p) / (1.0 - sum_q)
    for i in chosen:
        f[i] = max(p[i] - reserve / odds[i], 0.0)
    return f


def single_kelly_fraction(p: np.ndarray, odds: np.ndarray) -> np.ndarray:
    """Full-Kelly fraction of one bet on its own: (p * o - 1) / (o - 1), 0 when there is no edge."""
    p = np.asarray(p, dtype=float)
    odds = np.asarray(odds, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = (p * odds - 1.0) / (odds - 1.0)
    return np.where(np.isfinite(f) & (odds > 1.0), np.clip(f, 0.0, 1.0), 0.0)


def _check_fraction(owner: str, name: str, value: object, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
    if ok:
        low_ok = value >= 0 if allow_zero else value > 0
        ok = low_ok and value <= 1
    if not ok:
        span = "[0, 1]" if allow_zero else "(0, 1]"
        raise ConfigurationError(f"The '{name}' parameter of {owner} must be a float in {span}. Got {value!r} instead.")


@dataclass(frozen=True)
class KellyStaking:
    """Fractional Kelly with a minimum edge and stake caps; stakes are fractions of the current bankroll."""

    fraction: float = 0.25
    min_edge: float = 0.05
    max_stake: float = 0.10
    max_race_stake: float = 0.10

    def __post_init__(self) -> None:
        _check_fraction("KellyStaking", "fraction", self.fraction)
        _check_fraction("KellyStaking", "min_edge", self.min_edge, allow_zero=True)
        _check_fraction("KellyStaking", "max_stake", self.max_stake)
        _check_fraction("KellyStaking", "max_race_stake", self.max_race_stake)

    def _eligible(self, p: np.ndarray, odds: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            edge = np.asarray(p, dtype=float) * np.asarray(odds, dtype=float) - 1.0
        return np.isfinite(edge) & (edge >= self.min_edge - 1e-12)

    def win_fractions(self, p: np.ndarray, odds: np.ndarray) -> np.ndarray:
        """Bankroll fractions to stake on each runner of one race to win."""
        p = np.asarray(p, dtype=float)
        odds = np.asarray(odds, dtype=float)
        ok = self._eligible(p, odds)
        f = np.zeros(len(p))
        if ok.any():
            f[ok] = race_kelly_fractions(p[ok], odds[ok])
        return np.minimum(f * self.fraction, self.max_stake)

    def place_fractions(self, p_place: np.ndarray, place_odds: np.ndarray) -> np.ndarray:
        """Bankroll fractions to stake on each runner of one race to place (bets sized one at a time)."""
        p = np.asarray(p_place, dtype=float)
        odds = np.asarray(place_odds, dtype=float)
        ok = self._eligible(p, odds)
        f = np.where(ok, single_kelly_fraction(p, odds), 0.0)
        f = np.minimum(f * self.fraction, self.max_stake)
        total = f.sum()
        if total > self.max_race_stake:
            f = f * (self.max_race_stake / total)
        return f
