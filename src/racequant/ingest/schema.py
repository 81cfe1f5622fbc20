"""The canonical rows every importer produces: one vocabulary for every source.

An importer parses its files into three pandas frames with exactly these columns (in this order)
and these dtypes, plus a list of problems; ``racequant.warehouse.load`` stores them in one
transaction. Lists (section distances, section times, running positions) are Python lists of
numbers (or None) in object columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from racequant.errors import Problem

SURFACES = ("turf", "dirt", "all_weather")
STATUSES = ("finished", "withdrawn", "did_not_finish", "disqualified")
SEXES = ("C", "F", "G", "H", "M", "R")
GOINGS = (
    "FIRM",
    "GOOD_TO_FIRM",
    "GOOD",
    "GOOD_TO_YIELDING",
    "GOOD_TO_SOFT",
    "YIELDING",
    "YIELDING_TO_SOFT",
    "SOFT",
    "HEAVY",
    "FAST",
    "WET_FAST",
    "WET_SLOW",
    "STANDARD",
    "STANDARD_TO_SLOW",
    "SLOW",
)
RACE_CLASSES = ("1", "2", "3", "4", "5", "6", "7", "G1", "G2", "G3", "Listed", "Griffin")

# column -> pandas dtype of the canonical frames
RACE_COLUMNS: dict[str, str] = {
    "race_id": "string",
    "source": "string",
    "date": "datetime64[ns]",
    "track": "string",
    "country": "string",
    "race_no": "Int64",
    "off_time": "string",  # HH:MM local, or missing
    "distance_m": "Int64",
    "surface": "string",
    "going": "string",
    "going_raw": "string",
    "race_class": "string",
    "rating_band": "string",
    "prize": "Float64",
    "course_config": "string",
    "section_distances_m": "object",  # list[int] first to last, or None
}

RUNNER_COLUMNS: dict[str, str] = {
    "race_id": "string",
    "horse_id": "string",
    "horse_name": "string",
    "saddle_no": "Int64",
    "draw": "Int64",
    "jockey_id": "string",
    "trainer_id": "string",
    "age": "Int64",
    "sex": "string",
    "carried_weight_lbs": "Float64",
    "horse_weight_lbs": "Float64",
    "rating": "Float64",
    "gear": "string",
    "status": "string",
    "finish_position": "Int64",
    "margin_lengths": "Float64",
    "finish_time_s": "Float64",
    "running_positions": "object",  # list[int|None] first to last, or None
    "section_times_s": "object",  # list[float|None] first to last, or None
    "win_odds": "Float64",
    "place_odds": "Float64",
}

HORSE_COLUMNS: dict[str, str] = {
    "horse_id": "string",
    "horse_name": "string",
    "sire": "string",
    "dam": "string",
    "damsire": "string",
    "country_of_birth": "string",
    "sex": "string",
    "colour": "string",
    "foaled_year": "Int64",
}


def empty_frame(columns: dict[str, str]) -> pd.DataFrame:
    """An empty frame with the canonical columns and dtypes."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})


def conform(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Select and order the canonical columns, casting each to its canonical dtype."""
    out = pd.DataFrame(index=frame.index)
    for name, dtype in columns.items():
        series = frame[name] if name in frame.columns else pd.Series(None, index=frame.index)
        if dtype == "datetime64[ns]":
            out[name] = pd.to_datetime(series).astype("datetime64[ns]")
        elif dtype == "object":
            out[name] = series.astype("object")
        else:
            out[name] = series.astype(dtype)
    return out.reset_index(drop=True)


@dataclass
class ParsedResults:
    """What an importer hands to the warehouse: canonical frames, the problems found, and rejects.

    ``problems`` are errors: the import fails unless the caller asked to skip invalid races, in
    which case the frames hold only the valid races and ``rejected_rows`` the raw rows left out.
    """

    source: str
    format: str
    races: pd.DataFrame
    runners: pd.DataFrame
    horses: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rejected_rows: list[dict[str, object]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
