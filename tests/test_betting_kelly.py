"""Kelly staking: hand-computed cases, the optimum it claims, and the risk controls."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy.optimize import minimize

from racequant.betting.kelly import KellyStaking, race_kelly_fractions, single_kelly_fraction
from racequant.errors import ConfigurationError, RacequantError


def expected_log_growth(f: np.ndarray, p: np.ndarray, odds: np.ndarray) -> float:
    """E log(wealth) after one race: runner i wins with p_i (the rest of the probability: nobody backed wins)."""
    rest = 1.0 - f.sum()
    return float(np.sum(p * np.log(rest + f * odds)) + (1.0 - p.sum()) * np.log(rest))


def test_a_lone_bet_gets_the_one_bet_kelly_fraction() -> None:
    # p = 0.5 at odds 3: f = (0.5 * 3 - 1) / (3 - 1) = 0.25
    # the others have expected returns 0.6 and 0.6, below R = (1 - 0.5) / (1 - 1/3) = 0.75
    f = race_kelly_fractions(np.array([0.5, 0.3, 0.2]), np.array([3.0, 2.0, 3.0]))
    np.testing.assert_allclose(f, [0.25, 0.0, 0.0])
    np.testing.assert_allclose(single_kelly_fraction(np.array([0.5]), np.array([3.0])), [0.25])


def test_two_runners_of_one_race_are_sized_together_hand_computed() -> None:
    # p = (0.5, 0.3, 0.2), odds = (2.5, 3.6, 3.0); expected returns 1.25, 1.08, 0.60.
    # S = {0}: R = 0.5 / (1 - 0.4) = 0.8333 < 1.08, so runner 1 joins:
    # S = {0, 1}: R = (1 - 0.8) / (1 - 0.4 - 0.2778) = 0.62069 > 0.60, so runner 2 stays out.
    # f0 = 0.5 - 0.62069 / 2.5 = 0.251724, f1 = 0.3 - 0.62069 / 3.6 = 0.127586
    p, odds = np.array([0.5, 0.3, 0.2]), np.array([2.5, 3.6, 3.0])
    f = race_kelly_fractions(p, odds)
    r = 0.2 / (1 - 1 / 2.5 - 1 / 3.6)
    np.testing.assert_allclose(f, [0.5 - r / 2.5, 0.3 - r / 3.6, 0.0], atol=1e-12)
    np.testing.assert_allclose(f, [0.251724, 0.127586, 0.0], atol=1e-6)
    # sequential single bets would stake 0.1667 on the favourite alone: the hedge changes the size
    assert f[0] > single_kelly_fraction(p[:1], odds[:1])[0]


@pytest.mark.parametrize("seed", range(5))
def test_simultaneous_kelly_is_the_maximum_of_expected_log_growth(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 8
    p = rng.dirichlet(np.ones(n))
    market = rng.dirichlet(np.ones(n) * 2)
    odds = 1.0 / (market * 1.15)
    f = race_kelly_fractions(p, odds)
    res = minimize(
        lambda x: -expected_log_growth(x, p, odds),
        np.full(n, 0.01),
        bounds=[(0.0, 0.99)] * n,
        constraints=[{"type": "ineq", "fun": lambda x: 0.999 - x.sum()}],
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 500},
    )
    assert expected_log_growth(f, p, odds) >= -res.fun - 1e-7
    np.testing.assert_allclose(f, res.x, atol=2e-3)


def test_fraction_min_edge_and_cap_apply_after_the_joint_optimum() -> None:
    p, odds = np.array([0.5, 0.3, 0.2]), np.array([2.5, 3.6, 3.0])
    quarter = KellyStaking(fraction=0.25, min_edge=0.05, max_stake=0.10)
    np.testing.assert_allclose(quarter.win_fractions(p, odds), [0.062931, 0.031897, 0.0], atol=1e-6)
    # an edge of 8% on runner 1 is below a 10% minimum: only the favourite is a candidate, sized alone
    strict = KellyStaking(fraction=1.0, min_edge=0.10, max_stake=1.0)
    np.testing.assert_allclose(strict.win_fractions(p, odds), [1 / 6, 0.0, 0.0], atol=1e-9)
    capped = KellyStaking(fraction=1.0, min_edge=0.05, max_stake=0.10)
    np.testing.assert_allclose(capped.win_fractions(p, odds), [0.10, 0.10, 0.0], atol=1e-9)


def test_no_edge_or_no_price_means_no_bet() -> None:
    staking = KellyStaking()
    assert not staking.win_fractions(np.array([0.2, 0.3, 0.5]), np.array([4.0, 3.0, 1.8])).any()
    assert not staking.win_fractions(np.array([0.9, 0.1]), np.array([np.nan, 1.0])).any()


def test_place_bets_are_sized_one_by_one_and_capped_per_race() -> None:
    staking = KellyStaking(fraction=1.0, min_edge=0.05, max_stake=0.5, max_race_stake=0.3)
    f = staking.place_fractions(np.array([0.8, 0.7, 0.1]), np.array([1.5, 1.6, 3.0]))
    # single-bet fractions (0.8*1.5-1)/0.5 = 0.4 and (0.7*1.6-1)/0.6 = 0.2, scaled to a 0.3 total
    np.testing.assert_allclose(f, [0.2, 0.1, 0.0], atol=1e-9)


def test_invalid_staking_parameters_are_refused_in_the_house_shape() -> None:
    message = "The 'fraction' parameter of KellyStaking must be a float in (0, 1]. Got -0.5 instead."
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        KellyStaking(fraction=-0.5)
    with pytest.raises(RacequantError, match=re.escape("The 'max_stake' parameter of KellyStaking")):
        KellyStaking(max_stake=2.0)
