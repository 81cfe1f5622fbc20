"""LogLinearPool: the conditional logit that pools base, market and qualitative signals."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy.optimize import approx_fprime
from sklearn.base import clone

from racequant.calibration.lifecycle import NotFittedError
from racequant.errors import RacequantError
from racequant.fusion.pooling import LogLinearPool, benter_second_stage


def _simulate_from_pool(a: float, b: float, n_races: int, seed: int) -> tuple[np.ndarray, ...]:
    """Races whose winners are drawn from p proportional to f^a * m^b."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(6, 15, size=n_races)
    race_ids = np.repeat(np.arange(n_races), sizes)
    # shuffle runner order so the estimator cannot rely on sorted input
    perm = rng.permutation(len(race_ids))
    race_ids = race_ids[perm]
    log_f = rng.normal(0, 1.0, size=len(race_ids))
    log_m = 0.6 * log_f + rng.normal(0, 0.8, size=len(race_ids))
    # normalise each column within its race into log-probabilities
    cols = []
    for raw in (log_f, log_m):
        z = np.zeros(n_races)
        np.add.at(z, race_ids, np.exp(raw))
        cols.append(raw - np.log(z[race_ids]))
    s = a * cols[0] + b * cols[1]
    z = np.zeros(n_races)
    np.add.at(z, race_ids, np.exp(s))
    p = np.exp(s) / z[race_ids]
    won = np.zeros(len(race_ids), dtype=int)
    for r in range(n_races):
        idx = np.flatnonzero(race_ids == r)
        won[rng.choice(idx, p=p[idx] / p[idx].sum())] = 1
    return np.exp(cols[0]), np.exp(cols[1]), race_ids, won


def test_fitting_recovers_known_weights_from_data_simulated_from_the_pool() -> None:
    p_model, p_market, race_ids, won = _simulate_from_pool(a=0.7, b=1.3, n_races=4000, seed=1)
    pool = benter_second_stage(p_model, p_market, race_ids, won)
    assert pool.n_races_ == 4000
    assert pool.coef_ == pytest.approx([0.7, 1.3], abs=4 * pool.coef_se_.max())
    assert np.all(pool.coef_se_ < 0.1)


def test_hand_checked_two_runner_race_has_the_closed_form_optimum() -> None:
    # one column x, two-runner races: P(first wins) = sigmoid(w (x1 - x2)). With x1 - x2 = 1 in every race and
    # the first runner winning 3 of 4 races, the optimum is w = logit(3/4) = log 3.
    race_ids = np.repeat(np.arange(4), 2)
    x = np.tile([1.0, 0.0], 4)[:, None]
    won = np.array([1, 0, 1, 0, 1, 0, 0, 1])
    pool = LogLinearPool().fit(x, race_ids, won)
    assert pool.coef_[0] == pytest.approx(np.log(3), abs=1e-6)
    assert pool.log_likelihood_ == pytest.approx(3 * np.log(0.75) + np.log(0.25), abs=1e-9)
    assert pool.predict_proba(x, race_ids)[:2] == pytest.approx([0.75, 0.25], abs=1e-6)


def test_gradient_matches_finite_differences_including_a_dead_heat() -> None:
    rng = np.random.default_rng(3)
    race_ids = np.repeat(np.arange(30), 5)
    x = rng.normal(size=(150, 3))
    won = np.zeros(150, dtype=int)
    won[::5] = 1
    won[1] = 1  # dead heat in race 0
    w0 = np.array([0.3, -0.2, 0.5])

    def nll(w: np.ndarray) -> float:
        s = x @ w
        total = 0.0
        for r in range(30):
            idx = np.flatnonzero(race_ids == r)
            p = np.exp(s[idx]) / np.exp(s[idx]).sum()
            total -= np.log(p[won[idx] == 1].sum())
        return total

    pool = LogLinearPool().fit(x, race_ids, won)
    # at the fitted optimum the numerical gradient of the reference likelihood vanishes
    assert np.abs(approx_fprime(pool.coef_, nll, 1e-6)).max() < 1e-3
    assert pool.log_likelihood_ == pytest.approx(-nll(pool.coef_), abs=1e-8)
    assert nll(pool.coef_) <= nll(w0)


def test_dead_heat_counts_once_with_the_summed_probability() -> None:
    race_ids = np.array([0, 0, 0])
    x = np.log(np.array([[0.5], [0.3], [0.2]]))
    pool = LogLinearPool()
    pool.coef_ = np.array([1.0])
    pool.n_features_in_ = 1
    assert pool.score(x, race_ids, np.array([1, 1, 0])) == pytest.approx(np.log(0.8))


def test_predictions_sum_to_one_in_every_race_and_keep_row_order() -> None:
    p_model, p_market, race_ids, won = _simulate_from_pool(1.0, 0.5, n_races=300, seed=2)
    pool = benter_second_stage(p_model, p_market, race_ids, won)
    logs = np.log(np.column_stack([p_model, p_market]))
    p = pool.predict_proba(logs, race_ids)
    sums = np.bincount(race_ids, weights=p)
    assert np.abs(sums - 1).max() < 1e-12
    # row order: predicting a permuted frame gives the permuted predictions
    perm = np.random.default_rng(0).permutation(len(p))
    assert pool.predict_proba(logs[perm], race_ids[perm]) == pytest.approx(p[perm], abs=1e-14)


def test_string_race_ids_work() -> None:
    race_ids = np.array(["R2", "R2", "R1", "R1", "R1"])
    x = np.log(np.array([0.6, 0.4, 0.2, 0.3, 0.5]))[:, None]
    pool = LogLinearPool().fit(x, race_ids, np.array([1, 0, 0, 0, 1]))
    p = pool.predict_proba(x, race_ids)
    assert p[:2].sum() == pytest.approx(1.0, abs=1e-12)
    assert p[2:].sum() == pytest.approx(1.0, abs=1e-12)


def test_predict_before_fit_is_refused() -> None:
    with pytest.raises(
        NotFittedError, match=re.escape("Incorrect method order: call fit before calling predict_proba.")
    ):
        LogLinearPool().predict_proba(np.zeros((2, 1)), np.array([0, 0]))


def test_negative_l2_is_rejected_with_the_sklearn_style_message() -> None:
    with pytest.raises(
        ValueError, match=re.escape("The 'l2' parameter of LogLinearPool must be a non-negative float. Got -1 instead.")
    ):
        LogLinearPool(l2=-1).fit(np.zeros((2, 1)), np.array([0, 0]), np.array([1, 0]))
    with pytest.raises(RacequantError):
        LogLinearPool(l2="a").fit(np.zeros((2, 1)), np.array([0, 0]), np.array([1, 0]))


def test_l2_shrinks_the_weights() -> None:
    p_model, p_market, race_ids, won = _simulate_from_pool(1.0, 1.0, n_races=200, seed=4)
    free = benter_second_stage(p_model, p_market, race_ids, won)
    shrunk = benter_second_stage(p_model, p_market, race_ids, won, l2=500.0)
    assert np.linalg.norm(shrunk.coef_) < np.linalg.norm(free.coef_)


def test_non_finite_inputs_and_races_without_winner() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        LogLinearPool().fit(np.array([[0.0], [-np.inf]]), np.array([0, 0]), np.array([1, 0]))
    with pytest.raises(ValueError, match="No race with a winner"):
        LogLinearPool().fit(np.zeros((2, 1)), np.array([0, 0]), np.array([0, 0]))
    # a race without a result is left out, not counted as a loss
    x = np.array([[1.0], [0.0], [1.0], [0.0], [5.0], [0.0]])
    pool = LogLinearPool().fit(x, np.array([0, 0, 1, 1, 2, 2]), np.array([1, 0, 0, 1, 0, 0]))
    assert pool.n_races_ == 2


def test_clone_gives_an_unfitted_copy_with_the_same_parameters() -> None:
    pool = LogLinearPool(l2=2.0).fit(np.array([[1.0], [0.0]]), np.array([0, 0]), np.array([1, 0]))
    fresh = clone(pool)
    assert fresh.get_params() == {"l2": 2.0, "fit_intercept": False}
    assert not hasattr(fresh, "coef_")
