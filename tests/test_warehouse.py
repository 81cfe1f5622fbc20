"""The warehouse: migrations, one-transaction loads, read-only access."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from racequant.errors import ImportValidationError, Problem, WarehouseError
from racequant.ingest.schema import HORSE_COLUMNS, RACE_COLUMNS, RUNNER_COLUMNS, ParsedResults, conform
from racequant.warehouse import connect, connect_read_only, migrate
from racequant.warehouse.load import load_results
from racequant.warehouse.migrations import LATEST_VERSION
from racequant.warehouse.queries import db_info, table_checksum


def _parsed(race_ids: list[str], *, day: str = "2020-01-01", horse_sire: str | None = "Sire A") -> ParsedResults:
    races = pd.DataFrame(
        {
            "race_id": race_ids,
            "source": "unit",
            "date": pd.to_datetime([day] * len(race_ids)),
            "track": "Sha Tin",
            "country": "HK",
            "race_no": range(1, len(race_ids) + 1),
            "distance_m": 1200,
            "surface": "turf",
            "going": "GOOD",
            "section_distances_m": [[400, 400, 400]] * len(race_ids),
        }
    )
    runners = pd.DataFrame(
        {
            "race_id": [r for r in race_ids for _ in range(2)],
            "horse_id": ["H1", "H2"] * len(race_ids),
            "status": "finished",
            "finish_position": [1, 2] * len(race_ids),
            "section_times_s": [[24.0, 23.0, 22.5], None] * len(race_ids),
            "running_positions": [[1, 1, 1], [2, 2, 2]] * len(race_ids),
            "win_odds": [2.5, 1.8] * len(race_ids),
        }
    )
    horses = pd.DataFrame({"horse_id": ["H1", "H2"], "sire": [horse_sire, None]})
    return ParsedResults(
        source="unit",
        format="racequant",
        races=conform(races, RACE_COLUMNS),
        runners=conform(runners, RUNNER_COLUMNS),
        horses=conform(horses, HORSE_COLUMNS),
    )


def _checksums(conn: duckdb.DuckDBPyConnection) -> dict[str, tuple[int, int]]:
    return {t: table_checksum(conn, t) for t in ("races", "runners", "horses", "import_log")}


def test_migrations_are_recorded_once_and_rerunning_applies_nothing(tmp_path: Path) -> None:
    with connect(tmp_path / "w.duckdb") as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()]
        assert versions == list(range(1, LATEST_VERSION + 1))
        assert migrate(conn) == []


def test_a_warehouse_newer_than_this_code_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    with connect(db) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', now()::TIMESTAMP)")
    with pytest.raises(WarehouseError, match="schema version 999, newer than this racequant knows"), connect(db):
        pass


def test_reading_a_missing_warehouse_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.duckdb"
    with (
        pytest.raises(WarehouseError, match=re.escape(f"There is no warehouse at {missing}")),
        connect_read_only(missing),
    ):
        pass
    assert not missing.exists()


def test_warehouse_connections_print_no_progress_bar(tmp_path: Path) -> None:
    # a long query would otherwise write DuckDB's progress bar to stdout, before the CLI's --json output
    with connect(tmp_path / "w.duckdb") as conn:
        assert conn.execute("SELECT current_setting('enable_progress_bar')").fetchone()[0] is False
    with connect_read_only(tmp_path / "w.duckdb") as conn:
        assert conn.execute("SELECT current_setting('enable_progress_bar')").fetchone()[0] is False


def test_read_only_connection_cannot_write(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    with connect(db):
        pass
    with connect_read_only(db) as conn, pytest.raises(duckdb.Error):
        conn.execute("DELETE FROM races")


def test_load_stores_lists_and_counts(tmp_path: Path) -> None:
    with connect(tmp_path / "w.duckdb") as conn:
        summary = load_results(conn, _parsed(["R1", "R2"]), "unit")
        assert (summary.races_added, summary.races_replaced, summary.runners_written) == (2, 0, 4)
        row = conn.execute("SELECT section_distances_m FROM races WHERE race_id = 'R1'").fetchone()
        assert row == ([400, 400, 400],)
        times = conn.execute("SELECT section_times_s FROM runners WHERE race_id = 'R1' ORDER BY horse_id").fetchall()
        assert times == [([24.0, 23.0, 22.5],), (None,)]
        info = db_info(conn)
        assert (info["races"], info["runners"], info["horses"]) == (2, 4, 2)
        assert info["sources"] == [
            {
                "source": "unit",
                "races": 2,
                "runners": 4,
                "horses": 2,
                "first_date": "2020-01-01",
                "last_date": "2020-01-01",
            }
        ]


def test_reloading_the_same_races_changes_no_content(tmp_path: Path) -> None:
    with connect(tmp_path / "w.duckdb") as conn:
        load_results(conn, _parsed(["R1", "R2"]), "unit")
        before = {t: table_checksum(conn, t) for t in ("races", "runners", "horses")}
        summary = load_results(conn, _parsed(["R1", "R2"]), "unit")
        after = {t: table_checksum(conn, t) for t in ("races", "runners", "horses")}
    assert (summary.races_added, summary.races_replaced, summary.races_unchanged) == (0, 0, 2)
    assert after == before


def test_a_corrected_race_replaces_the_stored_one_whole(tmp_path: Path) -> None:
    with connect(tmp_path / "w.duckdb") as conn:
        load_results(conn, _parsed(["R1", "R2"]), "unit")
        corrected = _parsed(["R1", "R2"])
        corrected.runners.loc[corrected.runners.race_id == "R2", "win_odds"] = 3.0
        summary = load_results(conn, corrected, "unit")
        odds = conn.execute("SELECT race_id, sum(win_odds) FROM runners GROUP BY 1 ORDER BY 1").fetchall()
    assert (summary.races_added, summary.races_replaced, summary.races_unchanged) == (0, 1, 1)
    assert summary.runners_written == 2
    assert odds == [("R1", 4.3), ("R2", 6.0)]


def test_a_known_pedigree_is_never_overwritten_by_a_missing_one(tmp_path: Path) -> None:
    with connect(tmp_path / "w.duckdb") as conn:
        load_results(conn, _parsed(["R1"]), "unit")
        load_results(conn, _parsed(["R2"], day="2020-01-08", horse_sire=None), "unit")
        assert conn.execute("SELECT sire FROM horses WHERE horse_id = 'H1'").fetchone() == ("Sire A",)


def test_an_import_with_problems_changes_nothing(tmp_path: Path) -> None:
    with connect(tmp_path / "w.duckdb") as conn:
        load_results(conn, _parsed(["R1"]), "unit")
        before = _checksums(conn)
        bad = _parsed(["R1", "R9"])
        bad.problems = [Problem("runners.csv", 7, "draw", "expected an integer, got 'x'", "R9")]
        with pytest.raises(ImportValidationError, match=re.escape("runners.csv, row 7, column 'draw'")):
            load_results(conn, bad, "unit")
        assert _checksums(conn) == before


def test_a_failure_while_writing_rolls_back_everything(tmp_path: Path) -> None:
    with connect(tmp_path / "w.duckdb") as conn:
        load_results(conn, _parsed(["R1"]), "unit")
        before = _checksums(conn)
        broken = _parsed(["R1", "R2"])
        broken.runners.loc[0, "status"] = pd.NA  # violates NOT NULL after the races were already replaced
        with pytest.raises(WarehouseError, match="rolled back"):
            load_results(conn, broken, "unit")
        assert _checksums(conn) == before


def test_import_validation_error_lists_the_first_twenty_problems() -> None:
    problems = [Problem("races.csv", i + 2, "date", "not a date") for i in range(25)]
    message = str(ImportValidationError(problems))
    assert "25 problem(s)" in message
    assert "races.csv, row 21, column 'date'" in message
    assert "races.csv, row 22, column 'date'" not in message
    assert "... and 5 more" in message
