"""Log-linear pooling of probabilities and likelihood ratios within a race (a conditional logit).

P_i = exp(sum_k w_k x_ik) / sum_j exp(sum_k w_k x_jk) over the runners of one race, where the columns x_k are
log-probabilities (base model, market) or log likelihood ratios (qualitative factors). The weights are fitted by
maximum likelihood of the winners (Benter's second stage when the columns are the model and the market). A dead
heat counts once, with log of the summed probability of its winners. An intercept would cancel in the race
softmax, so none is fitted.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from sklearn.base import BaseEstimator

from racequant.calibration.lifecycle import method_order_error
from racequant.fusion.errors import FusionParameterError
from racequant.models.race import race_codes

logger = logging.getLogger(__name__)

_EPS = 1e-300


@dataclass(frozen=True)
class _Races:
    """Runners sorted by race: the permutation, race starts (for reduceat) and each sorted runner's race."""

    order: np.ndarray
    starts: np.ndarray
    segment: np.ndarray
    n_races: int


def _races(race_ids: Sequence[object] | np.ndarray) -> _Races:
    codes, n_races = race_codes(race_ids)
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_races)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return _Races(order=order, starts=starts, segment=codes[order], n_races=n_races)


def _check_inputs(log_inputs: np.ndarray, race_ids: Sequence[object] | np.ndarray) -> np.ndarray:
    x = np.asarray(log_inputs, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"log_inputs must be a 2-d array (n_runners, k). Got {x.ndim} dimensions instead.")
    if len(np.asarray(race_ids)) != x.shape[0]:
        raise ValueError(f"race_ids has {len(np.asarray(race_ids))} rows but log_inputs has {x.shape[0]}.")
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.isfinite(x)))
        raise ValueError(f"log_inputs holds {bad} non-finite value(s); clip probabilities above 0 before the log.")
    return x


def _log_softmax_sorted(scores: np.ndarray, races: _Races) -> tuple[np.ndarray, np.ndarray]:
    """Per sorted runner: log P and P within its race (scores in sorted order)."""
    race_max = np.maximum.reduceat(scores, races.starts)
    shifted = scores - race_max[races.segment]
    e = np.exp(shifted)
    log_z = np.log(np.add.reduceat(e, races.starts))
    log_p = shifted - log_z[races.segment]
    return log_p, np.exp(log_p)


class LogLinearPool(BaseEstimator):
    """Conditional-logit pooling of log-probabilities and log-LRs, weights by maximum likelihood (sklearn contract).

    ``fit(log_inputs, race_ids, won)`` learns ``coef_`` (one weight per column), ``coef_se_`` (standard errors
    from the observed information), ``n_races_`` (races with a winner used) and ``log_likelihood_`` (winner
    log-likelihood at the optimum, without the penalty). ``l2`` adds 0.5 * l2 * ||w||^2 to the negative
    log-likelihood summed over races.
    """

    def __init__(self, l2: float = 0.0, fit_intercept: bool = False) -> None:
        self.l2 = l2
        self.fit_intercept = fit_intercept

    def _validate_params(self) -> None:
        if (
            isinstance(self.l2, bool)
            or not isinstance(self.l2, numbers.Real)
            or not np.isfinite(self.l2)
            or self.l2 < 0
        ):
            raise FusionParameterError(
                f"The 'l2' parameter of LogLinearPool must be a non-negative float. Got {self.l2!r} instead."
            )
        if not isinstance(self.fit_intercept, bool | np.bool_):
            raise FusionParameterError(
                f"The 'fit_intercept' parameter of LogLinearPool must be a bool. Got {self.fit_intercept!r} instead."
            )

    def fit(self, log_inputs: np.ndarray, race_ids: Sequence[object] | np.ndarray, won: np.ndarray) -> LogLinearPool:
        self._validate_params()
        x_all = _check_inputs(log_inputs, race_ids)
        won_all = np.asarray(won, dtype=float).ravel() > 0
        if won_all.shape[0] != x_all.shape[0]:
            raise ValueError(f"won has {won_all.shape[0]} rows but log_inputs has {x_all.shape[0]}.")
        if self.fit_intercept:
            logger.warning("fit_intercept=True has no effect: a constant cancels in the race softmax")

        # keep only races with at least one winner: a race without a result carries no likelihood
        codes, n_races = race_codes(race_ids)
        has_winner = np.bincount(codes[won_all], minlength=n_races) > 0
        keep = has_winner[codes]
        if not keep.any():
            raise ValueError("No race with a winner: LogLinearPool cannot be fitted.")
        dropped = int(n_races - has_winner.sum())
        if dropped:
            logger.info("LogLinearPool: %d race(s) without a winner left out of the fit", dropped)

        races = _races(np.asarray(race_ids)[keep])
        x = x_all[keep][races.order]
        w_mask = won_all[keep][races.order]
        k = x.shape[1]
        l2 = float(self.l2)
        # winners only: log sum over the race's winners of exp(score), for dead heats
        win_idx = np.flatnonzero(w_mask)
        win_seg = races.segment[win_idx]
        win_starts = np.concatenate([[0], np.flatnonzero(np.diff(win_seg)) + 1])
        win_group = np.repeat(np.arange(len(win_starts)), np.diff(np.r_[win_starts, len(win_idx)]))
        x_win = x[win_idx]

        def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
            s = x @ w
            log_p, p = _log_softmax_sorted(s, races)
            lp_win = log_p[win_idx]
            m = np.maximum.reduceat(lp_win, win_starts)
            e = np.exp(lp_win - m[win_group])
            sum_e = np.add.reduceat(e, win_starts)
            ll = float(np.sum(m + np.log(sum_e)))
            # gradient: sum over races of E_q[x | winners] - E_p[x]
            q = e / sum_e[win_group]
            grad_ll = (q[:, None] * x_win).sum(axis=0) - (p[:, None] * x).sum(axis=0)
            return -ll + 0.5 * l2 * float(w @ w), -grad_ll + l2 * w

        res = minimize(objective, np.zeros(k), jac=True, method="L-BFGS-B", options={"gtol": 1e-9, "maxiter": 1000})
        if not res.success:
            logger.warning("LogLinearPool optimiser stopped: %s", res.message)
        w = np.asarray(res.x, dtype=float)
        self.coef_ = w
        self.intercept_ = 0.0
        self.n_features_in_ = k
        self.n_races_ = int(has_winner.sum())
        self.n_iter_ = int(res.nit)
        self.log_likelihood_ = -float(res.fun) + 0.5 * l2 * float(w @ w)
        self.coef_se_ = self._standard_errors(x, races, w, l2)
        logger.info(
            "LogLinearPool fitted on %d races: coef=%s log-likelihood=%.3f",
            self.n_races_,
            np.array2string(w, precision=4),
            self.log_likelihood_,
        )
        return self

    @staticmethod
    def _standard_errors(x: np.ndarray, races: _Races, w: np.ndarray, l2: float) -> np.ndarray:
        """Square roots of the diagonal of the inverse observed information (single-winner approximation)."""
        _, p = _log_softmax_sorted(x @ w, races)
        mean_x = np.add.reduceat(p[:, None] * x, races.starts, axis=0)
        centred = x - mean_x[races.segment]
        info = (p[:, None] * centred).T @ centred + l2 * np.eye(x.shape[1])
        try:
            cov = np.linalg.inv(info)
        except np.linalg.LinAlgError:
            return np.full(x.shape[1], np.nan)
        return np.sqrt(np.clip(np.diag(cov), 0.0, None))

    def predict_proba(self, log_inputs: np.ndarray, race_ids: Sequence[object] | np.ndarray) -> np.ndarray:
        """Pooled win probabilities, in the order of the rows, summing to 1 within each race."""
        if not hasattr(self, "coef_"):
            raise method_order_error("fit", "predict_proba")
        x = _check_inputs(log_inputs, race_ids)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"log_inputs has {x.shape[1]} columns but LogLinearPool was fitted with {self.n_features_in_}."
            )
        races = _races(race_ids)
        _, p_sorted = _log_softmax_sorted(x[races.order] @ self.coef_, races)
        p = np.empty_like(p_sorted)
        p[races.order] = p_sorted
        return p

    def score(self, log_inputs: np.ndarray, race_ids: Sequence[object] | np.ndarray, won: np.ndarray) -> float:
        """Mean winner log-likelihood per race with a winner (higher is better)."""
        p = self.predict_proba(log_inputs, race_ids)
        codes, n_races = race_codes(race_ids)
        is_winner = np.asarray(won, dtype=float) > 0
        p_win = np.bincount(codes[is_winner], weights=p[is_winner], minlength=n_races)
        has = np.bincount(codes[is_winner], minlength=n_races) > 0
        return float(np.mean(np.log(np.clip(p_win[has], _EPS, None))))


def _safe_log(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(p, dtype=float), 1e-15, None))


def benter_second_stage(
    p_model: np.ndarray,
    p_market: np.ndarray,
    race_ids: Sequence[object] | np.ndarray,
    won: np.ndarray,
    l2: float = 0.0,
) -> LogLinearPool:
    """Benter's second stage: c_i proportional to p_model^a * p_market^b; ``coef_`` is (a, b).

    Fit it on races the model did not train on.
    """
    logs = np.column_stack([_safe_log(p_model), _safe_log(p_market)])
    return LogLinearPool(l2=l2).fit(logs, race_ids, won)
