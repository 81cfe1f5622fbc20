"""Refitting the boosters on train + validation after early stopping (RacePipeline(refit_on_validation=True)),
without the cross-fitted calibration that by default replaces that refit (tests/test_models_crossfit.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from racequant.models.pipeline import RacePipeline
from racequant.models.race import race_codes, race_softmax
from racequant.models.synthetic import make_synthetic_runners

FEATURES = [f"f{j}" for j in range(8)] + ["going"]
Pair = tuple[RacePipeline, RacePipeline, pd.DataFrame]
SETTINGS = {
    "n_estimators": 40,
    "learning_rate": 0.2,
    "max_depth": 3,
    "n_bootstrap": 5,
    "min_group_size": 500,
    "refit_on_calibration": False,
}


@pytest.fixture(scope="module")
def pair() -> Pair:
    frame = make_synthetic_runners(500, seed=11).rename(columns={"date": "race_date"})
    refit = RacePipeline(**SETTINGS).fit(frame, FEATURES)
    kept = RacePipeline(**SETTINGS, refit_on_validation=False).fit(frame, FEATURES)
    return refit, kept, frame


def test_temperatures_and_blend_weights_come_from_the_out_of_sample_validation_scores(pair: Pair) -> None:
    refit, kept, _ = pair
    for key in ("temperatures", "blend_weights", "harville", "best_iterations"):
        assert refit.validation_metrics_[key] == kept.validation_metrics_[key]


def test_each_refit_booster_keeps_its_early_stopped_tree_count(pair: Pair) -> None:
    refit, kept, _ = pair
    for boosters in (refit.win_boosters_, refit.place_boosters_):
        for lib, booster in boosters.items():
            stopped = (kept.win_boosters_ if boosters is refit.win_boosters_ else kept.place_boosters_)[lib]
            assert booster.n_estimators == stopped.best_iteration_ + 1 == booster.best_iteration_ + 1


def test_the_refit_boosters_have_learned_the_validation_races(pair: Pair) -> None:
    refit, kept, frame = pair
    w = refit.training_window_
    dates = pd.to_datetime(frame["race_date"])
    va = frame[(dates > pd.Timestamp(w["train_end"])) & (dates <= pd.Timestamp(w["validation_end"]))]
    codes, n_races = race_codes(va["race_id"].to_numpy())
    won = (va["finish_position"] == 1).to_numpy()
    for lib in refit.win_boosters_:
        nll = {}
        for name, pipe in (("refit", refit), ("kept", kept)):
            p = race_softmax(pipe.win_boosters_[lib].decision_function(va[FEATURES]), codes, n_races)
            nll[name] = -np.log(p[won]).mean()
        assert nll["refit"] < nll["kept"], (lib, nll)


def test_refit_on_validation_must_be_a_bool() -> None:
    frame = make_synthetic_runners(60, seed=1).rename(columns={"date": "race_date"})
    with pytest.raises(ValueError, match="'refit_on_validation' parameter of RacePipeline must be a bool"):
        RacePipeline(refit_on_validation="yes").fit(frame, FEATURES)
