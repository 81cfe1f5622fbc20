"""The benchmark's scores, per GLOSSARY.md."""

from __future__ import annotations

import numpy as np
import pytest

from racequant.calibration import metrics as M


def test_equal_chances_give_pseudo_r2_zero_and_certainty_one() -> None:
    races = np.repeat([0, 1], [4, 5])
    won = np.array([1, 0, 0, 0, 0, 1, 0, 0, 0])
    equal = np.r_[np.full(4, 0.25), np.full(5, 0.2)]
    assert M.pseudo_r2(races, equal, won) == pytest.approx(0.0)
    assert M.pseudo_r2(races, won.astype(float), won) == pytest.approx(1.0)


def test_a_dead_heat_counts_the_race_once_with_the_summed_probability() -> None:
    races = np.zeros(4)
    p = np.array([0.4, 0.3, 0.2, 0.1])
    won = np.array([1, 1, 0, 0])
    assert M.winner_log_loss(races, p, won) == pytest.approx(-np.log(0.7))
    assert M.pseudo_r2(races, p, won) == pytest.approx(1 - np.log(0.7) / np.log(0.25))


def test_ece_uses_ten_equal_width_bins() -> None:
    p = np.array([0.05, 0.05, 0.95, 0.95])
    y = np.array([0, 0, 1, 1])
    assert M.expected_calibration_error(p, y) == pytest.approx(0.05)
    assert M.expected_calibration_error(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.0)


def test_top_pick_strike_rate_is_the_share_of_races_won_by_the_favourite() -> None:
    races = np.repeat([0, 1], 3)
    p = np.array([0.5, 0.3, 0.2, 0.1, 0.6, 0.3])
    won = np.array([1, 0, 0, 1, 0, 0])
    assert M.top_pick_strike_rate(races, p, won) == pytest.approx(0.5)


def test_benchmark_metrics_reports_every_figure() -> None:
    races = np.repeat(np.arange(20), 5)
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=20).ravel()
    won = np.zeros(100)
    won[np.arange(20) * 5] = 1
    placed = np.zeros(100)
    placed[np.arange(20) * 5 + 1] = 1
    out = M.benchmark_metrics(races, p, won, 2 * p, np.maximum(won, placed))
    assert set(out) >= {
        "winner_log_loss",
        "pseudo_r2",
        "runner_auc",
        "brier",
        "ece",
        "top_pick_strike_rate",
        "place_log_loss",
    }
