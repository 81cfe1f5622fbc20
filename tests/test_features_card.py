"""The race-card path: its stored running state, staleness, and the horse record as a fallback."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from conftest import edit_csv
from features_helpers import (
    card_of,
    copy_warehouse,
    delete_from,
    mismatched_columns,
    warehouse_from_folder,
    warehouse_from_simulation,
)
from racequant.features import build_features, features_for_card
from racequant.features.build import refresh_card_state


@pytest.fixture(scope="module")
def sim_conn(tmp_path_factory: pytest.TempPathFactory):
    conn = warehouse_from_simulation(200, 5, tmp_path_factory.mktemp("sim_card"))
    yield conn
    conn.close()


def test_the_card_state_is_stored_once_and_rebuilt_when_the_warehouse_changes(sim_conn):
    assert refresh_card_state(sim_conn, force=True)
    assert not refresh_card_state(sim_conn)
    last = sim_conn.execute("SELECT max(date) FROM races").fetchall()[0][0]
    delete_from(sim_conn, last.isoformat())
    assert refresh_card_state(sim_conn)


def test_a_card_after_a_change_to_the_warehouse_still_equals_the_bulk_build(sim_conn):
    features_for_card(sim_conn, card_of(sim_conn, sim_conn.execute("SELECT min(race_id) FROM races").fetchall()[0][0]))
    first = sim_conn.execute("SELECT min(date) FROM races").fetchall()[0][0]
    sim_conn.execute("DELETE FROM runners WHERE race_id IN (SELECT race_id FROM races WHERE date = ?)", [first])
    sim_conn.execute("DELETE FROM races WHERE date = ?", [first])
    # a direct SQL edit is not an import: the fingerprint sees it through the row counts
    full = build_features(sim_conn)
    race_id = full["race_id"].iloc[len(full) // 2]
    card = features_for_card(sim_conn, card_of(sim_conn, race_id))
    assert mismatched_columns(full[full["race_id"] == race_id].reset_index(drop=True), card) == {}


def test_age_and_sex_fall_back_to_the_horse_record(tmp_path: Path):
    from conftest import write_results_folder

    folder = write_results_folder(tmp_path / "tiny")
    for column in ("age", "sex"):
        edit_csv(folder / "runners.csv", 2, column, "")  # H1 in T-1; horses.csv: gelding foaled 2016
    conn = warehouse_from_folder(folder, "racequant")
    frame = build_features(conn).set_index(["race_id", "horse_id"])
    assert frame.loc[("T-1", "H1"), "age"] == 2020 - 2016
    assert frame.loc[("T-1", "H1"), "is_gelding"] == 1.0
    assert frame.loc[("T-1", "H2"), "age"] == 5  # the runner's own value wins


def test_a_card_seen_from_an_earlier_day_equals_the_bulk_build_without_the_races_after_that_day(sim_conn):
    full = build_features(sim_conn)
    dates = sorted(full["race_date"].dt.date.unique())
    race_id = full.loc[full["race_date"].dt.date == dates[-1], "race_id"].iloc[0]
    as_of = dates[len(dates) // 2]
    card = features_for_card(sim_conn, card_of(sim_conn, race_id), as_of=as_of)
    # the same card on a warehouse holding only the races up to as_of (the card's race added back)
    cut = copy_warehouse(sim_conn)
    keep = cut.execute("SELECT * FROM races WHERE race_id = ?", [race_id]).df()
    keep_runners = cut.execute("SELECT * FROM runners WHERE race_id = ?", [race_id]).df()
    delete_from(cut, (as_of + timedelta(days=1)).isoformat())
    cut.register("_keep", keep)
    cut.execute("INSERT INTO races SELECT * FROM _keep")
    cut.register("_keep_runners", keep_runners)
    cut.execute("INSERT INTO runners SELECT * FROM _keep_runners")
    bulk = build_features(cut)
    assert mismatched_columns(bulk[bulk["race_id"] == race_id].reset_index(drop=True), card) == {}


def test_the_stored_card_state_is_read_by_lookups_not_windows(sim_conn):
    from racequant.features.build import _card_statements, _key_columns

    statements = _card_statements(10, dict.fromkeys(_key_columns(), "TRUE"))
    assert all(" OVER " not in sql.replace("OVER (PARTITION BY horse_id)", "") for _name, sql in statements)


def test_a_card_whose_race_is_stored_with_an_earlier_start_still_gets_features(sim_conn):
    # the stored race is a hole in the card's history: the card falls back to the window statements
    first_day = sim_conn.execute("SELECT min(date) FROM races").fetchall()[0][0]
    race_id = sim_conn.execute("SELECT min(race_id) FROM races WHERE date = ?", [first_day]).fetchall()[0][0]
    card = card_of(sim_conn, race_id)
    card["race"]["race_no"] = 99
    frame = features_for_card(sim_conn, card)
    declared = [r for r in card["runners"] if r.get("status") != "withdrawn"]
    assert len(frame) == len(declared) and frame["jockey_win_rate"].notna().all()
