"""Importing the public "Horse Racing in HK" data set: mapping to canonical rows, validation, the full files."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from racequant.errors import ImportValidationError
from racequant.ingest import parse
from racequant.ingest.hkjc_kaggle import section_distances
from racequant.ingest.schema import GOINGS, RACE_CLASSES, RACE_COLUMNS, RUNNER_COLUMNS, SEXES, STATUSES, SURFACES
from racequant.warehouse import connect, migrate
from racequant.warehouse.load import load_results
from racequant.warehouse.queries import db_info, table_checksum

RACES_HEADER = (
    "race_id,date,venue,race_no,config,surface,distance,going,horse_ratings,prize,race_class,"
    + ",".join(f"sec_time{i}" for i in range(1, 8))
    + ","
    + ",".join(f"time{i}" for i in range(1, 8))
    + ",place_combination1,place_combination2,place_combination3,place_combination4,"
    "place_dividend1,place_dividend2,place_dividend3,place_dividend4,"
    "win_combination1,win_dividend1,win_combination2,win_dividend2"
)
RUNS_HEADER = (
    "race_id,horse_no,horse_id,result,won,lengths_behind,horse_age,horse_country,horse_type,horse_rating,"
    "horse_gear,declared_weight,actual_weight,draw,"
    + ",".join(f"position_sec{i}" for i in range(1, 7))
    + ","
    + ",".join(f"behind_sec{i}" for i in range(1, 7))
    + ","
    + ",".join(f"time{i}" for i in range(1, 7))
    + ",finish_time,win_odds,place_odds,trainer_id,jockey_id"
)


def _race(race_id: int, date: str, venue: str, surface: int, distance: int, going: str, ratings: str, cls: int) -> str:
    sections = {1000: 3, 1650: 4, 1200: 3}[distance]
    secs = ["24.0"] * sections + [""] * (7 - sections)
    return (
        f"{race_id},{date},{venue},1,A,{surface},{distance},{going},{ratings},1000000.0,{cls},"
        + ",".join(secs)
        + ","
        + ",".join(secs)
        + ",1,2,3.0,,10.0,20.0,30.0,,1,25.0,,"
    )


def _run(
    race_id: int, no: int, horse: int, result: int, behind: str, country: str, kind: str, gear: str, n: int
) -> str:
    positions = [str(result)] * n + [""] * (6 - n)
    times = ["24.0"] * n + [""] * (6 - n)
    return (
        f"{race_id},{no},{horse},{result},{1.0 if result == 1 else 0.0},{behind},3,{country},{kind},60,{gear},"
        f"1050.0,126,{no},"
        + ",".join(positions)
        + ","
        + ",".join(["1.0"] * n + [""] * (6 - n))
        + ","
        + ",".join(times)
        + f",{24.0 * n},5.5,,{100 + no},{200 + no}"
    )


RACES = [
    _race(0, "1997-06-02", "ST", 1, 1650, "WET FAST", "G", 11),
    _race(1, "1997-06-02", "ST", 0, 1200, "GOOD TO FIRM", "40-15", 5),
    _race(2, "1997-06-04", "HV", 0, 1000, "GOOD", "G", 6),
    _race(3, "1997-06-04", "HV", 0, 1000, "GOOD", "G", 0),  # a race without runs
]
RUNS = [
    _run(0, 1, 10, 1, "0.0", "AUS", "Gelding", "--", 4),
    _run(0, 2, 11, 1, "0.0", "IRE", "Brown", "B", 4),  # dead heat; a colour in the sex column
    _run(0, 3, 12, 3, "-0.5", "NZ", "Colt", "TT/B", 4),
    _run(1, 1, 10, 2, "1.25", "AUS", "Gelding", "--", 3),
    _run(1, 2, 13, 1, "0.0", "SAF", "Mare", "--", 3),
    _run(1, 3, 12, 3, "999.0", "NZ", "Gelding", "--", 3),
    _run(2, 1, 14, 1, "0.0", "GER", "Filly", "--", 3),
    _run(2, 2, 15, 2, "0.75", "USA", "Rig", "--", 3),
]


@pytest.fixture
def kaggle_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "hk-mini"
    folder.mkdir()
    (folder / "races.csv").write_text("\n".join([RACES_HEADER, *RACES]) + "\n")
    (folder / "runs.csv").write_text("\n".join([RUNS_HEADER, *RUNS]) + "\n")
    return folder


@pytest.mark.parametrize(
    ("distance", "sections"),
    [
        (1000, [200, 400, 400]),
        (1200, [400, 400, 400]),
        (1400, [200, 400, 400, 400]),
        (1650, [450, 400, 400, 400]),
        (1800, [200, 400, 400, 400, 400]),
        (2400, [400, 400, 400, 400, 400, 400]),
    ],
)
def test_sections_are_timed_every_400_m_from_the_finish(distance: int, sections: list[int]) -> None:
    assert section_distances(distance) == sections
    assert sum(sections) == distance


def test_races_map_to_the_canonical_vocabulary(kaggle_dir: Path) -> None:
    races = parse(kaggle_dir, "hkjc-kaggle").races.set_index("race_id")

    assert list(races.index) == ["hkk-0", "hkk-1", "hkk-2", "hkk-3"]
    assert races["track"].tolist() == ["Sha Tin", "Sha Tin", "Happy Valley", "Happy Valley"]
    assert races["surface"].tolist() == ["all_weather", "turf", "turf", "turf"]
    assert races["country"].unique().tolist() == ["HK"]
    assert races.loc["hkk-0", "going"] == "WET_FAST" and races.loc["hkk-0", "going_raw"] == "WET FAST"
    assert races["race_class"].tolist()[:3] == ["G1", "5", "Griffin"] and pd.isna(races.loc["hkk-3", "race_class"])
    assert pd.isna(races.loc["hkk-0", "rating_band"]) and races.loc["hkk-1", "rating_band"] == "40-15"
    assert races.loc["hkk-0", "section_distances_m"] == [450, 400, 400, 400]
    assert races.loc["hkk-0", "course_config"] == "A"
    assert races["source"].unique().tolist() == ["hk-mini"]


def test_runners_map_ids_sentinels_dead_heats_and_sex(kaggle_dir: Path) -> None:
    runners = parse(kaggle_dir, "hkjc-kaggle").runners

    first = runners.iloc[0]
    assert (first["horse_id"], first["jockey_id"], first["trainer_id"]) == ("hkk-h10", "hkk-j201", "hkk-t101")
    assert (first["saddle_no"], first["draw"], first["carried_weight_lbs"], first["horse_weight_lbs"]) == (
        1,
        1,
        126.0,
        1050.0,
    )
    assert first["running_positions"] == [1, 1, 1, 1]
    assert first["section_times_s"] == [24.0, 24.0, 24.0, 24.0]
    assert pd.isna(first["gear"]) and runners.iloc[2]["gear"] == "TT/B"
    assert runners[runners["race_id"] == "hkk-0"]["finish_position"].tolist() == [1, 1, 3]
    assert pd.isna(runners.iloc[2]["margin_lengths"]) and pd.isna(runners.iloc[5]["margin_lengths"])  # -0.5, 999
    assert runners.iloc[3]["margin_lengths"] == 1.25
    assert runners.iloc[0]["sex"] == "G" and pd.isna(runners.iloc[1]["sex"]) and runners.iloc[2]["sex"] == "C"
    assert set(runners["status"]) == {"finished"}
    assert runners["win_odds"].iloc[0] == 5.5 and pd.isna(runners["place_odds"].iloc[0])


def test_horses_take_their_latest_country_sex_and_misplaced_colour(kaggle_dir: Path) -> None:
    horses = parse(kaggle_dir, "hkjc-kaggle").horses.set_index("horse_id")

    assert len(horses) == 6
    assert horses.loc["hkk-h12", "sex"] == "G"  # a colt in June 2, gelded by its next run
    assert horses.loc["hkk-h11", "colour"] == "Brown" and pd.isna(horses.loc["hkk-h11", "sex"])
    assert horses["country_of_birth"].tolist() == ["AU", "IE", "NZ", "ZA", "DE", "US"]
    assert horses["foaled_year"].isna().all() and horses["sire"].isna().all()


def test_both_sources_produce_the_same_vocabulary(kaggle_dir: Path, racequant_dir: Path) -> None:
    hk = parse(kaggle_dir, "hkjc-kaggle")
    rq = parse(racequant_dir, "racequant")

    for parsed in (hk, rq):
        assert list(parsed.races.columns) == list(RACE_COLUMNS)
        assert list(parsed.runners.columns) == list(RUNNER_COLUMNS)
        assert set(parsed.races["surface"]) <= set(SURFACES)
        assert set(parsed.races["going"].dropna()) <= set(GOINGS)
        assert set(parsed.races["race_class"].dropna()) <= set(RACE_CLASSES)
        assert set(parsed.runners["status"]) <= set(STATUSES)
        assert set(parsed.runners["sex"].dropna()) <= set(SEXES)
        assert set(parsed.horses["country_of_birth"].dropna()) <= {"AU", "NZ", "IE", "GB", "ZA", "DE", "US"}
    assert (hk.races.dtypes == rq.races.dtypes).all()
    assert (hk.runners.dtypes == rq.runners.dtypes).all()
    assert (hk.horses.dtypes == rq.horses.dtypes).all()


def _edit(path: Path, row: int, column: str, value: str) -> None:
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[row - 1].split(",")
    cells[header.index(column)] = value
    lines[row - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("file", "row", "column", "value", "message"),
    [
        ("races.csv", 3, "venue", "SH", "races.csv, row 3, column 'venue': expected one of ST, HV, got 'SH'"),
        ("races.csv", 2, "surface", "2", "races.csv, row 2, column 'surface': expected one of 0, 1, got '2'"),
        (
            "races.csv",
            2,
            "race_class",
            "7",
            "races.csv, row 2, column 'race_class': expected one of 1, 2, 3, 4, 5, 6, 11, 12, 13, 0, got '7'",
        ),
        (
            "races.csv",
            4,
            "date",
            "04/06/1997",
            "races.csv, row 4, column 'date': expected a date YYYY-MM-DD, got '04/06/1997'",
        ),
        ("runs.csv", 3, "result", "DH", "runs.csv, row 3, column 'result': expected an integer, got 'DH'"),
        ("runs.csv", 9, "race_id", "9", "runs.csv, row 9, column 'race_id': race '9' is not in races.csv"),
        (
            "runs.csv",
            3,
            "horse_id",
            "10",
            "runs.csv, row 3, column 'horse_id': duplicate race_id '0', horse_id '10' (first at row 2)",
        ),
        (
            "runs.csv",
            2,
            "horse_type",
            "Bay",
            "runs.csv, row 2, column 'horse_type': expected one of Gelding, Horse, Colt, Mare, Filly, Rig, "
            "Brown, Roan, "
            "Grey, got 'Bay'",
        ),
    ],
)
def test_each_error_names_file_row_and_column(
    kaggle_dir: Path, file: str, row: int, column: str, value: str, message: str
) -> None:
    _edit(kaggle_dir / file, row, column, value)
    conn = duckdb.connect(":memory:")
    migrate(conn)

    with pytest.raises(ImportValidationError, match=re.escape(message)):
        load_results(conn, parse(kaggle_dir, "hkjc-kaggle"), str(kaggle_dir))
    assert table_checksum(conn, "races") == (0, 0)


def test_skip_invalid_drops_the_whole_race(kaggle_dir: Path) -> None:
    _edit(kaggle_dir / "runs.csv", 3, "result", "DH")

    parsed = parse(kaggle_dir, "hkjc-kaggle", skip_invalid=True)

    assert parsed.problems == []
    assert "hkk-0" not in set(parsed.races["race_id"]) and "hkk-0" not in set(parsed.runners["race_id"])
    assert [(r["file"], r["row"]) for r in parsed.rejected_rows] == [
        ("races.csv", 2),
        ("runs.csv", 2),
        ("runs.csv", 3),
        ("runs.csv", 4),
    ]
    assert parsed.rejected_rows[1]["reason"] == (
        "race 0 rejected: runs.csv, row 3, column 'result': expected an integer, got 'DH'"
    )


@pytest.mark.realdata
def test_the_full_1997_2005_files_import_every_race_and_run(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "hkjc-1997-2005"
    parsed = parse(folder, "hkjc-kaggle")
    with connect(tmp_path / "hk.duckdb") as conn:
        load_results(conn, parsed, str(folder))
        info = db_info(conn)
        dead_heat_races = conn.execute(
            "SELECT count(*) FROM (SELECT race_id FROM runners WHERE finish_position = 1 "
            "GROUP BY race_id HAVING count(*) > 1)"
        ).fetchone()[0]  # type: ignore[index]

    assert parsed.problems == [] and parsed.warnings == []
    assert (info["races"], info["runners"]) == (6349, 79447)
    assert dead_heat_races == 12
    assert set(parsed.races["race_class"].dropna()) == {"1", "2", "3", "4", "5", "G1", "G2", "G3", "Griffin"}
