"""The walk-forward splitter owns time: exact fold boundaries, whole race days, the pipeline's slice rule."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd
import pytest

from racequant.backtest import Fold, WalkForwardSplit
from racequant.errors import ConfigurationError
from racequant.models.pipeline import time_slices

# a race day every 3 days from 2000-01-01, 8 races a day
RACE_DATES = [d for d in pd.date_range("2000-01-01", "2001-12-31", freq="3D") for _ in range(8)]


def D(s: str) -> dt.date:
    return dt.date.fromisoformat(s)


def test_rolling_fold_boundaries_are_pinned() -> None:
    folds = WalkForwardSplit("2000-07-01", "2000-09-15", train_window_days=150).split(RACE_DATES)
    assert [f.index for f in folds] == [0, 1, 2]
    assert folds[0] == Fold(
        index=0,
        train_start=D("2000-02-03"),  # first race day on or after 2000-07-01 - 150 days
        train_end=D("2000-06-29"),  # last race day before 2000-07-01
        fit_end=D("2000-05-15"),  # 35 of 50 race days (70% of races)
        validation_start=D("2000-05-18"),
        validation_end=D("2000-06-08"),  # 43 of 50 (85%)
        calibration_start=D("2000-06-11"),
        calibration_end=D("2000-06-29"),
        test_start=D("2000-07-02"),
        test_end=D("2000-07-29"),  # last race day before 2000-07-31
        n_train_days=50,
        n_test_days=10,
    )
    assert (folds[1].train_start, folds[1].test_start, folds[1].test_end) == (
        D("2000-03-04"),
        D("2000-08-01"),
        D("2000-08-28"),
    )
    # the last window stops at --end
    assert (folds[2].test_start, folds[2].test_end, folds[2].n_test_days) == (D("2000-08-31"), D("2000-09-15"), 6)


def test_expanding_folds_train_on_all_earlier_history() -> None:
    folds = WalkForwardSplit("2000-07-01", "2000-08-30", expanding=True).split(RACE_DATES)
    assert all(f.train_start == D("2000-01-01") for f in folds)
    assert folds[0].train_end == D("2000-06-29") and folds[0].n_train_days == 61
    assert folds[1].n_train_days == 71


def test_the_slices_are_those_the_models_pipeline_cuts() -> None:
    frame = pd.DataFrame({"date": RACE_DATES, "race_id": range(len(RACE_DATES))})
    # uneven days: some race days hold more races
    frame = pd.concat([frame, frame[frame["date"].dt.day % 5 == 0].assign(race_id=lambda f: f["race_id"] + 10**6)])
    for fold in WalkForwardSplit("2000-07-01", "2001-06-30", train_window_days=200).split(frame):
        train = frame[fold.train_mask(frame["date"])]
        fit_end, val_end = time_slices(train["date"], train["race_id"], 0.15, 0.15)
        assert (fit_end.date(), val_end.date()) == (fold.fit_end, fold.validation_end)


def test_capped_slices_keep_a_fixed_length_just_before_the_test_window() -> None:
    # 122 race days before 2001-01-01: shares alone would give each slice 15% (~18 days, 51 calendar days)
    fold = WalkForwardSplit(
        "2001-01-01", "2001-01-31", expanding=True, validation_max_days=30, calibration_max_days=30
    ).split(RACE_DATES)[0]
    assert (fold.train_start, fold.train_end) == (D("2000-01-01"), D("2000-12-29"))
    # calibration: race days after 2000-12-29 - 30 days = 2000-11-29
    assert (fold.calibration_start, fold.calibration_end) == (D("2000-12-02"), D("2000-12-29"))
    # validation: race days in the 30 days before the calibration slice, from 2000-11-02
    assert (fold.validation_start, fold.validation_end) == (D("2000-11-02"), D("2000-11-29"))
    assert fold.fit_end == D("2000-10-30")  # the boosters get the rest


def test_long_expanding_windows_keep_one_year_slices_by_default() -> None:
    dates = [d for d in pd.date_range("1997-01-01", "2005-12-31", freq="4D") for _ in range(9)]
    folds = WalkForwardSplit("2001-01-01", "2005-12-31", expanding=True, retrain_every_days=180).split(dates)
    for f in folds:
        assert (f.train_end - f.calibration_start).days < 365
        assert (f.calibration_start - f.validation_start).days <= 365
        assert (f.validation_start - f.fit_end).days == 4  # adjacent race days
    last = folds[-1]
    assert (last.train_end - last.fit_end).days > 700 and (last.train_end - last.fit_end).days < 735
    # uncapped: a share of the whole history, years long
    uncapped = WalkForwardSplit(
        "2001-01-01",
        "2005-12-31",
        expanding=True,
        retrain_every_days=180,
        validation_max_days=None,
        calibration_max_days=None,
    ).split(dates)[-1]
    assert (uncapped.train_end - uncapped.fit_end).days > 2 * 365 + 200


def test_capped_slices_are_those_the_models_pipeline_cuts() -> None:
    frame = pd.DataFrame({"date": RACE_DATES, "race_id": range(len(RACE_DATES))})
    frame = pd.concat([frame, frame[frame["date"].dt.day % 5 == 0].assign(race_id=lambda f: f["race_id"] + 10**6)])
    folds = WalkForwardSplit(
        "2000-07-01", "2001-06-30", expanding=True, validation_max_days=40, calibration_max_days=25
    ).split(frame)
    assert len(folds) == 13
    for fold in folds:
        train = frame[fold.train_mask(frame["date"])]
        fit_end, val_end = time_slices(train["date"], train["race_id"], 0.15, 0.15, 40, 25)
        assert (fit_end.date(), val_end.date()) == (fold.fit_end, fold.validation_end)


def test_every_test_race_day_is_in_exactly_one_fold_and_after_its_training() -> None:
    folds = WalkForwardSplit("2000-07-01", "2001-06-30", test_window_days=30, retrain_every_days=14).split(RACE_DATES)
    days = sorted({d.date() for d in RACE_DATES if D("2000-07-01") <= d.date() <= D("2001-06-30")})
    owners = [[f.index for f in folds if f.test_start <= d <= f.test_end] for d in days]
    assert all(len(o) == 1 for o in owners)
    for f in folds:
        assert f.train_start <= f.fit_end < f.validation_start <= f.validation_end < f.calibration_start
        assert f.calibration_end == f.train_end < f.test_start <= f.test_end


def test_a_shorter_retrain_interval_cuts_test_windows_so_the_freshest_model_predicts() -> None:
    folds = WalkForwardSplit("2000-07-01", "2000-08-10", retrain_every_days=14).split(RACE_DATES)
    assert [(f.test_start, f.test_end) for f in folds] == [
        (D("2000-07-02"), D("2000-07-14")),
        (D("2000-07-17"), D("2000-07-26")),
        (D("2000-07-29"), D("2000-08-10")),
    ]


def test_deleting_later_race_days_changes_no_earlier_fold() -> None:
    splitter = WalkForwardSplit("2000-07-01", "2001-06-30", train_window_days=150)
    full = splitter.split(RACE_DATES)
    cut = D("2001-01-15")
    short = splitter.split([d for d in RACE_DATES if d.date() <= cut])
    earlier = [f for f in full if f.test_end <= cut]
    assert short[: len(earlier)] == earlier


def test_folds_are_frozen() -> None:
    fold = WalkForwardSplit("2000-07-01", "2000-07-31").split(RACE_DATES)[0]
    with pytest.raises(AttributeError):
        fold.test_end = D("2000-12-31")  # type: ignore[misc]


def test_a_fold_without_enough_history_is_skipped() -> None:
    folds = WalkForwardSplit("2000-01-10", "2000-03-31", min_train_days=20).split(RACE_DATES)
    assert folds[0].test_start >= D("2000-03-01") and folds[0].n_train_days >= 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"test_window_days": -3},
            "The 'test_window_days' parameter of WalkForwardSplit must be a positive int. Got -3 instead.",
        ),
        (
            {"train_window_days": 36.5},
            "The 'train_window_days' parameter of WalkForwardSplit must be a positive int. Got 36.5 instead.",
        ),
        (
            {"validation_fraction": 0.6},
            "The 'validation_fraction' parameter of WalkForwardSplit must be a float in (0, 0.5). Got 0.6 instead.",
        ),
        (
            {"calibration_max_days": 0},
            "The 'calibration_max_days' parameter of WalkForwardSplit must be a positive int or None. Got 0 instead.",
        ),
        ({"expanding": "yes"}, "The 'expanding' parameter of WalkForwardSplit must be a bool. Got 'yes' instead."),
        ({"end": "1999-01-01"}, "The 'end' parameter of WalkForwardSplit must not be before 'start' (2000-07-01)."),
    ],
)
def test_invalid_parameters_are_refused_with_exact_messages(kwargs: dict, message: str) -> None:
    params = {"start": "2000-07-01", "end": "2000-12-31", **kwargs}
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        WalkForwardSplit(**params).split(RACE_DATES)


def test_masks_select_whole_days() -> None:
    fold = WalkForwardSplit("2000-07-01", "2000-07-31").split(RACE_DATES)[0]
    dates = pd.Series(pd.to_datetime(RACE_DATES))
    test = dates[fold.test_mask(dates)]
    assert test.dt.date.min() == fold.test_start and test.dt.date.max() == fold.test_end
    assert np.all(test.value_counts() == 8)


def test_train_rows_counts_what_train_mask_selects() -> None:
    dates = pd.Series(pd.to_datetime(RACE_DATES)).sort_values(ignore_index=True)
    days = dates.to_numpy(dtype="datetime64[D]")
    for fold in WalkForwardSplit("2000-07-01", "2000-12-31", expanding=True).split(RACE_DATES):
        assert fold.train_rows(days) == int(fold.train_mask(dates).sum()) > 0
