"""Cross-fitted calibration (RacePipeline(refit_on_calibration=True), the default): the boosters learn the
calibration slice too, and the calibrators are fitted on scores of boosters that never saw the races they score."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import pytest

from racequant.calibration.metrics import pseudo_r2
from racequant.models.boosters import GradientBooster
from racequant.models.pipeline import RacePipeline, calibration_halves
from racequant.models.place import n_places
from racequant.models.synthetic import make_synthetic_runners

FEATURES = [f"f{j}" for j in range(8)] + ["going"]
SETTINGS = {"n_estimators": 40, "learning_rate": 0.2, "max_depth": 3, "n_bootstrap": 5, "min_group_size": 500}


def _runners(n_races: int, seed: int = 11) -> pd.DataFrame:
    frame = make_synthetic_runners(n_races, seed=seed).rename(columns={"date": "race_date"})
    return frame.sort_values(["race_date", "race_id"], kind="stable").reset_index(drop=True)


class Fitted:
    """A cross-fitted pipeline, the same pipeline without the option, the rows each booster was trained on and
    every scoring of the pipeline's own rows during the fit (rows scored, boosters that scored them)."""

    def __init__(self) -> None:
        frame = _runners(600)
        days = np.sort(frame["race_date"].unique())
        cut = days[int(len(days) * 0.85)]
        self.train, self.later = frame[frame["race_date"] < cut], frame[frame["race_date"] >= cut]
        self.trained: dict[int, set[int]] = {}
        self.scorings: list[tuple[set[int], list[GradientBooster]]] = []
        self._keep: list[GradientBooster] = []  # no booster is collected, so no id is reused
        with pytest.MonkeyPatch.context() as mp:
            fit, base = GradientBooster.fit, RacePipeline._base

            def recording_fit(booster: GradientBooster, X: pd.DataFrame, *args: Any, **kwargs: Any) -> Any:
                self._keep.append(booster)
                self.trained[id(booster)] = set(X.index)
                return fit(booster, X, *args, **kwargs)

            def recording_base(pipe: RacePipeline, rows: pd.DataFrame, *args: Any, **kwargs: Any) -> Any:
                win = kwargs.get("win_boosters") or pipe.win_boosters_
                place = kwargs.get("place_boosters") or pipe.place_boosters_
                self.scorings.append((set(rows.index), [*win.values(), *place.values()]))
                return base(pipe, rows, *args, **kwargs)

            mp.setattr(GradientBooster, "fit", recording_fit)
            mp.setattr(RacePipeline, "_base", recording_base)
            self.cross = RacePipeline(**SETTINGS).fit(self.train, FEATURES)  # the default
        self.plain = RacePipeline(**SETTINGS, refit_on_calibration=False).fit(self.train, FEATURES)

    def calibration_rows(self) -> set[int]:
        end = pd.Timestamp(self.cross.training_window_["validation_end"])
        return set(self.train.index[self.train["race_date"] > end])


@pytest.fixture(scope="module")
def fitted() -> Fitted:
    return Fitted()


def test_each_calibration_half_is_scored_by_boosters_that_never_trained_on_it(fitted: Fitted) -> None:
    calibration = fitted.calibration_rows()
    scored = [(rows, boosters) for rows, boosters in fitted.scorings if rows <= calibration]
    assert len(scored) == 2
    (first, first_scorers), (second, second_scorers) = sorted(scored, key=lambda s: min(s[0]))
    assert first | second == calibration and not first & second
    assert max(first) < min(second)  # the first half is the earlier one
    for rows, scorers, other in ((first, first_scorers, second), (second, second_scorers, first)):
        assert len(scorers) == 6
        for booster in scorers:
            learned = fitted.trained[id(booster)]
            assert not learned & rows  # out of sample for every runner it scores
            assert other <= learned  # but it did learn the other half of the calibration slice
            assert max(learned) < len(fitted.train)  # and nothing outside the training window


def test_the_stored_boosters_learned_the_whole_window(fitted: Fitted) -> None:
    boosters = [*fitted.cross.win_boosters_.values(), *fitted.cross.place_boosters_.values()]
    for booster in boosters:
        assert fitted.trained[id(booster)] == set(fitted.train.index)
    scored_by_stored = [rows for rows, scorers in fitted.scorings if any(b in boosters for b in scorers)]
    assert not scored_by_stored  # the final boosters score no race during the fit


def test_the_refits_keep_the_validation_slice_choices_and_tree_counts(fitted: Fitted) -> None:
    for key in ("temperatures", "blend_weights", "harville", "best_iterations"):
        assert fitted.cross.validation_metrics_[key] == fitted.plain.validation_metrics_[key]
    for lib, booster in fitted.cross.win_boosters_.items():
        assert booster.n_estimators == fitted.plain.win_boosters_[lib].n_estimators
    halves = fitted.cross.calibration_halves_
    assert halves["first_end"] < halves["second_start"]
    assert sum(halves["races"].values()) == fitted.cross.training_window_["races"]["calibration"]


def test_cross_fitted_predictions_sum_to_one_and_to_the_places(fitted: Fitted) -> None:
    out = fitted.cross.predict(fitted.later, explain=False)
    by_race = out.groupby("race_id")
    assert np.allclose(by_race["win_prob"].sum(), 1.0, atol=1e-9)
    size = by_race.size()
    assert np.allclose(by_race["place_prob"].sum(), np.minimum(n_places(size.to_numpy()), size.to_numpy()))
    assert not np.allclose(out["win_prob"], fitted.plain.predict(fitted.later, explain=False)["win_prob"])


def test_the_option_is_the_default_and_off_keeps_the_boosters_out_of_the_calibration_slice(fitted: Fitted) -> None:
    assert RacePipeline().refit_on_calibration is True
    assert fitted.cross.refit_on_calibration and hasattr(fitted.cross, "calibration_halves_")
    assert not hasattr(fitted.plain, "calibration_halves_")
    # off: the calibrators are fitted on the stored boosters' own (out-of-sample) scores of the calibration slice,
    # so scoring that slice again reproduces the calibration figures
    end = pd.Timestamp(fitted.plain.training_window_["validation_end"])
    calibration = fitted.train[fitted.train["race_date"] > end]
    base = fitted.plain._base(calibration)
    recorded = fitted.plain.validation_metrics_["calibration_races_uncalibrated"]
    race = calibration["race_id"].to_numpy()
    won = (calibration["finish_position"].to_numpy() == 1).astype(float)
    assert recorded["pseudo_r2"] == pytest.approx(pseudo_r2(race, base["win_prob_base"].to_numpy(), won), abs=1e-12)


def test_calibration_halves_split_by_race_day_near_half_the_races() -> None:
    days = ["2003-01-01"] * 4 + ["2003-01-05"] * 4 + ["2003-01-08"] * 4 + ["2003-01-12"] * 6
    dates = pd.Series(pd.to_datetime(days))
    races = pd.Series([f"r{i // 2}" for i in range(len(dates))])  # two runners a race
    calibration = dates >= pd.Timestamp("2003-01-05")  # races on the last three days: 2, 2 and 3
    first, second = calibration_halves(dates, races, calibration)
    assert first.tolist() == [False] * 4 + [True] * 8 + [False] * 6
    assert second.tolist() == [False] * 12 + [True] * 6


def test_refit_on_calibration_needs_two_calibration_days_and_a_bool() -> None:
    dates = pd.Series(pd.to_datetime(["2003-01-01", "2003-01-01"]))
    with pytest.raises(ValueError, match=re.escape("needs a calibration slice of at least 2 race days")):
        calibration_halves(dates, pd.Series(["r1", "r2"]), pd.Series([True, True]))
    frame = make_synthetic_runners(60, seed=1).rename(columns={"date": "race_date"})
    with pytest.raises(ValueError, match="'refit_on_calibration' parameter of RacePipeline must be a bool"):
        RacePipeline(refit_on_calibration=1).fit(frame, FEATURES)


@pytest.mark.parametrize(
    "options",
    [{}, {"refit_on_calibration": False}, {"refit_on_calibration": False, "refit_on_validation": False}],
    ids=["cross-fitted", "refit on validation", "no refit"],
)
def test_fit_announces_as_many_steps_as_fit_steps_says(options: dict[str, bool]) -> None:
    frame = _runners(300)
    messages: list[str] = []
    pipe = RacePipeline(**{**SETTINGS, **options})
    pipe.fit(frame, FEATURES, progress=messages.append)
    assert messages[-1] == "done"
    assert len(messages) - 1 == pipe.fit_steps()
