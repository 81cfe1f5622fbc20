"""Isotonic calibration per group, its time order, and intervals covering the true frequency."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from racequant.calibration.intervals import GroupProbabilityIntervals, coverage_by_group, coverage_test
from racequant.calibration.isotonic import POOLED, CalibrationOrderError, GroupIsotonicCalibrator
from racequant.calibration.lifecycle import NotFittedError


def _true_frequency(p: np.ndarray, group: np.ndarray) -> np.ndarray:
    """A known miscalibration per group: ST overrates nobody, HV underrates, small group 'X' overrates."""
    return np.where(group == "HV", np.clip(1.25 * p, 0, 1), np.where(group == "X", p**1.15, p))


def _draw(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = rng.beta(0.8, 8, size=n)
    group = rng.choice(["ST", "HV", "X"], size=n, p=[0.45, 0.45, 0.10])
    y = (rng.random(n) < _true_frequency(p, group)).astype(int)
    return p, group, y


def test_calibrator_learns_each_large_group_and_pools_the_small_one() -> None:
    rng = np.random.default_rng(0)
    p, group, y = _draw(40_000, rng)
    cal = GroupIsotonicCalibrator(min_group_size=6000).fit(p, y, group)
    assert set(cal.group_calibrators_) == {"ST", "HV"}
    assert cal.group_of(np.array(["ST", "X", "unseen"]), 3).tolist() == ["ST", POOLED, POOLED]
    q = np.full(2, 0.1)
    hv, st = cal.transform(q, np.array(["HV", "ST"]))
    assert hv == pytest.approx(0.125, abs=0.015)
    assert st == pytest.approx(0.10, abs=0.015)


def test_calibrator_never_gives_zero_probability() -> None:
    p = np.linspace(0.001, 0.02, 500)
    cal = GroupIsotonicCalibrator(min_group_size=10).fit(p, np.zeros(500))
    assert (cal.transform(p) > 0).all()


def test_calibrator_refuses_races_of_the_training_window() -> None:
    dates = pd.date_range("2003-01-01", periods=4, freq="D")
    with pytest.raises(CalibrationOrderError, match="must come after the boosters' training races"):
        GroupIsotonicCalibrator().fit([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1], dates=dates, not_before="2003-01-02")


def test_calibrator_refuses_races_before_its_own_end() -> None:
    dates = pd.date_range("2003-01-01", periods=4, freq="D")
    cal = GroupIsotonicCalibrator().fit([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1], dates=dates, not_before="2002-12-31")
    with pytest.raises(CalibrationOrderError, match="only be used on races after"):
        cal.transform([0.2], dates=pd.to_datetime(["2003-01-03"]))
    assert cal.transform([0.2], dates=pd.to_datetime(["2003-01-05"])).shape == (1,)


def test_using_a_calibrator_before_fit_is_refused() -> None:
    with pytest.raises(NotFittedError, match=re.escape("Incorrect method order: call fit before calling transform.")):
        GroupIsotonicCalibrator().transform([0.1])
    with pytest.raises(NotFittedError, match=re.escape("call fit before calling predict_interval")):
        GroupProbabilityIntervals().predict_interval([0.1])


def test_invalid_confidence_is_refused_with_the_parameter_named() -> None:
    with pytest.raises(ValueError, match=re.escape("The 'confidence' parameter of GroupProbabilityIntervals")):
        GroupProbabilityIntervals(confidence=1.5).fit([0.1, 0.2], [0, 1])


@pytest.mark.slow
def test_intervals_cover_the_true_frequency_at_least_90_percent_in_every_group() -> None:
    """Coverage on held-out runners is not significantly below 90% in any group (one-sided binomial test),
    repeated over independent calibration sets so the claim does not rest on one lucky draw."""
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        p, group, y = _draw(30_000, rng)
        races = np.arange(len(p)) // 12
        intervals = GroupProbabilityIntervals(confidence=0.9, n_bootstrap=60, min_group_size=6000).fit(
            p, y, group, races
        )
        # held-out: one runner per independent draw of p, so hits are independent given the bands
        p_new, group_new, _ = _draw(3_000, rng)
        lower, upper = intervals.predict_interval(p_new, group_new)
        table = coverage_test(coverage_by_group(lower, upper, _true_frequency(p_new, group_new), group_new))
        for row in table.itertuples():
            assert row.p_value_below_target > 0.01, f"seed {seed}: coverage {row.coverage:.3f} in group {row.group}"
        overall = binomtest(int(table["covered"].sum()), int(table["n"].sum()), 0.9, alternative="less")
        assert overall.pvalue > 0.01


def test_a_handful_of_runners_at_the_bottom_does_not_widen_the_band_above_them() -> None:
    rng = np.random.default_rng(7)
    p = rng.uniform(0.02, 0.3, size=4000)
    y = (rng.random(4000) < p).astype(int)
    # the seven lowest-rated runners lost and the next three won: the isotonic fit's first step is a block of
    # seven runners at 0, whose Wilson bound (0.28) the band's monotone envelope used to carry to every p above
    order = np.argsort(p)
    y[order[:7]], y[order[7:10]] = 0, 1
    races = np.arange(4000) // 12
    lower, upper = (
        GroupProbabilityIntervals(n_bootstrap=40).fit(p, y, None, races).predict_interval(np.array([0.03, 0.05, 0.1]))
    )
    assert (upper < np.array([0.1, 0.12, 0.2])).all(), upper  # the frequency is 0.03 / 0.05 / 0.1
    assert (lower < np.array([0.03, 0.05, 0.1])).all()


def test_small_isotonic_blocks_are_counted_with_their_neighbours() -> None:
    from racequant.calibration.intervals import _pooled_blocks

    assert _pooled_blocks(np.array([7, 136, 65, 438]), 30).tolist() == [0, 0, 1, 2]
    assert _pooled_blocks(np.array([40, 5]), 30).tolist() == [0, 0]  # a short last group joins the one before
    assert _pooled_blocks(np.array([5]), 30).tolist() == [0]
    assert _pooled_blocks(np.array([30, 30, 30]), 30).tolist() == [0, 1, 2]
