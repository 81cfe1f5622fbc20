"""Settling bets with the real odds: win on win odds, place on place odds, dead heats split.

Rules (Hong Kong pari-mutuel, approximated from the final odds the data holds):

- Returns include the stake: a winning 10 at odds 6.4 returns 64.
- Dead heats: the runners tied for a paid position share the paid places they cover. With k runners
  tied at position ``pos`` and ``n_paid`` places paid (1 for win, 3 or 2 for place), the places they
  cover are ``min(k, n_paid - pos + 1)``; each of their bets returns stake * odds * covered / k. Two
  runners dead-heating for first pay half the win odds each (HKJC splits the pool between the
  dead-heaters; the final dividend is not in the data, so the pre-race odds stand in for it); two
  dead-heating for third with three places paid pay half the place odds each, while a dead heat for
  second (covering places 2 and 3) pays each in full.
- Withdrawn runners are not in the race: a bet on one is void (stake returned, return = stake, no
  profit, and it is not counted as a bet). Runners that did not finish or were disqualified lose.
- Place bets exist only in races of 4 or more runners (no place pool otherwise): 3 places with 7+
  runners, 2 with 4-6.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from racequant.models.place import n_places
from racequant.models.race import race_codes

logger = logging.getLogger(__name__)


def _share_of_paid_places(
    finish_position: np.ndarray, race_ids: Sequence[object] | np.ndarray, paid: np.ndarray
) -> np.ndarray:
    """Per runner: the share (0..1) of a full payout its bet earns given ``paid`` places per runner's race."""
    codes, _ = race_codes(race_ids)
    pos = np.asarray(finish_position, dtype=float)
    share = np.zeros(len(pos))
    finished = np.isfinite(pos) & (pos >= 1)
    if not finished.any():
        return share
    # number of runners tied at the same (race, position)
    key = codes[finished] * 10_000 + pos[finished].astype(np.int64)
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    k = counts[inverse].astype(float)
    covered = np.clip(np.minimum(k, paid[finished] - pos[finished] + 1), 0, None)
    share[finished] = covered / k
    return share


def _active(status: Sequence[object] | np.ndarray | None, n: int) -> np.ndarray:
    if status is None:
        return np.ones(n, dtype=bool)
    return np.asarray([s != "withdrawn" for s in status], dtype=bool)


def settle_win(
    stakes: np.ndarray,
    win_odds: np.ndarray,
    finish_position: np.ndarray,
    race_ids: Sequence[object] | np.ndarray,
    status: Sequence[object] | np.ndarray | None = None,
) -> np.ndarray:
    """Returns (stake included) of win bets; void bets on withdrawn runners return their stake."""
    stakes = np.asarray(stakes, dtype=float)
    paid = np.ones(len(stakes))
    share = _share_of_paid_places(finish_position, race_ids, paid)
    odds = np.nan_to_num(np.asarray(win_odds, dtype=float), nan=0.0)
    returns = stakes * odds * share
    return np.where(_active(status, len(stakes)), returns, stakes)


def settle_place(
    stakes: np.ndarray,
    place_odds: np.ndarray,
    finish_position: np.ndarray,
    race_ids: Sequence[object] | np.ndarray,
    status: Sequence[object] | np.ndarray | None = None,
) -> np.ndarray:
    """Returns (stake included) of place bets; field size counts runners that were not withdrawn."""
    stakes = np.asarray(stakes, dtype=float)
    active = _active(status, len(stakes))
    codes, n_races = race_codes(race_ids)
    size = np.bincount(codes, weights=active.astype(float), minlength=n_races)[codes]
    paid = np.where(size >= 4, n_places(size), 0).astype(float)
    share = _share_of_paid_places(finish_position, race_ids, paid)
    odds = np.nan_to_num(np.asarray(place_odds, dtype=float), nan=0.0)
    returns = stakes * odds * share
    return np.where(active, returns, stakes)
