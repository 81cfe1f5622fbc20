"""Importer of the racequant results format (FORMAT.md): races, runners and optional horses, CSV or Parquet."""

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
    RACE_CLASSES,
    RACE_COLUMNS,
    RUNNER_COLUMNS,
    SEXES,
    STATUSES,
    SURFACES,
    ParsedResults,
    conform,
    empty_frame,
)
from racequant.ingest.validate import Column

logger = logging.getLogger(__name__)

FORMAT_NAME = "racequant"

RACES = (
    Column("race_id", required=True),
    Column("date", "date", required=True),
    Column("track", required=True),
    Column("country", required=True),
    Column("race_no", "int"),
    Column("off_time", "time"),
    Column("distance_m", "int", required=True),
    Column("surface", required=True, vocabulary=SURFACES),
    Column("going", "upper_word"),
    Column("going_raw"),
    Column("race_class", vocabulary=RACE_CLASSES),
    Column("rating_band"),
    Column("prize", "float"),
    Column("course_config"),
    Column("section_distances_m", "int_list"),
)
RUNNERS = (
    Column("race_id", required=True),
    Column("horse_id", required=True),
    Column("horse_name"),
    Column("saddle_no", "int"),
    Column("draw", "int"),
    Column("jockey_id"),
    Column("trainer_id"),
    Column("age", "int"),
    Column("sex", vocabulary=SEXES),
    Column("carried_weight_lbs", "float"),
    Column("horse_weight_lbs", "float"),
    Column("rating", "float"),
    Column("gear"),
    Column("status", required=True, vocabulary=STATUSES),
    Column("finish_position", "int"),
    Column("margin_lengths", "float"),
    Column("finish_time_s", "float"),
    Column("running_positions", "int_list"),
    Column("section_times_s", "float_list"),
    Column("win_odds", "float"),
    Column("place_odds", "float"),
)
HORSES = (
    Column("horse_id", required=True),
    Column("horse_name"),
    Column("sire"),
    Column("dam"),
    Column("damsire"),
    Column("country_of_birth"),
    Column("sex", vocabulary=SEXES),
    Column("colour"),
    Column("foaled_year", "int"),
)

_CONVERTERS = {
    "string": v.as_string,
    "upper_word": v.as_string,
    "time": v.as_string,
    "int": v.as_int,
    "float": v.as_float,
    "date": v.as_date,
}


def _find(folder: Path, stem: str, *, required: bool) -> Path | None:
    csv_file, parquet_file = folder / f"{stem}.csv", folder / f"{stem}.parquet"
    if csv_file.exists() and parquet_file.exists():
        raise ImportValidationError(
            [Problem(str(folder), None, None, f"both {stem}.csv and {stem}.parquet are present; keep one")]
        )
    if csv_file.exists():
        return csv_file
    if parquet_file.exists():
        return parquet_file
    if required:
        raise ImportValidationError([Problem(str(folder), None, None, f"there is no {stem}.csv or {stem}.parquet")])
    return None


def _convert(frame: pd.DataFrame, columns: tuple[Column, ...]) -> pd.DataFrame:
    """The validated text columns as typed columns (absent optional columns are left for ``conform``)."""
    out = pd.DataFrame(index=frame.index)
    for column in columns:
        if column.name not in frame.columns:
            continue
        values = frame[column.name]
        if column.kind == "int_list":
            out[column.name] = v.as_lists(values, pa.int64())
        elif column.kind == "float_list":
            out[column.name] = v.as_lists(values, pa.float64())
        else:
            out[column.name] = _CONVERTERS[column.kind](values)
    return out


def _horses_from_runners(runners: pd.DataFrame) -> pd.DataFrame:
    """One row per horse seen in the runners, with its latest known name and sex (input order)."""
    if runners.empty:
        return empty_frame(HORSE_COLUMNS)
    latest = runners[["horse_id", "horse_name", "sex"]].groupby("horse_id", sort=False).last().reset_index()
    return latest


def parse_results_format(path: Path, *, source: str | None = None, skip_invalid: bool = False) -> ParsedResults:
    """Parse a folder holding races, runners and (optionally) horses in the racequant format."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise ImportValidationError([Problem(str(folder), None, None, "there is no such folder")])
    races_path = _find(folder, "races", required=True)
    runners_path = _find(folder, "runners", required=True)
    horses_path = _find(folder, "horses", required=False)
    assert races_path is not None and runners_path is not None
    paths = [p for p in (races_path, runners_path, horses_path) if p is not None]

    frames: dict[str, pd.DataFrame] = {}
    unreadable: list[Problem] = []
    for p in paths:
        frame, problems = v.read_table(p)
        unreadable += problems
        if frame is not None:
            frames[p.name] = frame
    v.fail_if_unreadable(unreadable)
    races_file, runners_file = races_path.name, runners_path.name
    horses_file = horses_path.name if horses_path is not None else "horses.csv"
    races, runners = frames[races_file], frames[runners_file]
    horses = frames.get(horses_file)

    problems: list[Problem] = []
    warnings: list[str] = []
    for frame, columns, file in ((races, RACES, races_file), (runners, RUNNERS, runners_file)) + (
        ((horses, HORSES, horses_file),) if horses is not None else ()
    ):
        header_problems, header_warnings = v.check_header(frame, columns, file)
        problems += header_problems
        warnings += header_warnings
        race_key = None if columns is HORSES else "race_id"
        problems += v.check_values(frame, columns, file, race_key=race_key)
    problems += v.check_unique(races, ["race_id"], races_file)
    problems += v.check_unique(runners, ["race_id", "horse_id"], runners_file)
    if "race_id" in races.columns:
        problems += v.check_references(runners, races["race_id"], runners_file, races_file)
    if {"status", "finish_position"} <= set(runners.columns):
        unplaced = (runners["status"] == "finished") & (runners["finish_position"] == "")
        for i in np.flatnonzero(unplaced.to_numpy()):
            problems.append(
                Problem(
                    runners_file,
                    int(runners[v.ROW].iat[i]),
                    "finish_position",
                    "a finished runner needs a finish_position",
                    runners["race_id"].iat[i] if "race_id" in runners.columns else None,
                )
            )
    if horses is not None:
        problems += v.check_unique(horses, ["horse_id"], horses_file, race_key=None)
    problems = v.sort_problems(problems, [races_file, runners_file, horses_file])

    rejected: list[dict[str, object]] = []
    if problems:
        partition = v.partition_races(races, runners, problems, races_file=races_file, runners_file=runners_file)
        races, runners = races[partition.races_ok], runners[partition.runners_ok]
        rejected = partition.rejected_rows
        if horses is not None:
            horses_ok, horse_rejects = v.reject_rows(horses, problems, horses_file)
            horses = horses[horses_ok]
            rejected += horse_rejects

    races_out = _convert(races, RACES)
    races_out["source"] = source or folder.name
    runners_out = _convert(runners, RUNNERS)
    horses_out = _horses_from_runners(conform(runners_out, RUNNER_COLUMNS))
    if horses is not None:
        listed = _convert(horses, HORSES)
        stubs = horses_out[~horses_out["horse_id"].isin(listed["horse_id"])] if "horse_id" in listed else horses_out
        horses_out = pd.concat([conform(listed, HORSE_COLUMNS), conform(stubs, HORSE_COLUMNS)], ignore_index=True)

    parsed = ParsedResults(
        source=source or folder.name,
        format=FORMAT_NAME,
        races=conform(races_out, RACE_COLUMNS),
        runners=conform(runners_out, RUNNER_COLUMNS),
        horses=conform(horses_out, HORSE_COLUMNS),
        problems=[] if skip_invalid else problems,
        warnings=warnings,
        rejected_rows=rejected if skip_invalid else [],
        files=[str(p) for p in paths],
    )
    if skip_invalid and rejected:
        logger.warning("Skipped %d invalid rows of %s (%d problems)", len(rejected), folder, len(problems))
    logger.info(
        "Parsed %s: %d races, %d runners, %d horses", folder, len(parsed.races), len(parsed.runners), len(parsed.horses)
    )
    return parsed
