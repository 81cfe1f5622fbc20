"""Intervals for the true outcome frequency behind a probability, per calibration group (Mondrian).

For a runner given probability p in group g, the interval is meant to contain E[outcome | p, g], the
frequency with which such runners actually win (or place), at least ``confidence`` of the time in every
group. Two methods:

- ``bootstrap`` (default): the (centred) isotonic calibration map of the group refitted on races resampled
  with replacement; the interval is the simultaneous sup-t band of those curves at the given confidence,
  joined with the Wilson interval of the isotonic block the point falls in (a block of fewer than
  ``min_block_size`` runners counted with its neighbours). A pointwise band is not enough:
  its misses are correlated along the curve, so one fitted band can cover far less than 90% of a group.
- ``venn_abers``: the inductive Venn-Abers pair (p0, p1) of the group (package ``venn-abers``), a
  multiprobability prediction; narrower, and without a coverage guarantee for the frequency itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm
from sklearn.isotonic import IsotonicRegression

from racequant.calibration.isotonic import POOLED, ShrunkIsotonic, _as_groups
from racequant.calibration.lifecycle import method_order_error

logger = logging.getLogger(__name__)

METHODS = ("bootstrap", "venn_abers")


def wilson_interval(k: np.ndarray, n: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion k / n."""
    z = norm.ppf(0.5 + confidence / 2)
    n = np.maximum(np.asarray(n, dtype=float), 1.0)
    phat = np.asarray(k, dtype=float) / n
    centre = (phat + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(phat * (1 - phat) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


class _GroupBand:
    """Lower and upper curves of one group on a grid of probabilities."""

    def __init__(self, grid: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
        self.grid, self.lower, self.upper = grid, lower, upper

    def __call__(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.interp(p, self.grid, self.lower), np.interp(p, self.grid, self.upper)


class GroupProbabilityIntervals:
    """Mondrian intervals for the outcome frequency, one band per calibration group (sklearn contract)."""

    def __init__(
        self,
        confidence: float = 0.9,
        method: str = "bootstrap",
        n_bootstrap: int = 100,
        min_group_size: int = 2000,
        min_own_band_size: int = 300,
        grid_size: int = 200,
        min_block_size: int = 30,
        random_state: int = 0,
    ) -> None:
        self.confidence = confidence
        self.method = method
        self.n_bootstrap = n_bootstrap
        self.min_group_size = min_group_size
        self.min_own_band_size = min_own_band_size
        self.grid_size = grid_size
        self.min_block_size = min_block_size
        self.random_state = random_state

    def _validate(self) -> None:
        if not 0 < self.confidence < 1:
            raise ValueError(
                "The 'confidence' parameter of GroupProbabilityIntervals must be a float in (0, 1). "
                f"Got {self.confidence!r} instead."
            )
        if self.method not in METHODS:
            raise ValueError(
                f"The 'method' parameter of GroupProbabilityIntervals must be one of {METHODS}. "
                f"Got {self.method!r} instead."
            )

    def fit(
        self,
        p: Sequence[float] | np.ndarray,
        y: Sequence[float] | np.ndarray,
        groups: Sequence[object] | np.ndarray | None = None,
        race_ids: Sequence[object] | np.ndarray | None = None,
    ) -> GroupProbabilityIntervals:
        """Learn the bands from out-of-sample probabilities p and outcomes y (the calibration races)."""
        self._validate()
        p = np.asarray(p, dtype=float)
        y = (np.asarray(y, dtype=float) > 0).astype(float)
        g = _as_groups(groups, len(p))
        races = np.asarray(race_ids) if race_ids is not None else np.arange(len(p))
        rng = np.random.default_rng(self.random_state)
        pooled = self._fit_one(p, y, races, rng)
        self.bands_: dict[str, object] = {POOLED: pooled}
        for name in pd.unique(g):
            m = g == name
            if name == POOLED or m.sum() < self.min_own_band_size:
                continue
            own = self._fit_one(p[m], y[m], races[m], rng)
            if m.sum() < self.min_group_size and self.method == "bootstrap":
                # a small group is calibrated with the pooled map: its interval spans both bands
                own = _GroupBand(
                    pooled.grid,  # type: ignore[attr-defined]
                    np.minimum(own(pooled.grid)[0], pooled.lower),  # type: ignore[attr-defined,operator]
                    np.maximum(own(pooled.grid)[1], pooled.upper),  # type: ignore[attr-defined,operator]
                )
            self.bands_[str(name)] = own
        return self

    def _fit_one(self, p: np.ndarray, y: np.ndarray, races: np.ndarray, rng: np.random.Generator) -> object:
        if self.method == "venn_abers":
            from venn_abers import VennAbers

            va = VennAbers()
            va.fit(np.c_[1 - p, p], y.astype(int))
            return va
        alpha = 1 - self.confidence
        grid = np.unique(np.concatenate([[0.0, 1.0], np.quantile(p, np.linspace(0, 1, self.grid_size))]))
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        # Wilson interval of the isotonic block (runners sharing one fitted value) at each grid point
        fitted = iso.predict(p)
        block_values, block_of = np.unique(fitted, return_inverse=True)
        # a block of a handful of runners (the isotonic fit's first or last step, often) says little: it is counted
        # with its neighbours, else its wide Wilson interval (7 runners, no winner: up to 0.28) would bound every
        # probability above it through the monotone envelope below
        group_of_block = _pooled_blocks(np.bincount(block_of), self.min_block_size)
        pooled_block = group_of_block[block_of]
        block_n = np.bincount(pooled_block)
        block_k = np.bincount(pooled_block, weights=y)
        w_lo, w_hi = wilson_interval(block_k, block_n, self.confidence)
        grid_block = group_of_block[np.clip(np.searchsorted(block_values, iso.predict(grid)), 0, len(block_values) - 1)]
        lower, upper = w_lo[grid_block], w_hi[grid_block]
        # within a long flat block the true curve still rises: also allow the block's observed/expected
        # ratio applied to the point itself (calibration locally proportional to p)
        block_mean_p = np.bincount(pooled_block, weights=p) / block_n
        ratio_lo = w_lo[grid_block] / np.maximum(block_mean_p[grid_block], 1e-9)
        ratio_hi = w_hi[grid_block] / np.maximum(block_mean_p[grid_block], 1e-9)
        lower = np.minimum(lower, grid * ratio_lo)
        upper = np.maximum(upper, np.minimum(grid * ratio_hi, 1.0))
        # bootstrap over races
        _, race_code = np.unique(races, return_inverse=True)
        order = np.argsort(race_code, kind="stable")
        starts = np.searchsorted(race_code[order], np.arange(race_code.max() + 1))
        sizes = np.bincount(race_code)
        curves = np.empty((self.n_bootstrap, len(grid)))
        for b in range(self.n_bootstrap):
            pick = rng.integers(0, len(sizes), size=len(sizes))
            idx = order[np.repeat(starts[pick], sizes[pick]) + _ranges(sizes[pick])]
            curves[b] = ShrunkIsotonic(prior_strength=1.0).fit(p[idx], y[idx]).predict(grid)
        # simultaneous (sup-t) band: covers the whole curve with the stated confidence, so the share of
        # runners covered in a group stays above it for one fitted band, not only on average over fits
        centre = ShrunkIsotonic(prior_strength=1.0).fit(p, y).predict(grid)
        sd = np.maximum(curves.std(axis=0), 1e-4)
        crit = float(np.quantile(np.max(np.abs(curves - centre) / sd, axis=1), self.confidence))
        lower = np.clip(np.minimum(lower, centre - crit * sd), 0.0, 1.0)
        upper = np.clip(np.maximum(upper, centre + crit * sd), 0.0, 1.0)
        del alpha
        return _GroupBand(grid, np.maximum.accumulate(lower), np.maximum.accumulate(upper))

    def band_of(self, groups: Sequence[object] | np.ndarray | None, n: int) -> np.ndarray:
        """The band used per runner: its own group's, or the pooled one for a small or unseen group."""
        if not hasattr(self, "bands_"):
            raise method_order_error("fit", "band_of")
        g = _as_groups(groups, n)
        return np.where(np.isin(g, list(self.bands_)), g, POOLED)

    def predict_interval(
        self, p: Sequence[float] | np.ndarray, groups: Sequence[object] | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) of the outcome frequency for runners given probability p (uncalibrated, as in fit)."""
        if not hasattr(self, "bands_"):
            raise method_order_error("fit", "predict_interval")
        p = np.asarray(p, dtype=float)
        used = self.band_of(groups, len(p))
        lower, upper = np.empty_like(p), np.empty_like(p)
        for name, band in self.bands_.items():
            m = used == name
            if not m.any():
                continue
            if self.method == "venn_abers":
                _, p0p1 = band.predict_proba(np.c_[1 - p[m], p[m]])  # type: ignore[attr-defined]
                lower[m], upper[m] = p0p1[:, 0], p0p1[:, 1]
            else:
                lower[m], upper[m] = band(p[m])  # type: ignore[operator]
        return np.minimum(lower, upper), np.maximum(lower, upper)


def _pooled_blocks(sizes: np.ndarray, min_size: int) -> np.ndarray:
    """For consecutive blocks of ``sizes`` runners, the group each joins: blocks are taken in order until a group
    holds ``min_size`` runners; a short remainder at the end joins the last full group."""
    group = np.zeros(len(sizes), dtype=np.int64)
    current, filled = 0, 0
    for i, size in enumerate(sizes):
        group[i] = current
        filled += int(size)
        if filled >= min_size and i < len(sizes) - 1:
            current, filled = current + 1, 0
    if filled < min_size and current > 0:  # the last group is short: it joins the one before
        group[group == current] = current - 1
    return group


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """Concatenated 0..len-1 for each length (vectorised)."""
    total = int(lengths.sum())
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total) - offsets


def coverage_by_group(
    lower: np.ndarray, upper: np.ndarray, truth: np.ndarray, groups: Sequence[object] | np.ndarray
) -> pd.DataFrame:
    """Per group: runners, share whose true frequency lies in [lower, upper], and a one-sided binomial
    test p-value of 'coverage is below the target' (filled by ``coverage_test``)."""
    frame = pd.DataFrame({"group": _as_groups(groups, len(truth)), "hit": (truth >= lower) & (truth <= upper)})
    out = frame.groupby("group")["hit"].agg(n="size", covered="sum").reset_index()
    out["coverage"] = out["covered"] / out["n"]
    return out


def coverage_test(table: pd.DataFrame, target: float = 0.9) -> pd.DataFrame:
    """Add to a coverage table the p-value of H0 'coverage >= target' against 'coverage < target'."""
    from scipy.stats import binomtest

    table = table.copy()
    table["p_value_below_target"] = [
        binomtest(int(c), int(n), target, alternative="less").pvalue
        for c, n in zip(table["covered"], table["n"], strict=True)
    ]
    return table
