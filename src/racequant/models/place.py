"""Place probabilities from win probabilities: the discounted Harville model.

Hong Kong pays a place to the first 3 with 7 or more runners and to the first 2 with 4-6; with 3 or
fewer only the winner counts here (there is no place pool), so place probabilities in a race sum to
``n_places(n)``. Harville with discount exponents (GLOSSARY.md): P(j second | i first) =
p_j^g / sum_{k != i} p_k^g and P(k third | i, j) = p_k^d / sum_{m != i, j} p_m^d. The exact
enumeration over ordered top-3 is done in numpy, one block of races of the same size at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from racequant.calibration.lifecycle import method_order_error
from racequant.models.race import race_codes

logger = logging.getLogger(__name__)

_EPS = 1e-300
_MAX_CELLS = 4_000_000  # races * n^3 floats per block


def n_places(field_size: np.ndarray | int) -> np.ndarray:
    """Places paid for a field of n runners: 3 with 7+, 2 with 4-6, 1 (the winner) otherwise."""
    n = np.asarray(field_size)
    return np.where(n >= 7, 3, np.where(n >= 4, 2, 1))


def placed_from_positions(finish_position: np.ndarray, race_ids: Sequence[object] | np.ndarray) -> np.ndarray:
    """1 for a runner finishing within the places of its race (dead heats for the last place both count)."""
    codes, n_races = race_codes(race_ids)
    size = np.bincount(codes, minlength=n_races)[codes]
    pos = np.asarray(finish_position, dtype=float)
    return (np.nan_to_num(pos, nan=np.inf) <= n_places(size)).astype(np.int8)


def _blocks(codes: np.ndarray, n_races: int) -> list[np.ndarray]:
    """Index matrices (races x n) of the runners, one per field size n, each row one race."""
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_races)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out = []
    for n in np.unique(sizes):
        if n == 0:
            continue
        races = np.flatnonzero(sizes == n)
        out.append(order[starts[races][:, None] + np.arange(n)[None, :]])
    return out


def harville_place_probabilities(
    p_win: np.ndarray, race_ids: Sequence[object] | np.ndarray, g: float = 1.0, d: float = 1.0
) -> np.ndarray:
    """P(runner finishes within the places) under discounted Harville; sums to n_places in every race."""
    p_all = np.clip(np.asarray(p_win, dtype=float), 1e-12, None)
    codes, n_races = race_codes(race_ids)
    out = np.empty_like(p_all)
    for idx in _blocks(codes, n_races):
        n = idx.shape[1]
        places = int(n_places(n))
        step = max(1, _MAX_CELLS // max(n**3, 1))
        for lo in range(0, idx.shape[0], step):
            block = idx[lo : lo + step]
            p = p_all[block]
            p = p / p.sum(axis=1, keepdims=True)
            result = p.copy()
            if places >= 2:
                a = p**g
                a_tot = a.sum(axis=1, keepdims=True)
                # P(i first, j second), zero on the diagonal
                p12 = p[:, :, None] * a[:, None, :] / np.clip(a_tot - a, _EPS, None)[:, :, None]
                eye = np.eye(n, dtype=bool)
                p12[:, eye] = 0.0
                result = result + p12.sum(axis=1)
                if places >= 3:
                    b = p**d
                    rest = b.sum(axis=1)[:, None, None] - b[:, :, None] - b[:, None, :]
                    third = np.einsum("rij,rk->rk", p12 / np.clip(rest, _EPS, None), b)
                    # remove k == i and k == j terms: sum_j p12[i,j]/rest[i,j]*b_i and sum_i p12[i,j]/rest[i,j]*b_j
                    w = p12 / np.clip(rest, _EPS, None)
                    third -= w.sum(axis=2) * b + w.sum(axis=1) * b
                    result = result + third
            out[block] = result
    return out


def _ordered_top3(finish_position: np.ndarray, codes: np.ndarray, n_races: int) -> np.ndarray:
    """(races x 3) runner indices of the unique 1st, 2nd and 3rd, -1 where absent or tied."""
    pos = np.nan_to_num(np.asarray(finish_position, dtype=float), nan=-1).astype(np.int64)
    top = np.full((n_races, 3), -1, dtype=np.int64)
    count = np.zeros((n_races, 3), dtype=np.int64)
    for k in (1, 2, 3):
        m = np.flatnonzero(pos == k)
        top[codes[m], k - 1] = m
        np.add.at(count[:, k - 1], codes[m], 1)
    top[count != 1] = -1
    return top


class DiscountedHarville:
    """Place probabilities from win probabilities; exponents g, d fitted by maximum likelihood (sklearn contract).

    Fit on races the win probabilities were not trained on: g from the observed 2nd given the 1st, d from the
    observed 3rd given the first two.
    """

    def __init__(self, g: float | None = None, d: float | None = None) -> None:
        self.g = g
        self.d = d

    def fit(
        self, p_win: np.ndarray, finish_position: np.ndarray, race_ids: Sequence[object] | np.ndarray
    ) -> DiscountedHarville:
        p = np.clip(np.asarray(p_win, dtype=float), 1e-12, None)
        codes, n_races = race_codes(race_ids)
        top = _ordered_top3(finish_position, codes, n_races)
        sizes = np.bincount(codes, minlength=n_races)

        def nll_second(exponent: float) -> float:
            ok = (top[:, 0] >= 0) & (top[:, 1] >= 0) & (sizes >= 2)
            a = p**exponent
            a_tot = np.bincount(codes, weights=a, minlength=n_races)
            first, second = top[ok, 0], top[ok, 1]
            return -float(np.sum(np.log(a[second]) - np.log(a_tot[ok] - a[first])))

        def nll_third(exponent: float) -> float:
            ok = (top >= 0).all(axis=1) & (sizes >= 3)
            b = p**exponent
            b_tot = np.bincount(codes, weights=b, minlength=n_races)
            i, j, k = top[ok, 0], top[ok, 1], top[ok, 2]
            return -float(np.sum(np.log(b[k]) - np.log(b_tot[ok] - b[i] - b[j])))

        opts = {"xatol": 1e-4}
        self.g_ = (
            float(self.g)
            if self.g is not None
            else float(minimize_scalar(nll_second, bounds=(0.05, 2.0), method="bounded", options=opts).x)
        )
        self.d_ = (
            float(self.d)
            if self.d is not None
            else float(minimize_scalar(nll_third, bounds=(0.05, 2.0), method="bounded", options=opts).x)
        )
        logger.info("discounted Harville exponents g=%.3f d=%.3f", self.g_, self.d_)
        return self

    def predict_place(self, p_win: np.ndarray, race_ids: Sequence[object] | np.ndarray) -> np.ndarray:
        if not hasattr(self, "g_"):
            raise method_order_error("fit", "predict_place")
        return harville_place_probabilities(p_win, race_ids, self.g_, self.d_)
