"""Shared fixtures: tiny result folders in the racequant format, the real data when present."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

RACES_CSV = """\
race_id,date,track,country,race_no,off_time,distance_m,surface,going,going_raw,race_class,rating_band,prize,course_config,section_distances_m
T-1,2020-01-01,Sha Tin,HK,1,13:00,1200,turf,GOOD,Good,4,60-40,1000000,A,400 400 400
T-2,2020-01-01,Sha Tin,HK,2,13:30,1650,all_weather,WET_FAST,Wet Fast,3,80-60,1200000,,450 400 400 400
T-3,2020-01-08,Happy Valley,HK,1,19:15,1000,turf,GOOD_TO_FIRM,,G3,,3000000,C+3,200 400 400
"""
RUNNERS_CSV = """\
race_id,horse_id,horse_name,saddle_no,draw,jockey_id,trainer_id,age,sex,carried_weight_lbs,horse_weight_lbs,rating,gear,status,finish_position,margin_lengths,finish_time_s,running_positions,section_times_s,win_odds,place_odds
T-1,H1,Alpha,1,3,J1,TR1,4,G,133,1050,60,B,finished,1,0,70.1,2 1 1,24.1 23.0 23.0,2.5,1.3
T-1,H2,Bravo,2,1,J2,TR2,5,G,128,1100,55,,finished,2,1.25,70.3,1 2 2,24.0 23.2 23.1,3.1,1.5
T-1,H3,Charlie,3,2,J3,TR1,3,C,120,980,52,TT/B,finished,3,4.5,70.8,3 3 3,24.3 23.3 23.2,6.0,
T-2,H4,Delta,1,4,J1,TR2,6,M,131,1020,78,,finished,1,0,99.5,1 1 1 1,28.0 24.0 23.8 23.7,4.0,1.6
T-2,H1,Alpha,2,2,J2,TR1,4,G,126,1048,62,B,finished,1,0,99.5,3 2 2 1,28.2 23.9 23.7 23.7,3.5,1.5
T-2,H2,Bravo,3,1,J3,TR2,5,G,120,1102,57,,finished,3,2,99.8,2 3 3 3,28.1 24.1 23.8 23.8,5.0,
T-3,H3,Charlie,1,1,J1,TR1,3,C,133,985,55,TT/B,finished,1,0,57.2,1 1 1,12.1 22.4 22.7,1.9,1.1
T-3,H2,Bravo,2,2,J2,TR2,5,G,128,1099,58,,withdrawn,,,,,,,
T-3,H4,Delta,3,3,J3,TR2,6,M,125,1019,80,,finished,2,0.5,57.3,2 2 2,12.2 22.4 22.7,3.0,1.4
"""
HORSES_CSV = """\
horse_id,horse_name,sire,dam,damsire,country_of_birth,sex,colour,foaled_year
H1,Alpha,Sire A,Dam A,Damsire A,AU,G,Bay,2016
H2,Bravo,Sire B,Dam B,Damsire B,NZ,G,Brown,2015
H3,Charlie,Sire A,Dam C,Damsire C,IE,C,Chestnut,2017
H4,Delta,Sire D,Dam D,,GB,M,Grey,2014
"""


def write_results_folder(
    folder: Path, races: str = RACES_CSV, runners: str = RUNNERS_CSV, horses: str | None = HORSES_CSV
) -> Path:
    """Write a racequant-format folder from CSV texts (``horses=None`` leaves horses.csv out)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "races.csv").write_text(races, encoding="utf-8")
    (folder / "runners.csv").write_text(runners, encoding="utf-8")
    if horses is not None:
        (folder / "horses.csv").write_text(horses, encoding="utf-8")
    return folder


def edit_csv(path: Path, row: int, column: str, value: str | None) -> None:
    """Set one cell (``row`` is the line number, header = 1); ``value=None`` drops the whole column."""
    with path.open(newline="", encoding="utf-8") as handle:
        records = list(csv.reader(handle))
    header = records[0]
    at = header.index(column)
    if value is None:
        records = [r[:at] + r[at + 1 :] for r in records]
    else:
        records[row - 1][at] = value
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(records)


@pytest.fixture
def racequant_dir(tmp_path: Path) -> Path:
    """A tiny valid racequant-format folder: 3 races on 2 days, 9 runners (a dead heat, a withdrawal), 4 horses."""
    return write_results_folder(tmp_path / "tiny-results")


@pytest.fixture
def invalid_racequant_dir(tmp_path: Path) -> Path:
    """The tiny folder with race T-2 broken by one runner's bad status (row 6 of runners.csv)."""
    folder = write_results_folder(tmp_path / "tiny-invalid")
    edit_csv(folder / "runners.csv", 6, "status", "ran")
    return folder


@pytest.fixture
def shared_data() -> Path:
    """The real data beside the project; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA
