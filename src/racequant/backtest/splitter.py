"""The walk-forward splitter: it owns time, and hands out frozen, named folds with exact dates.

Fold k is retrained at ``t_k = start + k * retrain_every_days`` (calendar days). Its test window holds the
race days in ``[t_k, t_k + test_window_days)``, cut short at ``t_{k+1}`` so that every test race is
predicted once, by the freshest model, and at ``end`` (inclusive). Its training window holds the race
days in ``[t_k - train_window_days, t_k)``, or every race day before ``t_k`` with ``expanding=True``.
Inside the training window the last races are kept apart, by the rule the models pipeline applies
(``racequant.models.pipeline.slice_positions``: shares of races, whole days, each slice capped in calendar
days): a validation slice (early stopping, temperatures, blend weights) and after it a calibration slice
(calibrators, intervals). The caps (365 days each by default) keep both slices just before the test window
in long expanding windows; without them a share of eight years of history would end the boosters' training
years before the races they predict.

Every boundary is an actual race day of the data (first and last day, both inclusive), so a race day,
and therefore a race, is never split, and a fold's dates depend only on race days up to its test end:
deleting later results changes no earlier fold.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from racequant.errors import ConfigurationError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold; every date is a race day and every range includes both ends.

    ``train_start..train_end`` is the whole training window: the boosters are fitted on
    ``train_start..fit_end``, then come ``validation_start..validation_end`` and
    ``calibration_start..calibration_end`` (= ``train_end``); the model predicts ``test_start..test_end``.
    """

    index: int
    train_start: dt.date
    train_end: dt.date
    fit_end: dt.date
    validation_start: dt.date
    validation_end: dt.date
    calibration_start: dt.date
    calibration_end: dt.date
    test_start: dt.date
    test_end: dt.date
    n_train_days: int
    n_test_days: int

    def as_dict(self) -> dict[str, object]:
        return {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in asdict(self).items()}

    def train_mask(self, dates: pd.Series) -> np.ndarray:
        d = pd.to_datetime(dates).dt.date
        return ((d >= self.train_start) & (d <= self.train_end)).to_numpy()

    def train_rows(self, sorted_days: np.ndarray) -> int:
        """How many of ``sorted_days`` (ascending ``datetime64[D]``, one per row) ``train_mask`` selects, by binary
        search: the same window, without converting every row's date."""
        lo = np.searchsorted(sorted_days, np.datetime64(self.train_start, "D"), side="left")
        hi = np.searchsorted(sorted_days, np.datetime64(self.train_end, "D"), side="right")
        return int(hi - lo)

    def test_mask(self, dates: pd.Series) -> np.ndarray:
        d = pd.to_datetime(dates).dt.date
        return ((d >= self.test_start) & (d <= self.test_end)).to_numpy()


def _as_date(value: object, name: str) -> dt.date:
    try:
        return pd.Timestamp(value).date()  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"The '{name}' parameter of WalkForwardSplit must be a date. Got {value!r} instead."
        ) from exc


def _positive_int(name: str, value: object, or_none: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        what = "a positive int or None" if or_none else "a positive int"
        raise ConfigurationError(f"The '{name}' parameter of WalkForwardSplit must be {what}. Got {value!r} instead.")
    return int(value)


def _slice_cuts(
    day_counts: pd.Series,
    validation_fraction: float,
    calibration_fraction: float,
    validation_max_days: int | None,
    calibration_max_days: int | None,
) -> tuple[int, int] | None:
    """Positions (in the window's race days) of the last fit day and the last validation day: the rule of
    ``racequant.models.pipeline.slice_positions``, which the pipeline applies to its training frame."""
    from racequant.models.pipeline import slice_positions

    return slice_positions(
        list(day_counts.index),
        day_counts.to_numpy(),
        validation_fraction,
        calibration_fraction,
        validation_max_days,
        calibration_max_days,
    )


class WalkForwardSplit:
    """Walk-forward folds over race days (see the module docstring); parameters validated in ``split``."""

    def __init__(
        self,
        start: object,
        end: object,
        train_window_days: int = 365,
        test_window_days: int = 30,
        retrain_every_days: int = 30,
        expanding: bool = False,
        validation_fraction: float = 0.15,
        calibration_fraction: float = 0.15,
        min_train_days: int = 30,
        validation_max_days: int | None = 365,
        calibration_max_days: int | None = 365,
    ) -> None:
        self.start = start
        self.end = end
        self.train_window_days = train_window_days
        self.test_window_days = test_window_days
        self.retrain_every_days = retrain_every_days
        self.expanding = expanding
        self.validation_fraction = validation_fraction
        self.calibration_fraction = calibration_fraction
        self.min_train_days = min_train_days
        self.validation_max_days = validation_max_days
        self.calibration_max_days = calibration_max_days

    def get_params(self) -> dict[str, object]:
        return {
            "start": str(_as_date(self.start, "start")),
            "end": str(_as_date(self.end, "end")),
            "train_window_days": self.train_window_days,
            "test_window_days": self.test_window_days,
            "retrain_every_days": self.retrain_every_days,
            "expanding": self.expanding,
            "validation_fraction": self.validation_fraction,
            "calibration_fraction": self.calibration_fraction,
            "min_train_days": self.min_train_days,
            "validation_max_days": self.validation_max_days,
            "calibration_max_days": self.calibration_max_days,
        }

    def _validate(self) -> tuple[dt.date, dt.date]:
        for name in ("train_window_days", "test_window_days", "retrain_every_days", "min_train_days"):
            _positive_int(name, getattr(self, name))
        for name in ("validation_max_days", "calibration_max_days"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name), or_none=True)
        for name in ("validation_fraction", "calibration_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 0.5:
                raise ConfigurationError(
                    f"The '{name}' parameter of WalkForwardSplit must be a float in (0, 0.5). Got {value!r} instead."
                )
        if not isinstance(self.expanding, bool):
            raise ConfigurationError(
                f"The 'expanding' parameter of WalkForwardSplit must be a bool. Got {self.expanding!r} instead."
            )
        start, end = _as_date(self.start, "start"), _as_date(self.end, "end")
        if end < start:
            raise ConfigurationError(
                f"The 'end' parameter of WalkForwardSplit must not be before 'start' ({start}). Got {end} instead."
            )
        return start, end

    def split(self, race_days: Iterable[object] | pd.DataFrame) -> list[Fold]:
        """The folds over the given races: a runner or race frame (its ``date`` column, one count per race) or
        an iterable of race dates (one entry per race, repeated for several races on a day)."""
        return list(self.iter_folds(race_days))

    def iter_folds(self, race_days: Iterable[object] | pd.DataFrame) -> Iterator[Fold]:
        start, end = self._validate()
        counts = _day_counts(race_days)
        days = np.array([d for d in counts.index])
        t = start
        index = 0
        while t <= end:
            t_next = t + dt.timedelta(days=self.retrain_every_days)
            test_stop = min(t + dt.timedelta(days=self.test_window_days), t_next, end + dt.timedelta(days=1))
            test_days = days[(days >= t) & (days < test_stop)]
            train_lo = dt.date.min if self.expanding else t - dt.timedelta(days=self.train_window_days)
            train_sel = (days >= train_lo) & (days < t)
            train_days = days[train_sel]
            fold_t = t
            t = t_next
            if len(test_days) == 0:
                logger.debug("no race day in the test window starting %s; no fold", fold_t)
                continue
            if len(train_days) < self.min_train_days:
                logger.info(
                    "fold at %s skipped: %d training race days (< %d)", fold_t, len(train_days), self.min_train_days
                )
                continue
            cuts = _slice_cuts(
                counts[train_sel],
                self.validation_fraction,
                self.calibration_fraction,
                self.validation_max_days,
                self.calibration_max_days,
            )
            if cuts is None:
                logger.info("fold at %s skipped: too few race days for validation and calibration slices", fold_t)
                continue
            fit_end, val_end = cuts
            yield Fold(
                index=index,
                train_start=train_days[0],
                train_end=train_days[-1],
                fit_end=train_days[fit_end],
                validation_start=train_days[fit_end + 1],
                validation_end=train_days[val_end],
                calibration_start=train_days[val_end + 1],
                calibration_end=train_days[-1],
                test_start=test_days[0],
                test_end=test_days[-1],
                n_train_days=len(train_days),
                n_test_days=len(test_days),
            )
            index += 1


def _day_counts(race_days: Iterable[object] | pd.DataFrame) -> pd.Series:
    """Races per race day, sorted by day (index: datetime.date)."""
    if isinstance(race_days, pd.DataFrame):
        races = race_days.drop_duplicates("race_id") if "race_id" in race_days.columns else race_days
        dates = pd.to_datetime(races["date"])
    else:
        dates = pd.to_datetime(pd.Series(list(race_days)))
    counts = dates.dt.date.value_counts().sort_index()
    return counts
