"""The race-card path: its stored running state, staleness, and the horse record as a fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import edit_csv
from features_helpers import card_of, delete_from, mismatched_columns, warehouse_from_folder, warehouse_from_simulation
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
    sim_conn.execute(
        "DELETE FROM runners WHERE race_id IN (SELECT race_id FROM races WHERE date = ?)", [first]
    )
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
