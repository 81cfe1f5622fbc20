"""A small reference model with the pipeline's contract: a conditional logit on a few columns.

It exists so that the backtest engine can be tested and demonstrated in seconds, without boosters. It
follows ``racequant.models.pipeline.RacePipeline``'s contract: ``fit(frame, feature_columns)`` on a
time-ordered training frame, cut into fit, validation and calibration slices by the same rule
(``time_slices``), ``training_window_`` with the cut dates, and ``predict(frame)`` returning per runner
win_prob_base, place_prob_base, win_prob, place_prob and their lower and upper bounds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from racequant.calibration.lifecycle import method_order_error
from racequant.models.pipeline import normalise_places, slice_masks, time_slices
from racequant.models.place import harville_place_probabilities, placed_from_positions
from racequant.models.race import RaceSoftmax, race_codes, race_softmax

logger = logging.getLogger(__name__)


def _fit_conditional_logit(X: np.ndarray, won: np.ndarray, codes: np.ndarray, n_races: int, l2: float) -> np.ndarray:
    """Coefficients maximising the winners' softmax likelihood (dead heats: every winner counts)."""
    w = (won > 0).astype(float)

    def objective(beta: np.ndarray) -> tuple[float, np.ndarray]:
        p = race_softmax(X @ beta, codes, n_races)
        nll = -np.sum(w * np.log(np.clip(p, 1e-300, None))) + l2 * beta @ beta
        # gradient: sum over winners of (x_w - E_race[x])
        w_race = np.bincount(codes, weights=w, minlength=n_races)
        expected = np.column_stack(
            [np.bincount(codes, weights=p * X[:, j], minlength=n_races) for j in range(X.shape[1])]
        )
        grad = -(w @ X - w_race @ expected) + 2 * l2 * beta
        return float(nll), grad

    res = minimize(objective, np.zeros(X.shape[1]), jac=True, method="L-BFGS-B")
    return np.asarray(res.x, dtype=float)


class ConditionalLogitPipeline:
    """Conditional logit -> race softmax temperature -> Harville place -> simple bands (sklearn contract)."""

    def __init__(
        self,
        l2: float = 1e-3,
        validation_fraction: float = 0.15,
        calibration_fraction: float = 0.15,
        interval_confidence: float = 0.9,
        validation_max_days: int | None = None,
        calibration_max_days: int | None = None,
        race_col: str = "race_id",
        date_col: str = "date",
        position_col: str = "finish_position",
    ) -> None:
        self.l2 = l2
        self.validation_fraction = validation_fraction
        self.validation_max_days = validation_max_days
        self.calibration_max_days = calibration_max_days
        self.calibration_fraction = calibration_fraction
        self.interval_confidence = interval_confidence
        self.race_col = race_col
        self.date_col = date_col
        self.position_col = position_col

    def get_params(self, deep: bool = True) -> dict[str, object]:
        return {
            "l2": self.l2,
            "validation_fraction": self.validation_fraction,
            "calibration_fraction": self.calibration_fraction,
            "interval_confidence": self.interval_confidence,
            "validation_max_days": self.validation_max_days,
            "calibration_max_days": self.calibration_max_days,
            "race_col": self.race_col,
            "date_col": self.date_col,
            "position_col": self.position_col,
        }

    def set_params(self, **params: object) -> ConditionalLogitPipeline:
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def _matrix(self, frame: pd.DataFrame) -> np.ndarray:
        X = frame[self.feature_columns_].to_numpy(dtype=float)
        X = np.where(np.isfinite(X), X, self.fill_[None, :])
        return (X - self.mean_) / self.scale_

    def fit(self, frame: pd.DataFrame, feature_columns: Sequence[str]) -> ConditionalLogitPipeline:
        frame = frame.sort_values([self.date_col, self.race_col], kind="stable").reset_index(drop=True)
        dates = pd.to_datetime(frame[self.date_col])
        train_end, val_end = time_slices(
            dates,
            frame[self.race_col],
            self.validation_fraction,
            self.calibration_fraction,
            self.validation_max_days,
            self.calibration_max_days,
        )
        tr, va, ca = slice_masks(dates, train_end, val_end)
        self.feature_columns_ = [str(c) for c in feature_columns]
        self.training_window_ = {
            "start": str(dates.min().date()),
            "train_end": str(train_end.date()),
            "validation_end": str(val_end.date()),
            "end": str(dates.max().date()),
        }
        raw = frame[self.feature_columns_].to_numpy(dtype=float)
        self.fill_ = np.nan_to_num(np.nanmean(raw[tr.to_numpy()], axis=0))
        raw = np.where(np.isfinite(raw), raw, self.fill_[None, :])
        self.mean_ = raw[tr.to_numpy()].mean(axis=0)
        self.scale_ = raw[tr.to_numpy()].std(axis=0) + 1e-9
        X = (raw - self.mean_) / self.scale_
        race = frame[self.race_col].to_numpy()
        pos = frame[self.position_col].to_numpy(dtype=float)
        won = (pos == 1).astype(float)
        m = tr.to_numpy()
        codes, n_races = race_codes(race[m])
        self.coef_ = _fit_conditional_logit(X[m], won[m], codes, n_races, self.l2)
        m = va.to_numpy()
        self.softmax_ = RaceSoftmax().fit(X[m] @ self.coef_, won[m], race[m])
        # interval half-width on the log scale: the confidence quantile of |log(observed / predicted)|
        # over equal-count bins of the calibration races
        m = ca.to_numpy()
        p = self.softmax_.predict_proba(X[m] @ self.coef_, race[m])
        order = np.argsort(p)
        bins = np.array_split(order, 10)
        ratios = [abs(np.log(max(won[m][b].mean(), 1e-3) / p[b].mean())) for b in bins if len(b)]
        self.log_halfwidth_ = float(np.quantile(ratios, self.interval_confidence))
        placed = placed_from_positions(pos[m], race[m])
        self.calibration_place_rate_ = float(placed.mean())
        return self

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        if not hasattr(self, "coef_"):
            raise method_order_error("fit", "predict")
        race = frame[self.race_col].to_numpy()
        p_win = self.softmax_.predict_proba(self._matrix(frame) @ self.coef_, race)
        p_place = normalise_places(harville_place_probabilities(p_win, race), race)
        out = pd.DataFrame({self.race_col: race}, index=frame.index)
        if "horse_id" in frame.columns:
            out["horse_id"] = frame["horse_id"].to_numpy()
        out["win_prob_base"] = p_win
        out["place_prob_base"] = p_place
        out["win_prob"] = p_win
        out["place_prob"] = p_place
        k = np.exp(self.log_halfwidth_)
        for name, p in (("win", p_win), ("place", p_place)):
            out[f"{name}_prob_lower"] = np.clip(p / k, 0.0, 1.0)
            out[f"{name}_prob_upper"] = np.clip(p * k, 0.0, 1.0)
        return out
