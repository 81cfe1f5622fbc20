"""Settlement with the real odds: dead heats split, withdrawn runners void, place terms by field size."""

from __future__ import annotations

import numpy as np

from racequant.betting.settlement import settle_place, settle_win


def test_a_winning_win_bet_returns_stake_times_odds_and_losers_nothing() -> None:
    back = settle_win(np.array([10.0, 10.0, 0.0]), np.array([6.4, 2.0, 3.0]), np.array([1, 2, 3]), ["R"] * 3)
    np.testing.assert_allclose(back, [64.0, 0.0, 0.0])


def test_a_dead_heat_for_first_pays_each_half_the_odds() -> None:
    back = settle_win(np.ones(4), np.array([4.0, 6.0, 3.0, 8.0]), np.array([1, 1, 3, 4]), ["R"] * 4)
    np.testing.assert_allclose(back, [2.0, 3.0, 0.0, 0.0])


def test_place_pays_three_places_with_seven_runners_and_splits_a_dead_heat_for_third() -> None:
    pos = np.array([1, 2, 3, 3, 5, 6, 7])
    back = settle_place(np.ones(7), np.full(7, 1.8), pos, ["R"] * 7)
    np.testing.assert_allclose(back, [1.8, 1.8, 0.9, 0.9, 0.0, 0.0, 0.0])


def test_a_dead_heat_for_second_covers_two_places_and_pays_both_in_full() -> None:
    pos = np.array([1, 2, 2, 4, 5, 6, 7])
    back = settle_place(np.ones(7), np.full(7, 1.5), pos, ["R"] * 7)
    np.testing.assert_allclose(back, [1.5, 1.5, 1.5, 0.0, 0.0, 0.0, 0.0])


def test_place_pays_two_places_with_four_to_six_runners_and_none_below_four() -> None:
    five = settle_place(np.ones(5), np.full(5, 1.4), np.array([1, 2, 3, 4, 5]), ["A"] * 5)
    np.testing.assert_allclose(five, [1.4, 1.4, 0.0, 0.0, 0.0])
    three = settle_place(np.ones(3), np.full(3, 1.4), np.array([1, 2, 3]), ["B"] * 3)
    np.testing.assert_allclose(three, [0.0, 0.0, 0.0])


def test_a_bet_on_a_withdrawn_runner_is_void_and_the_runner_does_not_count_in_the_field() -> None:
    pos = np.array([1, 2, 3, 4, np.nan, 5, 6])
    status = ["finished"] * 4 + ["withdrawn"] + ["finished"] * 2
    back = settle_place(np.ones(7), np.full(7, 1.6), pos, ["R"] * 7, status)
    # six runners left: two places paid; the withdrawn runner's stake comes back
    np.testing.assert_allclose(back, [1.6, 1.6, 0.0, 0.0, 1.0, 0.0, 0.0])
    win = settle_win(np.ones(7), np.full(7, 5.0), pos, ["R"] * 7, status)
    np.testing.assert_allclose(win, [5.0, 0, 0, 0, 1.0, 0, 0])


def test_runners_that_did_not_finish_lose() -> None:
    back = settle_win(np.ones(3), np.array([2.0, 3.0, 4.0]), np.array([np.nan, 1, 2]), ["R"] * 3)
    np.testing.assert_allclose(back, [0.0, 3.0, 0.0])
