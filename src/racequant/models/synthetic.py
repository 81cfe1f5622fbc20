"""A small synthetic runner frame in the model frame contract, for tests and examples.

Each race's finishing order is drawn from a Plackett-Luce model over a true ability (the Gumbel trick),
so the true win probability is known (``true_win_prob``) and the order follows Harville exactly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def make_synthetic_runners(
    n_races: int = 600,
    n_features: int = 8,
    seed: int = 0,
    start: str = "2000-01-01",
    tracks: tuple[str, ...] = ("ST", "HV"),
    field_sizes: tuple[int, int] = (5, 14),
    signal: float = 0.8,
) -> pd.DataFrame:
    """One row per runner: race_id, horse_id, date, track, finish_position, won, true_win_prob,
    market_prob (a noisy view of the truth; never a model input), f0..f{n-1} and a categorical ``going``."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(field_sizes[0], field_sizes[1] + 1, size=n_races)
    race_of = np.repeat(np.arange(n_races), sizes)
    n = len(race_of)
    X = rng.normal(size=(n, n_features))
    beta = signal * rng.normal(size=n_features) / np.sqrt(n_features) * 1.5
    going = rng.choice(["GOOD", "GOOD_TO_FIRM", "YIELDING"], size=n)
    ability = X @ beta + 0.3 * np.sin(2 * X[:, 0]) + np.where(going == "YIELDING", 0.2 * X[:, 1], 0.0)
    e = np.exp(ability - ability.max())
    tot = np.bincount(race_of, weights=e)
    true_p = e / tot[race_of]
    perf = ability + rng.gumbel(size=n)
    order = np.lexsort((-perf, race_of))
    pos = np.empty(n, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pos[order] = np.arange(n) - np.repeat(starts, sizes) + 1
    noisy = np.exp(ability + rng.normal(scale=0.3, size=n))
    market = noisy / np.bincount(race_of, weights=noisy)[race_of]
    dates = pd.Timestamp(start) + pd.to_timedelta(race_of // 8 * 3, unit="D")
    frame = pd.DataFrame(
        {
            "race_id": [f"R{r:06d}" for r in race_of],
            "horse_id": [f"H{i:07d}" for i in rng.permutation(n)],
            "date": dates,
            "track": np.asarray(tracks)[race_of % len(tracks)],
            "finish_position": pos,
            "won": (pos == 1).astype(np.int8),
            "true_win_prob": true_p,
            "market_prob": market,
            "going": going,
        }
    )
    for j in range(n_features):
        frame[f"f{j}"] = X[:, j]
    return frame
