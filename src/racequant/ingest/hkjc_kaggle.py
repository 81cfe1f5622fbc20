"""Importer of the public "Horse Racing in HK" data set (``races.csv`` and ``runs.csv``, 1997-2005).

Every mapping decision is written up in docs/ingest.md; the short version sits beside each constant.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from racequant.errors import ImportValidationError, Problem
from racequant.ingest import validate as v
from racequant.ingest.schema import (
    HORSE_COLUMNS,
    RACE_COLUMNS,
    RUNNER_COLUMNS,
    ParsedResults,
    conform,
    empty_frame,
)
from racequant.ingest.validate import Column

logger = logging.getLogger(__name__)

FORMAT_NAME = "hkjc-kaggle"
PREFIX = "hkk-"

VENUES = {"ST": "Sha Tin", "HV": "Happy Valley"}
SURFACE_CODES = {"0": "turf", "1": "all_weather"}  # only Sha Tin has an all-weather track
# The data set's class codes, checked against horse_ratings ('G' = no rating band) and prize money:
# 1-5 are the handicap classes; 11/12/13 carry Group-race prizes (about 11.8 M, 3.4 M, 2.5 M HKD on
# average) -> G1/G2/G3; 6 is the newcomers' race at a fixed 750-800 k prize with no band -> Griffin;
# 0 are 12 unbanded, restricted races without a class (like the 4-year-old series, which the
# 2016-2021 data also leaves without a class) -> missing.
CLASS_CODES = {
    "1": "1",
    "2": "2",
    "3": "3",
    "4": "4",
    "5": "5",
    "6": "Griffin",
    "11": "G1",
    "12": "G2",
    "13": "G3",
    "0": None,
}
# horse_type holds the sex, except for a few colours written in the wrong column
SEX_WORDS = {"Gelding": "G", "Horse": "H", "Colt": "C", "Mare": "M", "Filly": "F", "Rig": "R"}
COLOUR_WORDS = {"Brown": "Brown", "Roan": "Roan", "Grey": "Grey"}
# HKJC three-letter country codes -> ISO 3166-1 alpha-2, as the 2016-2021 data writes them
COUNTRIES = {
    "AUS": "AU",
    "NZ": "NZ",
    "IRE": "IE",
    "GB": "GB",
    "USA": "US",
    "FR": "FR",
    "SAF": "ZA",
    "GER": "DE",
    "ARG": "AR",
    "JPN": "JP",
    "CAN": "CA",
    "ITY": "IT",
    "BRZ": "BR",
    "ZIM": "ZW",
    "SPA": "ES",
}
NO_GEAR = "--"
NO_RATING_BAND = "G"
# lengths_behind sentinels: 999 = beaten too far to be measured (a finish time still exists);
# negative values (-0.5, -0.25, -0.1) are impossible margins behind a winner -> both missing
MARGIN_UNMEASURED = 999.0

MAX_SECTIONS_RACE = 7
MAX_SECTIONS_RUN = 6
SECTION_M = 400

RACES = (
    Column("race_id", "int", required=True),
    Column("date", "date", required=True),
    Column("venue", required=True, vocabulary=tuple(VENUES)),
    Column("race_no", "int"),
    Column("config"),
    Column("surface", required=True, vocabulary=tuple(SURFACE_CODES)),
    Column("distance", "int", required=True),
    Column("going"),
    Column("horse_ratings"),
    Column("prize", "float"),
    Column("race_class", vocabulary=tuple(CLASS_CODES)),
    *(Column(f"sec_time{i}", "float") for i in range(1, MAX_SECTIONS_RACE + 1)),
)
RACES_UNUSED = (
    *(f"time{i}" for i in range(1, MAX_SECTIONS_RACE + 1)),
    *(f"place_combination{i}" for i in range(1, 5)),
    *(f"place_dividend{i}" for i in range(1, 5)),
    *(f"win_combination{i}" for i in range(1, 3)),
    *(f"win_dividend{i}" for i in range(1, 3)),
)
RUNS = (
    Column("race_id", "int", required=True),
    Column("horse_no", "int"),
    Column("horse_id", "int", required=True),
    Column("result", "int", required=True),
    Column("won", "float"),
    Column("lengths_behind", "float"),
    Column("horse_age", "int"),
    Column("horse_country"),
    Column("horse_type", vocabulary=tuple(SEX_WORDS) + tuple(COLOUR_WORDS)),
    Column("horse_rating", "float"),
    Column("horse_gear"),
    Column("declared_weight", "float"),
    Column("actual_weight", "float"),
    Column("draw", "int"),
    *(Column(f"position_sec{i}", "int") for i in range(1, MAX_SECTIONS_RUN + 1)),
    *(Column(f"behind_sec{i}", "float") for i in range(1, MAX_SECTIONS_RUN + 1)),
    *(Column(f"time{i}", "float") for i in range(1, MAX_SECTIONS_RUN + 1)),
    Column("finish_time", "float"),
    Column("win_odds", "float"),
    Column("place_odds", "float"),
    Column("trainer_id", "int"),
    Column("jockey_id", "int"),
)


def section_distances(distance_m: int) -> list[int]:
    """Hong Kong's timing sections: every 400 m from the finish backwards, the first takes the remainder.

    A remainder under 200 m is timed with the first 400 m: 1000 m -> 200 400 400; 1200 m -> 400 400 400;
    1650 m -> 450 400 400 400.
    """
    full, rest = divmod(distance_m, SECTION_M)
    if full == 0:
        return [distance_m]
    if rest == 0:
        return [SECTION_M] * full
    if rest < SECTION_M // 2:
        return [SECTION_M + rest] + [SECTION_M] * (full - 1)
    return [rest] + [SECTION_M] * full


def going_word(raw: pd.Series) -> pd.Series:
    """'GOOD TO FIRM' -> 'GOOD_TO_FIRM': the canonical words are the source's, upper case, joined by '_'."""
    return raw.str.strip().str.upper().str.replace(r"\s+", "_", regex=True)


def _ids(values: pd.Series, prefix: str) -> pd.Series:
    """Integer keys as prefixed text (validated as integers; '1.0' -> '1')."""
    numbers = v.as_int(values)
    return (prefix + numbers.astype("string")).astype("string")


def _matrix(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    return np.column_stack([v.numbers(frame[n]) for n in names])


def _races(races: pd.DataFrame, source: str, warnings: list[str]) -> pd.DataFrame:
    out = pd.DataFrame(index=races.index)
    out["race_id"] = _ids(races["race_id"], PREFIX)
    out["source"] = source
    out["date"] = v.as_date(races["date"])
    out["track"] = races["venue"].map(VENUES).astype("string")
    out["country"] = "HK"
    out["race_no"] = v.as_int(races["race_no"]) if "race_no" in races else pd.NA
    out["distance_m"] = v.as_int(races["distance"])
    out["surface"] = races["surface"].map(SURFACE_CODES).astype("string")
    if "going" in races:
        raw = v.as_string(races["going"])
        out["going_raw"] = raw
        out["going"] = going_word(raw)
    if "race_class" in races:
        out["race_class"] = races["race_class"].map(CLASS_CODES).astype("string")
    if "horse_ratings" in races:
        band = v.as_string(races["horse_ratings"])
        out["rating_band"] = band.where(band != NO_RATING_BAND)
    if "prize" in races:
        out["prize"] = v.as_float(races["prize"])
    if "config" in races:
        out["course_config"] = v.as_string(races["config"])
    distances = out["distance_m"].fillna(0).astype(int).to_numpy()
    expected = [section_distances(int(d)) if d > 0 else None for d in distances]
    out["section_distances_m"] = expected
    timed = [c for c in (f"sec_time{i}" for i in range(1, MAX_SECTIONS_RACE + 1)) if c in races]
    if timed:
        counts = (races[timed] != "").sum(axis=1).to_numpy()
        lengths = np.array([len(e) if e else 0 for e in expected])
        odd = (counts > 0) & (counts != lengths)
        if odd.any():
            message = (
                f"races.csv: {int(odd.sum())} races have a number of sectional times that does not match the "
                f"400 m sections of their distance (first at row {int(races[v.ROW].to_numpy()[odd][0])})"
            )
            logger.warning(message)
            warnings.append(message)
    return out


def _runners(runs: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=runs.index)
    out["race_id"] = _ids(runs["race_id"], PREFIX)
    out["horse_id"] = _ids(runs["horse_id"], PREFIX + "h")
    out["saddle_no"] = v.as_int(runs["horse_no"]) if "horse_no" in runs else pd.NA
    out["draw"] = v.as_int(runs["draw"]) if "draw" in runs else pd.NA
    if "jockey_id" in runs:
        out["jockey_id"] = _ids(runs["jockey_id"], PREFIX + "j")
    if "trainer_id" in runs:
        out["trainer_id"] = _ids(runs["trainer_id"], PREFIX + "t")
    if "horse_age" in runs:
        out["age"] = v.as_int(runs["horse_age"])
    if "horse_type" in runs:
        out["sex"] = runs["horse_type"].map(SEX_WORDS).astype("string")
    if "actual_weight" in runs:
        out["carried_weight_lbs"] = v.as_float(runs["actual_weight"])
    if "declared_weight" in runs:
        out["horse_weight_lbs"] = v.as_float(runs["declared_weight"])
    if "horse_rating" in runs:
        out["rating"] = v.as_float(runs["horse_rating"])  # 60 is the data set's default for two thirds of runs
    if "horse_gear" in runs:
        gear = v.as_string(runs["horse_gear"])
        out["gear"] = gear.where(gear != NO_GEAR)
    # every run in the data set has a placing (1-14) and a finish time: all finished
    out["status"] = "finished"
    out["finish_position"] = v.as_int(runs["result"])
    if "lengths_behind" in runs:
        margin = v.as_float(runs["lengths_behind"])
        out["margin_lengths"] = margin.where((margin >= 0) & (margin != MARGIN_UNMEASURED))
    if "finish_time" in runs:
        out["finish_time_s"] = v.as_float(runs["finish_time"])
    positions = [c for c in (f"position_sec{i}" for i in range(1, MAX_SECTIONS_RUN + 1)) if c in runs]
    if positions:
        out["running_positions"] = v.lists_from_columns(_matrix(runs, positions), pa.int64())
    times = [c for c in (f"time{i}" for i in range(1, MAX_SECTIONS_RUN + 1)) if c in runs]
    if times:
        out["section_times_s"] = v.lists_from_columns(_matrix(runs, times), pa.float64())
    for name in ("win_odds", "place_odds"):
        if name in runs:
            out[name] = v.as_float(runs[name])
    return out


def _horses(runs: pd.DataFrame, runners: pd.DataFrame, dates: pd.Series) -> pd.DataFrame:
    """One row per horse with its latest known country, sex and colour (foaled_year is not derivable)."""
    frame = pd.DataFrame(
        {
            "horse_id": runners["horse_id"].to_numpy(),
            "sex": runners["sex"].to_numpy() if "sex" in runners else None,
            "order": dates.to_numpy(),
        }
    )
    country = v.as_string(runs["horse_country"]) if "horse_country" in runs else pd.Series(pd.NA, index=runs.index)
    frame["country_of_birth"] = country.map(lambda c: COUNTRIES.get(c, c), na_action="ignore").to_numpy()
    colour = runs["horse_type"].map(COLOUR_WORDS) if "horse_type" in runs else pd.Series(pd.NA, index=runs.index)
    frame["colour"] = colour.to_numpy()
    frame = frame.sort_values("order", kind="stable")
    latest = frame.groupby("horse_id", sort=False)[["country_of_birth", "sex", "colour"]].last().reset_index()
    return latest


def parse_hkjc_kaggle(path: Path, *, source: str | None = None, skip_invalid: bool = False) -> ParsedResults:
    """Parse ``races.csv`` and ``runs.csv`` of the public HK data set into canonical rows."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    races_path, runs_path = folder / "races.csv", folder / "runs.csv"
    missing = [p for p in (races_path, runs_path) if not p.is_file()]
    if missing:
        raise ImportValidationError([Problem(str(p), None, None, "the file does not exist") for p in missing])
    races, unreadable = v.read_table(races_path)
    runs, more = v.read_table(runs_path)
    v.fail_if_unreadable(unreadable + more)
    assert races is not None and runs is not None

    problems: list[Problem] = []
    warnings: list[str] = []
    for frame, columns, file, unused in ((races, RACES, "races.csv", RACES_UNUSED), (runs, RUNS, "runs.csv", ())):
        header_problems, header_warnings = v.check_header(frame, columns, file, also_known=unused)
        problems += header_problems
        warnings += header_warnings
        problems += v.check_values(frame, columns, file)
    problems += v.check_unique(races, ["race_id"], "races.csv")
    problems += v.check_unique(runs, ["race_id", "horse_id"], "runs.csv")
    if "race_id" in races.columns:
        problems += v.check_references(runs, races["race_id"], "runs.csv", "races.csv")
    problems = v.sort_problems(problems, ["races.csv", "runs.csv"])

    rejected: list[dict[str, object]] = []
    if problems:
        partition = v.partition_races(races, runs, problems, races_file="races.csv", runners_file="runs.csv")
        races, runs = races[partition.races_ok], runs[partition.runners_ok]
        rejected = partition.rejected_rows

    source = source or folder.name
    if any(p.row in (None, 1) for p in problems):
        # a required column is missing: every row is rejected and nothing can be converted
        race_rows, runner_rows, horse_rows = (empty_frame(c) for c in (RACE_COLUMNS, RUNNER_COLUMNS, HORSE_COLUMNS))
    else:
        race_rows = _races(races, source, warnings)
        runner_rows = _runners(runs)
        date_of_race = pd.Series(race_rows["date"].to_numpy(), index=race_rows["race_id"].to_numpy())
        run_dates = runner_rows["race_id"].map(date_of_race)
        horse_rows = _horses(runs, runner_rows, run_dates)

    parsed = ParsedResults(
        source=source,
        format=FORMAT_NAME,
        races=conform(race_rows, RACE_COLUMNS),
        runners=conform(runner_rows, RUNNER_COLUMNS),
        horses=conform(horse_rows, HORSE_COLUMNS),
        problems=[] if skip_invalid else problems,
        warnings=warnings,
        rejected_rows=rejected if skip_invalid else [],
        files=[str(races_path), str(runs_path)],
    )
    if skip_invalid and rejected:
        logger.warning("Skipped %d invalid rows of %s (%d problems)", len(rejected), folder, len(problems))
    logger.info(
        "Parsed %s: %d races, %d runners, %d horses", folder, len(parsed.races), len(parsed.runners), len(parsed.horses)
    )
    return parsed
