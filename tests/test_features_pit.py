"""The point-in-time guarantee: no feature of a race can see a result of that race or of any later one."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features_helpers import (
    card_of,
    copy_warehouse,
    delete_from,
    mismatched_columns,
    scramble_results_from,
    warehouse_from_folder,
    warehouse_from_simulation,
)
from racequant.features import build_features, features_for_card

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HK_1997 = SHARED_DATA / "hkjc-1997-2005"

SIM_RACES = 700


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory):
    conn = warehouse_from_simulation(SIM_RACES, 11, tmp_path_factory.mktemp("sim"))
    full = build_features(conn)
    yield conn, full
    conn.close()


def _earlier(full: pd.DataFrame, cut: str) -> pd.DataFrame:
    return full[full["race_date"] < pd.Timestamp(cut)].reset_index(drop=True)


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(min_value=0.15, max_value=0.95), scramble=st.booleans())
def test_deleting_or_altering_future_results_changes_no_past_feature(simulated, fraction: float, scramble: bool):
    conn, full = simulated
    first, last = full["race_date"].min(), full["race_date"].max()
    cut = (first + (last - first) * fraction).date().isoformat()
    copy = copy_warehouse(conn)
    if scramble:
        scramble_results_from(copy, cut)
    else:
        delete_from(copy, cut)
    rebuilt = build_features(copy)
    if not scramble:
        assert len(rebuilt) == len(_earlier(full, cut))
    rebuilt = rebuilt[rebuilt["race_date"] < pd.Timestamp(cut)].reset_index(drop=True)
    assert mismatched_columns(_earlier(full, cut), rebuilt) == {}


def test_a_race_card_gets_the_same_features_as_the_bulk_build(simulated):
    conn, full = simulated
    race_ids = full["race_id"].drop_duplicates().tolist()
    for race_id in (race_ids[5], race_ids[len(race_ids) // 2], race_ids[-1]):
        card = features_for_card(conn, card_of(conn, race_id))
        bulk = full[full["race_id"] == race_id].reset_index(drop=True)
        assert mismatched_columns(bulk, card.reset_index(drop=True)) == {}


def test_a_race_card_ignores_results_written_on_it(simulated):
    conn, _full = simulated
    race_id = conn.execute("SELECT race_id FROM races ORDER BY date DESC, race_no DESC LIMIT 1").fetchone()[0]
    card = card_of(conn, race_id)
    plain = features_for_card(conn, card)
    for runner in card["runners"]:
        runner["finish_position"] = 1
        runner["finish_time_s"] = 1.0
    assert mismatched_columns(plain, features_for_card(conn, card)) == {}


def test_first_starters_have_no_form_but_keep_connections(simulated):
    _conn, full = simulated
    first = full[full["runs_count"] == 0]
    assert len(first) > 0
    assert first["speed_last"].isna().all()
    assert first["jockey_win_rate"].notna().mean() > 0.9


@pytest.mark.slow
@pytest.mark.realdata
def test_real_data_deleting_and_altering_the_future_changes_no_past_feature():
    if not HK_1997.exists():
        pytest.skip(f"The real data set is not at {HK_1997}")
    conn = warehouse_from_folder(HK_1997, "hkjc-kaggle")
    full = build_features(conn)
    cut = "2003-03-01"
    deleted = copy_warehouse(conn)
    delete_from(deleted, cut)
    assert mismatched_columns(_earlier(full, cut), build_features(deleted)) == {}
    scrambled = copy_warehouse(conn)
    scramble_results_from(scrambled, (date.fromisoformat(cut) + timedelta(days=200)).isoformat())
    later_cut = (date.fromisoformat(cut) + timedelta(days=200)).isoformat()
    rebuilt = build_features(scrambled)
    rebuilt = rebuilt[rebuilt["race_date"] < pd.Timestamp(later_cut)].reset_index(drop=True)
    assert mismatched_columns(_earlier(full, later_cut), rebuilt) == {}
    # the inference path on real data: one race card equals the bulk rows
    race_id = full.loc[full["race_date"] >= pd.Timestamp(cut), "race_id"].iloc[0]
    card = features_for_card(conn, card_of(conn, race_id))
    assert mismatched_columns(full[full["race_id"] == race_id].reset_index(drop=True), card) == {}
