"""Behaviour of the race simulator: determinism, the racequant format, and the designed signals."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from racequant.errors import ConfigurationError, RacequantError
from racequant.ingest.schema import GOINGS, RACE_CLASSES, SEXES, STATUSES, SURFACES
from racequant.ingest.simulator import (
    HORSE_FILE_COLUMNS,
    RACE_FILE_COLUMNS,
    RUNNER_FILE_COLUMNS,
    SimulatedResults,
    simulate,
    write_results,
)


@pytest.fixture(scope="module")
def sim() -> SimulatedResults:
    return simulate(1500, seed=11)


@pytest.fixture(scope="module")
def starters(sim: SimulatedResults) -> pd.DataFrame:
    runners = sim.runners.merge(sim.races[["race_id", "track", "distance_m"]], on="race_id")
    out = runners[runners["status"] != "withdrawn"].copy()
    out["true_p"] = sim.truth.loc[out.index, "true_win_prob"].to_numpy()
    out["won"] = (out["finish_position"] == 1).fillna(False).astype(float)
    return out


def _pseudo_r2(starters: pd.DataFrame, prob: pd.Series) -> float:
    frame = starters.assign(prob=prob)
    winners = frame[frame["won"] == 1].groupby("race_id")["prob"].sum()
    n_runners = frame.groupby("race_id").size().loc[winners.index]
    return float(1 - np.log(winners).sum() / np.log(1 / n_runners).sum())


def test_same_seed_gives_identical_frames_and_files(tmp_path: Path) -> None:
    a, b = simulate(120, seed=3), simulate(120, seed=3)
    for name in ("races", "runners", "horses", "truth"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    paths_a = write_results(a, tmp_path / "a")
    paths_b = write_results(b, tmp_path / "b")
    assert [p.name for p in paths_a] == ["races.csv", "runners.csv", "horses.csv"]
    for pa, pb in zip(paths_a, paths_b, strict=True):
        assert pa.read_bytes() == pb.read_bytes()


def test_different_seeds_give_different_histories() -> None:
    a, b = simulate(120, seed=1), simulate(120, seed=2)
    assert not a.runners["finish_position"].equals(b.runners["finish_position"])


def test_exactly_n_races_are_simulated_with_unique_ids(sim: SimulatedResults) -> None:
    assert len(sim.races) == 1500
    assert sim.races["race_id"].is_unique
    assert sim.races["race_id"].str.fullmatch(r"SIM-\d{8}-(ST|HV)-\d{2}").all()
    assert sim.runners["horse_id"].str.fullmatch(r"SIM-H\d{6}").all()
    assert set(sim.runners["race_id"]) == set(sim.races["race_id"])
    assert set(sim.runners["horse_id"]) == set(sim.horses["horse_id"])


def test_frames_have_the_format_columns_types_and_vocabulary(sim: SimulatedResults) -> None:
    races, runners, horses = sim.races, sim.runners, sim.horses
    assert tuple(races.columns) == RACE_FILE_COLUMNS
    assert tuple(runners.columns) == RUNNER_FILE_COLUMNS
    assert tuple(horses.columns) == HORSE_FILE_COLUMNS
    assert set(races["track"]) == {"Sha Tin", "Happy Valley"}
    assert set(races["country"]) == {"HK"}
    assert set(races["surface"]) <= set(SURFACES)
    assert set(races["going"]) <= set(GOINGS)
    assert set(races["race_class"]) <= set(RACE_CLASSES)
    assert races["off_time"].str.fullmatch(r"\d{2}:\d{2}").all()
    assert set(races["distance_m"]) <= {1000, 1200, 1400, 1600, 1650, 1800, 2000, 2200, 2400}
    assert races.loc[races["surface"] == "all_weather", "course_config"].isna().all()
    assert races.loc[races["track"] == "Happy Valley", "surface"].eq("turf").all()
    awt_share = (races.loc[races["track"] == "Sha Tin", "surface"] == "all_weather").mean()
    assert 0.07 < awt_share < 0.18
    sections = races["section_distances_m"].str.split().apply(lambda s: [int(x) for x in s])
    assert (sections.apply(sum) == races["distance_m"]).all()
    assert (races.loc[races["distance_m"] == 1650, "section_distances_m"] == "450 400 400 400").all()
    assert (races.loc[races["distance_m"] == 1400, "section_distances_m"] == "200 400 400 400").all()
    assert set(runners["status"]) <= set(STATUSES)
    assert set(runners["sex"].dropna()) <= set(SEXES)
    assert runners["carried_weight_lbs"].between(113, 133).all()
    assert runners["horse_weight_lbs"].dropna().between(900, 1300).all()
    assert runners.groupby("race_id").size().max() <= 14
    for column in ("saddle_no", "draw", "age", "finish_position"):
        assert runners[column].dtype == "Int64"
    for column in ("carried_weight_lbs", "rating", "finish_time_s", "win_odds", "place_odds"):
        assert runners[column].dtype == "Float64"
    assert horses["foaled_year"].dtype == "Int64"
    assert set(horses["country_of_birth"]) <= {"AU", "NZ", "IE", "GB", "US", "FR", "ZA", "JP"}


def test_status_rates_are_hong_kong_like(sim: SimulatedResults) -> None:
    rates = sim.runners["status"].value_counts(normalize=True)
    assert 0.010 < rates["withdrawn"] < 0.028
    assert rates.get("did_not_finish", 0.0) < 0.006


def test_withdrawn_runners_have_no_result_and_no_odds(sim: SimulatedResults) -> None:
    withdrawn = sim.runners[sim.runners["status"] == "withdrawn"]
    assert len(withdrawn) > 0
    for column in ("finish_position", "finish_time_s", "win_odds", "place_odds", "draw", "section_times_s"):
        assert withdrawn[column].isna().all(), column
    assert (sim.truth.loc[withdrawn.index, "true_win_prob"] == 0).all()


def test_every_starter_has_win_odds_and_most_have_place_odds(starters: pd.DataFrame) -> None:
    assert starters["win_odds"].notna().all()
    assert starters["win_odds"].between(1.1, 99).all()
    assert starters["place_odds"].notna().mean() > 0.9


def test_finishing_positions_run_from_one_and_agree_with_times(sim: SimulatedResults) -> None:
    finished = sim.runners[sim.runners["status"] == "finished"].sort_values(["race_id", "finish_position"])
    for _, race in finished.groupby("race_id"):
        positions = race["finish_position"].to_numpy()
        assert positions[0] == 1
        # Dead heats share a position and the next one is skipped: positions never exceed the rank.
        assert (positions <= np.arange(1, len(positions) + 1)).all()
        assert (np.diff(race["finish_time_s"].to_numpy()) >= -1e-9).all()
    winners = finished[finished["finish_position"] == 1]
    assert (winners["margin_lengths"] == 0).all()


def test_section_times_sum_to_the_finish_time(sim: SimulatedResults) -> None:
    timed = sim.runners.dropna(subset=["finish_time_s"])
    sums = timed["section_times_s"].str.split().apply(lambda s: sum(float(x) for x in s))
    assert np.allclose(sums.to_numpy(), timed["finish_time_s"].to_numpy(dtype=float), atol=0.011)
    n_sections = timed.merge(sim.races, on="race_id")["section_distances_m"].str.split().str.len()
    assert (timed["running_positions"].str.split().str.len().to_numpy() == n_sections.to_numpy()).all()
    last_call = timed["running_positions"].str.split().str[-1].astype(int)
    finished = timed["status"] == "finished"
    assert (last_call[finished] == timed.loc[finished, "finish_position"]).all()


def test_overround_is_near_hong_kong_pools(starters: pd.DataFrame) -> None:
    overround = (1 / starters["win_odds"]).groupby(starters["race_id"]).sum()
    assert 1.17 < overround.mean() < 1.23
    assert overround.between(1.05, 1.30).mean() > 0.97
    assert overround.between(1.12, 1.30).mean() > 0.9


def test_true_chances_sum_to_one_per_race(starters: pd.DataFrame) -> None:
    totals = starters.groupby("race_id")["true_p"].sum()
    assert np.allclose(totals.to_numpy(), 1.0)


def test_market_favourite_wins_about_a_third_of_races(starters: pd.DataFrame) -> None:
    favourite = starters.loc[starters.groupby("race_id")["win_odds"].idxmin()]
    assert 0.28 <= favourite["won"].mean() <= 0.37


def test_market_is_informed_but_beatable(starters: pd.DataFrame) -> None:
    implied = 1 / starters["win_odds"]
    market = implied / implied.groupby(starters["race_id"]).transform("sum")
    market_r2 = _pseudo_r2(starters, market)
    assert 0.14 < market_r2 < 0.25
    assert _pseudo_r2(starters, starters["true_p"]) > market_r2 + 0.02


def test_higher_rated_horses_in_a_race_win_more(starters: pd.DataFrame) -> None:
    rank = starters.groupby("race_id")["rating"].rank(pct=True)
    top, bottom = starters.loc[rank > 2 / 3, "won"], starters.loc[rank <= 1 / 3, "won"]
    se = np.sqrt(top.var() / len(top) + bottom.var() / len(bottom))
    assert (top.mean() - bottom.mean()) / se > 3


def test_happy_valley_draw_bias_favours_low_draws(starters: pd.DataFrame) -> None:
    hv = starters[(starters["track"] == "Happy Valley") & (starters["distance_m"] <= 1650)]
    low, high = hv.loc[hv["draw"] <= 4, "won"], hv.loc[hv["draw"] >= 9, "won"]
    se = np.sqrt(low.var() / len(low) + high.var() / len(high))
    assert (low.mean() - high.mean()) / se > 3


def test_distance_preference_is_inherited_from_the_sire(sim: SimulatedResults) -> None:
    per_horse = sim.truth.drop_duplicates("horse_id")
    corr = np.corrcoef(np.log(per_horse["sire_distance_pref_m"]), np.log(per_horse["distance_pref_m"]))[0, 1]
    assert corr > 0.25


@pytest.mark.slow
def test_horses_whose_sires_other_progeny_won_more_win_more() -> None:
    sim = simulate(5000, seed=21)
    runs = sim.runners[sim.runners["status"] != "withdrawn"].merge(sim.horses[["horse_id", "sire"]], on="horse_id")
    runs["won"] = (runs["finish_position"] == 1).fillna(False).astype(float)
    per_horse = runs.groupby(["sire", "horse_id"])["won"].agg(["sum", "size"]).reset_index()
    per_sire = per_horse.groupby("sire")[["sum", "size"]].transform("sum")
    others = per_sire["size"] - per_horse["size"]
    per_horse["sire_loo_rate"] = (per_sire["sum"] - per_horse["sum"]) / others
    per_horse = per_horse[others >= 30]
    tercile = pd.qcut(per_horse["sire_loo_rate"], 3, labels=False)
    top, bottom = per_horse[tercile == 2], per_horse[tercile == 0]
    p_top, p_bottom = top["sum"].sum() / top["size"].sum(), bottom["sum"].sum() / bottom["size"].sum()
    se = np.sqrt(p_top * (1 - p_top) / top["size"].sum() + p_bottom * (1 - p_bottom) / bottom["size"].sum())
    assert (p_top - p_bottom) / se > 2.5


def test_progress_is_reported_up_to_the_total() -> None:
    calls: list[tuple[int, int]] = []
    simulate(40, seed=0, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (40, 40)
    assert all(total == 40 for _, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_start_date_sets_the_first_race_day() -> None:
    sim = simulate(20, seed=0, start_date=date(2020, 9, 6))
    assert sim.races["date"].min() >= pd.Timestamp("2020-09-06")
    assert sim.races["race_id"].iloc[0].startswith("SIM-202009")


def test_write_results_writes_csv_that_reads_back_as_the_format(tmp_path: Path) -> None:
    sim = simulate(30, seed=4)
    out = tmp_path / "nested" / "dir"
    paths = write_results(sim, out)
    races = pd.read_csv(out / "races.csv", dtype=str)
    runners = pd.read_csv(out / "runners.csv", dtype=str, keep_default_na=False)
    assert paths == [out / "races.csv", out / "runners.csv", out / "horses.csv"]
    assert tuple(races.columns) == RACE_FILE_COLUMNS
    assert races["date"].str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    assert tuple(runners.columns) == RUNNER_FILE_COLUMNS
    withdrawn = runners[runners["status"] == "withdrawn"]
    assert (withdrawn["finish_position"] == "").all()
    assert runners.loc[runners["status"] == "finished", "finish_position"].str.fullmatch(r"\d+").all()


def test_write_results_writes_parquet_with_the_same_columns(tmp_path: Path) -> None:
    sim = simulate(30, seed=4)
    paths = write_results(sim, tmp_path, file_format="parquet")
    assert [p.name for p in paths] == ["races.parquet", "runners.parquet", "horses.parquet"]
    runners = pd.read_parquet(tmp_path / "runners.parquet")
    assert tuple(runners.columns) == RUNNER_FILE_COLUMNS
    assert len(runners) == len(sim.runners)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_races": -3}, "The 'n_races' parameter of simulate must be a positive int. Got -3 instead."),
        ({"n_races": 0}, "The 'n_races' parameter of simulate must be a positive int. Got 0 instead."),
        ({"n_races": 2.5}, "The 'n_races' parameter of simulate must be a positive int. Got 2.5 instead."),
        ({"n_races": True}, "The 'n_races' parameter of simulate must be a positive int. Got True instead."),
        ({"n_races": 10, "seed": -1}, "The 'seed' parameter of simulate must be a non-negative int. Got -1 instead."),
        (
            {"n_races": 10, "start_date": "2020-01-01"},
            "The 'start_date' parameter of simulate must be a datetime.date. Got '2020-01-01' instead.",
        ),
    ],
)
def test_invalid_parameters_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        simulate(**kwargs)


def test_invalid_file_format_is_refused(tmp_path: Path) -> None:
    sim = simulate(5, seed=0)
    with pytest.raises(RacequantError, match=re.escape("The 'file_format' parameter of write_results")):
        write_results(sim, tmp_path, file_format="xlsx")  # type: ignore[arg-type]
