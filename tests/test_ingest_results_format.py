"""Importing the racequant results format: parsing, validation messages, skip-invalid and warehouse effects."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from conftest import HORSES_CSV, RACES_CSV, RUNNERS_CSV, edit_csv, write_results_folder
from racequant.errors import ImportValidationError
from racequant.ingest import parse
from racequant.ingest.validate import write_rejects
from racequant.warehouse import connect, migrate
from racequant.warehouse.load import load_results
from racequant.warehouse.queries import db_info, table_checksum

TABLES = ("races", "runners", "horses", "import_log")


@pytest.fixture
def memory_db() -> Iterator[duckdb.DuckDBPyConnection]:
    conn = duckdb.connect(":memory:")
    migrate(conn)
    yield conn
    conn.close()


def _checksums(conn: duckdb.DuckDBPyConnection, tables: tuple[str, ...] = TABLES) -> dict[str, tuple[int, int]]:
    return {t: table_checksum(conn, t) for t in tables}


def _import(conn: duckdb.DuckDBPyConnection, folder: Path, **kwargs: object) -> None:
    load_results(conn, parse(folder, "racequant", **kwargs), str(folder))  # type: ignore[arg-type]


def test_a_valid_folder_parses_into_canonical_rows(racequant_dir: Path) -> None:
    parsed = parse(racequant_dir, "racequant")

    assert parsed.problems == [] and parsed.warnings == []
    assert parsed.source == "tiny-results"
    assert (len(parsed.races), len(parsed.runners), len(parsed.horses)) == (3, 9, 4)
    race = parsed.races.set_index("race_id").loc["T-2"]
    assert race["section_distances_m"] == [450, 400, 400, 400]
    assert race["surface"] == "all_weather" and pd.isna(race["course_config"])
    assert race["date"] == pd.Timestamp("2020-01-01")
    first = parsed.runners.iloc[0]
    assert first["running_positions"] == [2, 1, 1]
    assert first["section_times_s"] == [24.1, 23.0, 23.0]
    dead_heat = parsed.runners[parsed.runners["race_id"] == "T-2"]["finish_position"].tolist()
    assert dead_heat == [1, 1, 3]
    withdrawn = parsed.runners[parsed.runners["status"] == "withdrawn"].iloc[0]
    assert pd.isna(withdrawn["finish_position"]) and withdrawn["section_times_s"] is None
    assert parsed.horses.set_index("horse_id").loc["H1", "foaled_year"] == 2016


def test_source_can_be_named(racequant_dir: Path) -> None:
    assert parse(racequant_dir, "racequant", source="feed").races["source"].unique().tolist() == ["feed"]


def test_without_horses_file_horses_come_from_the_runners(tmp_path: Path) -> None:
    parsed = parse(write_results_folder(tmp_path / "nohorses", horses=None), "racequant")

    assert sorted(parsed.horses["horse_id"]) == ["H1", "H2", "H3", "H4"]
    assert parsed.horses.set_index("horse_id").loc["H3", "horse_name"] == "Charlie"
    assert parsed.horses["sire"].isna().all()


def test_a_byte_order_mark_and_blank_lines_keep_row_numbers(tmp_path: Path) -> None:
    races = "\ufeff" + RACES_CSV.replace("\nT-2", "\n\nT-2").replace("13:30", "1:30pm")
    parsed = parse(write_results_folder(tmp_path / "bom", races=races), "racequant")

    assert [str(p) for p in parsed.problems] == [
        "races.csv, row 4, column 'off_time': expected a time HH:MM, got '1:30pm'"
    ]


BAD_INPUT = [
    (
        "races.csv",
        3,
        "date",
        "2020/01/01",
        "races.csv, row 3, column 'date': expected a date YYYY-MM-DD, got '2020/01/01'",
    ),
    (
        "races.csv",
        2,
        "date",
        "2020-02-30",
        "races.csv, row 2, column 'date': expected a date YYYY-MM-DD, got '2020-02-30'",
    ),
    ("races.csv", 2, "off_time", "1pm", "races.csv, row 2, column 'off_time': expected a time HH:MM, got '1pm'"),
    ("races.csv", 4, "distance_m", "1,000", "races.csv, row 4, column 'distance_m': expected an integer, got '1,000'"),
    ("races.csv", 2, "distance_m", "", "races.csv, row 2, column 'distance_m': a value is required"),
    ("races.csv", 2, "track", "", "races.csv, row 2, column 'track': a value is required"),
    (
        "races.csv",
        2,
        "surface",
        "grass",
        "races.csv, row 2, column 'surface': expected one of turf, dirt, all_weather, got 'grass'",
    ),
    (
        "races.csv",
        3,
        "going",
        "Good",
        "races.csv, row 3, column 'going': expected an upper-case word such as GOOD_TO_FIRM, got 'Good'",
    ),
    (
        "races.csv",
        2,
        "race_class",
        "Class 4",
        "races.csv, row 2, column 'race_class': expected one of 1, 2, 3, 4, 5, 6, 7, G1, G2, G3, Listed, Griffin, "
        "got 'Class 4'",
    ),
    ("races.csv", 2, "prize", "lots", "races.csv, row 2, column 'prize': expected a number, got 'lots'"),
    (
        "races.csv",
        2,
        "section_distances_m",
        "400,400,400",
        "races.csv, row 2, column 'section_distances_m': expected space-separated integers, got '400,400,400'",
    ),
    ("races.csv", 3, "race_id", "T-1", "races.csv, row 3, column 'race_id': duplicate race_id 'T-1' (first at row 2)"),
    ("races.csv", 1, "country", None, "races.csv, row 1, column 'country': required column is missing"),
    ("runners.csv", 5, "race_id", "T-9", "runners.csv, row 5, column 'race_id': race 'T-9' is not in races.csv"),
    ("runners.csv", 2, "horse_id", "", "runners.csv, row 2, column 'horse_id': a value is required"),
    (
        "runners.csv",
        3,
        "horse_id",
        "H1",
        "runners.csv, row 3, column 'horse_id': duplicate race_id 'T-1', horse_id 'H1' (first at row 2)",
    ),
    (
        "runners.csv",
        2,
        "status",
        "ran",
        "runners.csv, row 2, column 'status': expected one of finished, withdrawn, did_not_finish, disqualified, "
        "got 'ran'",
    ),
    ("runners.csv", 2, "sex", "X", "runners.csv, row 2, column 'sex': expected one of C, F, G, H, M, R, got 'X'"),
    ("runners.csv", 2, "draw", "3.5", "runners.csv, row 2, column 'draw': expected an integer, got '3.5'"),
    ("runners.csv", 2, "win_odds", "evens", "runners.csv, row 2, column 'win_odds': expected a number, got 'evens'"),
    (
        "runners.csv",
        4,
        "finish_position",
        "",
        "runners.csv, row 4, column 'finish_position': a finished runner needs a finish_position",
    ),
    (
        "runners.csv",
        2,
        "running_positions",
        "2 1 x",
        "runners.csv, row 2, column 'running_positions': expected space-separated integers, got '2 1 x'",
    ),
    (
        "runners.csv",
        2,
        "section_times_s",
        "24.1  23.0 23.0",
        "runners.csv, row 2, column 'section_times_s': expected space-separated numbers, got '24.1  23.0 23.0'",
    ),
    ("runners.csv", 1, "status", None, "runners.csv, row 1, column 'status': required column is missing"),
    (
        "horses.csv",
        3,
        "horse_id",
        "H1",
        "horses.csv, row 3, column 'horse_id': duplicate horse_id 'H1' (first at row 2)",
    ),
    (
        "horses.csv",
        2,
        "foaled_year",
        "2016.5",
        "horses.csv, row 2, column 'foaled_year': expected an integer, got '2016.5'",
    ),
    (
        "horses.csv",
        2,
        "sex",
        "Gelding",
        "horses.csv, row 2, column 'sex': expected one of C, F, G, H, M, R, got 'Gelding'",
    ),
]


@pytest.mark.parametrize(("file", "row", "column", "value", "message"), BAD_INPUT)
def test_each_error_names_file_row_and_column(
    racequant_dir: Path,
    memory_db: duckdb.DuckDBPyConnection,
    file: str,
    row: int,
    column: str,
    value: str | None,
    message: str,
) -> None:
    edit_csv(racequant_dir / file, row, column, value)

    with pytest.raises(ImportValidationError, match=re.escape(message)):
        _import(memory_db, racequant_dir)


def test_unknown_columns_are_ignored_with_a_warning(racequant_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    races = racequant_dir / "races.csv"
    lines = races.read_text().splitlines()
    races.write_text("\n".join([lines[0] + ",weather"] + [line + ",fine" for line in lines[1:]]) + "\n")

    parsed = parse(racequant_dir, "racequant")

    assert parsed.problems == []
    assert parsed.warnings == ["races.csv: unknown column 'weather' ignored"]
    assert "unknown column 'weather' ignored" in caplog.text
    assert "weather" not in parsed.races.columns


def test_parquet_input_equals_csv_input(racequant_dir: Path, tmp_path: Path) -> None:
    parquet_dir = tmp_path / "tiny-results-parquet"
    parquet_dir.mkdir()
    for name in ("races", "runners", "horses"):
        frame = pd.read_csv(racequant_dir / f"{name}.csv", dtype={"off_time": str})
        if name == "races":
            frame["date"] = pd.to_datetime(frame["date"]).dt.date  # a real date column
        frame.to_parquet(parquet_dir / f"{name}.parquet", index=False)

    from_csv = parse(racequant_dir, "racequant", source="tiny")
    from_parquet = parse(parquet_dir, "racequant", source="tiny")

    assert from_parquet.problems == []
    for table in ("races", "runners", "horses"):
        pd.testing.assert_frame_equal(getattr(from_parquet, table), getattr(from_csv, table))


def test_parquet_rows_are_numbered_like_csv_lines(racequant_dir: Path, tmp_path: Path) -> None:
    parquet_dir = write_results_folder(tmp_path / "pq", horses=None)
    for name in ("races", "runners"):
        pd.read_csv(parquet_dir / f"{name}.csv", dtype=str).to_parquet(parquet_dir / f"{name}.parquet", index=False)
        (parquet_dir / f"{name}.csv").unlink()
    frame = pd.read_parquet(parquet_dir / "runners.parquet")
    frame.loc[2, "draw"] = "two"
    frame.to_parquet(parquet_dir / "runners.parquet", index=False)

    parsed = parse(parquet_dir, "racequant")

    assert [str(p) for p in parsed.problems] == [
        "runners.parquet, row 4, column 'draw': expected an integer, got 'two'"
    ]


def test_skip_invalid_imports_valid_races_and_writes_rejects(invalid_racequant_dir: Path, tmp_path: Path) -> None:
    parsed = parse(invalid_racequant_dir, "racequant", skip_invalid=True)

    assert parsed.problems == []
    assert sorted(parsed.races["race_id"]) == ["T-1", "T-3"]
    assert "T-2" not in set(parsed.runners["race_id"])
    rejects_file = tmp_path / "out" / "rejects.csv"
    write_rejects(parsed, rejects_file)
    with rejects_file.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["file"], r["row"], r["race_id"]) for r in rows] == [
        ("races.csv", "3", "T-2"),
        ("runners.csv", "5", "T-2"),
        ("runners.csv", "6", "T-2"),
        ("runners.csv", "7", "T-2"),
    ]
    own = (
        "runners.csv, row 6, column 'status': "
        "expected one of finished, withdrawn, did_not_finish, disqualified, got 'ran'"
    )
    assert rows[2]["reason"] == own and rows[2]["column"] == "status"
    assert rows[0]["reason"] == f"race T-2 rejected: {own}"
    assert json.loads(rows[2]["raw"])["status"] == "ran"
    with connect(tmp_path / "w.duckdb") as conn:
        summary = load_results(conn, parsed, str(invalid_racequant_dir))
        info = db_info(conn)
    assert (info["races"], info["runners"]) == (2, 6)
    assert summary.rows_rejected == 4


def test_skip_invalid_rejects_runners_of_unknown_races_and_bad_horses(racequant_dir: Path) -> None:
    edit_csv(racequant_dir / "runners.csv", 10, "race_id", "T-9")
    edit_csv(racequant_dir / "horses.csv", 5, "foaled_year", "old")

    parsed = parse(racequant_dir, "racequant", skip_invalid=True)

    assert sorted(parsed.races["race_id"]) == ["T-1", "T-2", "T-3"]
    reasons = {(r["file"], r["row"]): r["reason"] for r in parsed.rejected_rows}
    assert reasons == {
        ("runners.csv", 10): "runners.csv, row 10, column 'race_id': race 'T-9' is not in races.csv",
        ("horses.csv", 5): "horses.csv, row 5, column 'foaled_year': expected an integer, got 'old'",
    }
    # the horse still runs, so it is kept as a stub without its pedigree
    assert parsed.horses.set_index("horse_id").loc["H4", "sire"] is pd.NA


def test_a_failing_import_leaves_every_table_unchanged(
    racequant_dir: Path, invalid_racequant_dir: Path, memory_db: duckdb.DuckDBPyConnection
) -> None:
    _import(memory_db, racequant_dir)
    before = _checksums(memory_db)

    with pytest.raises(ImportValidationError, match=re.escape("runners.csv, row 6, column 'status'")):
        _import(memory_db, invalid_racequant_dir)

    assert _checksums(memory_db) == before


def test_reimporting_the_same_files_changes_nothing(racequant_dir: Path, memory_db: duckdb.DuckDBPyConnection) -> None:
    _import(memory_db, racequant_dir)
    before = _checksums(memory_db, ("races", "runners", "horses"))

    _import(memory_db, racequant_dir)

    assert _checksums(memory_db, ("races", "runners", "horses")) == before


def test_an_incremental_import_adds_only_the_new_days(tmp_path: Path, memory_db: duckdb.DuckDBPyConnection) -> None:
    races = RACES_CSV.splitlines()
    runners = RUNNERS_CSV.splitlines()
    first_day = write_results_folder(
        tmp_path / "day1",
        races="\n".join(races[:3]) + "\n",
        runners="\n".join(line for line in runners if not line.startswith("T-3")) + "\n",
        horses=HORSES_CSV,
    )
    both_days = write_results_folder(tmp_path / "both")

    _import(memory_db, first_day, source="tiny")
    after_first = db_info(memory_db)
    _import(memory_db, both_days, source="tiny")
    after_both = db_info(memory_db)
    added = memory_db.execute("SELECT races_added, races_replaced FROM import_log ORDER BY import_id").fetchall()

    assert (after_first["races"], after_first["runners"]) == (2, 6)
    assert (after_both["races"], after_both["runners"], after_both["horses"]) == (3, 9, 4)
    assert added[-1][0] == 1


def test_a_missing_folder_or_races_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ImportValidationError, match="there is no such folder"):
        parse(tmp_path / "nowhere", "racequant")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImportValidationError, match=re.escape("there is no races.csv or races.parquet")):
        parse(tmp_path / "empty", "racequant")


def test_a_folder_can_be_copied_and_imported_under_its_new_name(racequant_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(racequant_dir, tmp_path / "renamed"))
    assert parse(copy, "racequant").source == "renamed"


@pytest.mark.realdata
def test_hkjc_2016_2021_imports_with_its_files_counts_and_pedigree(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "hkjc-2016-2021"
    parsed = parse(folder, "racequant")
    with connect(tmp_path / "real.duckdb") as conn:
        load_results(conn, parsed, str(folder))
        info = db_info(conn)
        with_sire = conn.execute("SELECT count(*) FROM horses WHERE sire IS NOT NULL").fetchone()[0]  # type: ignore[index]

    assert (info["races"], info["runners"], info["horses"]) == (4778, 59621, 3747)
    assert with_sire > 0.95 * 3747
