"""A small priced race history for the backtest and betting tests (synthetic, seconds to fit)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from racequant.models.place import harville_place_probabilities
from racequant.models.synthetic import make_synthetic_runners


def priced_history(
    n_races: int = 1200, seed: int = 0, races_per_day: int = 8, start: str = "2000-01-01"
) -> pd.DataFrame:
    """One row per runner with features f0..f3, finish positions, win and place odds, track and class."""
    frame = make_synthetic_runners(n_races=n_races, n_features=4, seed=seed, start=start)
    rng = np.random.default_rng(seed + 1)
    race_num = frame["race_id"].str[1:].astype(int)
    frame["date"] = pd.Timestamp(start) + pd.to_timedelta(race_num // races_per_day * 3, unit="D")
    frame["race_no"] = race_num % races_per_day + 1
    frame["race_class"] = np.asarray(["3", "4", "5"])[race_num % 3]
    # the market: a noisy view of the truth with a 20% take on win and place (Harville place chances)
    frame["win_odds"] = np.round(1.0 / (frame["market_prob"] * 1.2), 1).clip(lower=1.05)
    p_place = harville_place_probabilities(frame["market_prob"].to_numpy(), frame["race_id"].to_numpy())
    frame["place_odds"] = np.clip(np.round(0.82 / np.clip(p_place, 1e-3, None), 1), 1.05, None)
    frame["status"] = "finished"
    return frame.drop(columns=["market_prob", "won"]).assign(f_noise=rng.normal(size=len(frame)))
