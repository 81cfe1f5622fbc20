"""Isotonic calibration per calibration group (track by default), with a pooled fallback.

A calibrator learns the map from a model's probability to the observed frequency. It must be fitted on
races after the boosters' training slice and used only on races after its own: pass the dates and it
refuses anything out of that order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression

from racequant.calibration.lifecycle import NotFittedError, method_order_error

logger = logging.getLogger(__name__)

POOLED = "__pooled__"


class CalibrationOrderError(NotFittedError):
    """A calibrator was fitted on, or applied to, races in the wrong time order."""


def _as_groups(groups: Sequence[object] | np.ndarray | None, n: int) -> np.ndarray:
    if groups is None:
        return np.full(n, POOLED, dtype=object)
    if isinstance(groups, np.ndarray) and groups.dtype == object and all(type(g) is str for g in groups):
        return groups.copy()  # already text (a race card's track): the same values without a pandas round trip
    return pd.Series(groups).astype("string").fillna("__missing__").to_numpy(dtype=object)


def _datetimes(dates: Sequence[object] | np.ndarray) -> np.ndarray | None:
    """``dates`` without NaT when they are already numpy datetimes, else None (pandas parses them)."""
    if isinstance(dates, np.ndarray) and dates.dtype.kind == "M":
        valid = dates[~np.isnat(dates)]
        return valid if len(valid) else None
    return None


def _latest(dates: Sequence[object] | np.ndarray) -> pd.Timestamp:
    valid = _datetimes(dates)
    if valid is not None:
        return pd.Timestamp(valid.max())
    return pd.Timestamp(pd.to_datetime(pd.Series(dates)).max())


def _earliest(dates: Sequence[object] | np.ndarray) -> pd.Timestamp:
    valid = _datetimes(dates)
    if valid is not None:
        return pd.Timestamp(valid.min())
    return pd.Timestamp(pd.to_datetime(pd.Series(dates)).min())


class ShrunkIsotonic:
    """Isotonic regression whose blocks are shrunk towards their mean input probability.

    Each block of runners sharing one fitted value gets (wins + m * mean p) / (runners + m), so a block
    without a winner keeps a small positive probability instead of 0 (a zero would be an infinite log loss);
    the map interpolates linearly between the blocks' mean inputs (centred isotonic regression).
    """

    def __init__(self, prior_strength: float = 200.0) -> None:
        self.prior_strength = prior_strength

    def fit(self, p: np.ndarray, y: np.ndarray) -> ShrunkIsotonic:
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        fitted = iso.predict(p)
        _, block = np.unique(fitted, return_inverse=True)
        n = np.bincount(block)
        k = np.bincount(block, weights=y)
        mean_p = np.bincount(block, weights=p) / n
        shrunk = (k + self.prior_strength * mean_p) / (n + self.prior_strength)
        # centred isotonic: interpolate linearly between the blocks' mean inputs instead of steps
        self.x_ = mean_p
        self.y_ = np.maximum.accumulate(shrunk)
        return self

    def predict(self, p: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(p, dtype=float), self.x_, self.y_)


class GroupIsotonicCalibrator:
    """Isotonic map per group; groups with fewer than ``min_group_size`` runners use the pooled map.

    ``fit(p, y, groups, dates=None, not_before=None)``: with ``not_before`` (the last race date the model was
    trained on) every calibration race must come after it. ``transform(p, groups, dates=None)`` refuses races
    on or before the last calibration race.
    """

    def __init__(self, min_group_size: int = 2000, prior_strength: float = 200.0) -> None:
        self.min_group_size = min_group_size
        self.prior_strength = prior_strength

    def fit(
        self,
        p: Sequence[float] | np.ndarray,
        y: Sequence[float] | np.ndarray,
        groups: Sequence[object] | np.ndarray | None = None,
        dates: Sequence[object] | np.ndarray | None = None,
        not_before: object | None = None,
    ) -> GroupIsotonicCalibrator:
        if not isinstance(self.min_group_size, int | np.integer) or self.min_group_size < 1:
            raise ValueError(
                "The 'min_group_size' parameter of GroupIsotonicCalibrator must be a positive int. "
                f"Got {self.min_group_size!r} instead."
            )
        p = np.asarray(p, dtype=float)
        y = (np.asarray(y, dtype=float) > 0).astype(float)
        g = _as_groups(groups, len(p))
        if dates is not None and not_before is not None and _earliest(dates) <= pd.Timestamp(not_before):
            raise CalibrationOrderError(
                "Calibration races must come after the boosters' training races: the last training race is on "
                f"{pd.Timestamp(not_before).date()} but a calibration race is on {_earliest(dates).date()}."
            )
        self.calibrated_until_ = _latest(dates) if dates is not None else None
        self.pooled_ = ShrunkIsotonic(self.prior_strength).fit(p, y)
        self.group_calibrators_: dict[str, ShrunkIsotonic] = {}
        self.group_sizes_: dict[str, int] = {}
        for name in pd.unique(g):
            m = g == name
            self.group_sizes_[str(name)] = int(m.sum())
            if m.sum() >= self.min_group_size:
                self.group_calibrators_[str(name)] = ShrunkIsotonic(self.prior_strength).fit(p[m], y[m])
        fallback = sorted(set(self.group_sizes_) - set(self.group_calibrators_))
        if fallback:
            logger.info(
                "calibration groups with fewer than %d runners use the pooled map: %s", self.min_group_size, fallback
            )
        return self

    def group_of(self, groups: Sequence[object] | np.ndarray | None, n: int) -> np.ndarray:
        """The calibration group actually used per runner (its own, or the pooled one)."""
        if not hasattr(self, "pooled_"):
            raise method_order_error("fit", "group_of")
        g = _as_groups(groups, n)
        return np.where(np.isin(g, list(self.group_calibrators_)), g, POOLED)

    def check_after_calibration(self, dates: Sequence[object] | np.ndarray | None) -> None:
        """Refuse races on or before the last calibration race."""
        if dates is not None and self.calibrated_until_ is not None and _earliest(dates) <= self.calibrated_until_:
            raise CalibrationOrderError(
                "A calibrator may only be used on races after the ones it was fitted on: calibrated until "
                f"{self.calibrated_until_.date()} but asked for a race on {_earliest(dates).date()}."
            )

    def transform(
        self,
        p: Sequence[float] | np.ndarray,
        groups: Sequence[object] | np.ndarray | None = None,
        dates: Sequence[object] | np.ndarray | None = None,
    ) -> np.ndarray:
        if not hasattr(self, "pooled_"):
            raise method_order_error("fit", "transform")
        self.check_after_calibration(dates)
        p = np.asarray(p, dtype=float)
        used = self.group_of(groups, len(p))
        out = self.pooled_.predict(p)
        for name, model in self.group_calibrators_.items():
            m = used == name
            if m.any():
                out[m] = model.predict(p[m])
        return out
