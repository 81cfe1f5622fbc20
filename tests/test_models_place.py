"""Discounted Harville place probabilities and the Hong Kong place rule."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from racequant.calibration.lifecycle import NotFittedError
from racequant.models.place import DiscountedHarville, harville_place_probabilities, n_places, placed_from_positions
from racequant.models.race import race_codes
from racequant.models.synthetic import make_synthetic_runners


def _brute_force(p: np.ndarray, g: float, d: float) -> np.ndarray:
    n = len(p)
    a, b = p**g, p**d
    out = np.zeros(n)
    places = int(n_places(n))
    for order in itertools.permutations(range(n), places):
        prob = p[order[0]]
        if places >= 2:
            prob *= a[order[1]] / (a.sum() - a[order[0]])
        if places >= 3:
            prob *= b[order[2]] / (b.sum() - b[order[0]] - b[order[1]])
        out[list(order)] += prob
    return out


def test_hong_kong_places_three_with_seven_runners_two_with_four_to_six() -> None:
    assert n_places(np.array([3, 4, 6, 7, 14])).tolist() == [1, 2, 2, 3, 3]


@pytest.mark.parametrize("n", [4, 6, 7, 9])
def test_vectorised_harville_matches_enumeration_of_orderings(n: int) -> None:
    rng = np.random.default_rng(n)
    p = rng.dirichlet(np.ones(n))
    got = harville_place_probabilities(p, np.zeros(n), g=0.81, d=0.65)
    np.testing.assert_allclose(got, _brute_force(p, 0.81, 0.65), rtol=1e-10, atol=1e-12)


def test_place_probabilities_sum_to_number_of_places_in_every_race() -> None:
    frame = make_synthetic_runners(200, seed=3, field_sizes=(3, 24))
    place = harville_place_probabilities(frame["true_win_prob"].to_numpy(), frame["race_id"].to_numpy(), 0.8, 0.7)
    codes, n_races = race_codes(frame["race_id"].to_numpy())
    sums = np.bincount(codes, weights=place, minlength=n_races)
    expected = n_places(np.bincount(codes, minlength=n_races))
    np.testing.assert_allclose(sums, expected, atol=1e-9)
    assert (place <= 1 + 1e-12).all()


def test_fitted_exponents_recover_plackett_luce_when_the_truth_is_harville() -> None:
    frame = make_synthetic_runners(1500, seed=4)
    model = DiscountedHarville().fit(frame["true_win_prob"], frame["finish_position"], frame["race_id"])
    assert model.g_ == pytest.approx(1.0, abs=0.15)
    assert model.d_ == pytest.approx(1.0, abs=0.2)


def test_placed_counts_dead_heats_for_the_last_place() -> None:
    placed = placed_from_positions(np.array([1, 2, 3, 3, 5, 6, 7]), np.zeros(7))
    assert placed.tolist() == [1, 1, 1, 1, 0, 0, 0]


def test_predict_place_before_fit_is_refused() -> None:
    message = "Incorrect method order: call fit before calling predict_place."
    with pytest.raises(NotFittedError, match=re.escape(message)):
        DiscountedHarville().predict_place(np.array([0.5, 0.5]), np.zeros(2))
