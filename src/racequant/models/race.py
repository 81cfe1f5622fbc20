"""Race-level probabilities: per-runner scores become probabilities within each race.

A horse's chance depends on its rivals, so scores are turned into probabilities by a softmax over the
runners of one race (the conditional logit). Its temperature is fitted by maximum likelihood of the
winners on races the scores were not trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from racequant.calibration.lifecycle import method_order_error

logger = logging.getLogger(__name__)

_EPS = 1e-15


def race_codes(race_ids: Sequence[object] | np.ndarray) -> tuple[np.ndarray, int]:
    """Integer codes 0..R-1 for the races (in order of first appearance) and the number of races."""
    ids = np.asarray(race_ids)
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    # renumber by first appearance so codes follow the frame's order
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64), len(first)


def race_sizes(codes: np.ndarray, n_races: int) -> np.ndarray:
    """Number of runners of each runner's race."""
    return np.bincount(codes, minlength=n_races)[codes]


def race_softmax(scores: np.ndarray, codes: np.ndarray, n_races: int, temperature: float = 1.0) -> np.ndarray:
    """exp(s_i / T) / sum over the race of exp(s_j / T), computed stably; sums to 1 in every race."""
    s = np.asarray(scores, dtype=float) / float(temperature)
    race_max = np.full(n_races, -np.inf)
    np.maximum.at(race_max, codes, s)
    e = np.exp(s - race_max[codes])
    total = np.bincount(codes, weights=e, minlength=n_races)
    return e / total[codes]


def normalise_in_race(p: np.ndarray, codes: np.ndarray, n_races: int, target: np.ndarray | float = 1.0) -> np.ndarray:
    """Scale probabilities so each race sums to ``target`` (a scalar or one value per runner's race)."""
    p = np.clip(np.asarray(p, dtype=float), _EPS, None)
    total = np.bincount(codes, weights=p, minlength=n_races)
    return p * np.asarray(target, dtype=float) / total[codes]


def winner_log_likelihood(p: np.ndarray, won: np.ndarray, codes: np.ndarray, n_races: int) -> float:
    """Sum over races of log P(winner); a dead heat counts once with the summed probability of its winners."""
    won = np.asarray(won, dtype=float) > 0
    p_win = np.bincount(codes[won], weights=np.asarray(p, dtype=float)[won], minlength=n_races)
    has_winner = np.bincount(codes[won], minlength=n_races) > 0
    return float(np.sum(np.log(np.clip(p_win[has_winner], _EPS, None))))


def fit_temperature(scores: np.ndarray, won: np.ndarray, codes: np.ndarray, n_races: int) -> float:
    """Temperature T maximising the likelihood of the winners under softmax(scores / T)."""

    def nll(log_t: float) -> float:
        return -winner_log_likelihood(race_softmax(scores, codes, n_races, np.exp(log_t)), won, codes, n_races)

    res = minimize_scalar(nll, bounds=(np.log(1e-3), np.log(1e3)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


class RaceSoftmax:
    """Conditional logit over per-runner scores, temperature fitted out of sample (sklearn contract)."""

    def __init__(self, temperature: float | None = None) -> None:
        self.temperature = temperature

    def fit(self, scores: np.ndarray, won: np.ndarray, race_ids: Sequence[object] | np.ndarray) -> RaceSoftmax:
        codes, n_races = race_codes(race_ids)
        if self.temperature is not None:
            if not self.temperature > 0:
                raise ValueError(
                    f"The 'temperature' parameter of RaceSoftmax must be a positive float. Got {self.temperature!r} "
                    "instead."
                )
            self.temperature_ = float(self.temperature)
        else:
            self.temperature_ = fit_temperature(np.asarray(scores, float), np.asarray(won), codes, n_races)
        logger.debug("race softmax temperature %.4f", self.temperature_)
        return self

    def predict_proba(self, scores: np.ndarray, race_ids: Sequence[object] | np.ndarray) -> np.ndarray:
        if not hasattr(self, "temperature_"):
            raise method_order_error("fit", "predict_proba")
        codes, n_races = race_codes(race_ids)
        return race_softmax(np.asarray(scores, float), codes, n_races, self.temperature_)
