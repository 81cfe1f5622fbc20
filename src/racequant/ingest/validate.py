"""Validation shared by the importers: read files as text, check every column at once, reject whole races.

Files are read with every cell as text (an empty cell is missing), so that each bad value can be named
by file, row and column before anything is converted. ``row`` is the line number in a CSV file (the
header is row 1, the first record row 2); for Parquet it is the 1-based record index + 1, the line the
record would have in the equivalent CSV file.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from racequant.errors import ImportValidationError, Problem
from racequant.ingest.schema import ParsedResults

logger = logging.getLogger(__name__)

ROW = "_row"  # the column holding each record's row number in its file
REJECT_COLUMNS = ("file", "row", "column", "race_id", "reason", "raw")

_INT_LIST = re.compile(r"\d+( \d+)*")
_FLOAT_LIST = re.compile(r"\d+(\.\d+)?( \d+(\.\d+)?)*")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
_UPPER_WORD = re.compile(r"[A-Z][A-Z_]*")


@dataclass(frozen=True)
class Column:
    """What one input column must hold.

    ``kind`` is one of ``string``, ``int``, ``float``, ``date`` (YYYY-MM-DD), ``time`` (HH:MM),
    ``int_list`` and ``float_list`` (space-separated numbers), ``upper_word`` (an upper-case word such as
    a going). ``vocabulary`` restricts a string column to the listed values.
    """

    name: str
    kind: str = "string"
    required: bool = False
    vocabulary: tuple[str, ...] | None = None


# --------------------------------------------------------------------------------------------------- reading


def read_table(path: Path) -> tuple[pd.DataFrame | None, list[Problem]]:
    """Read a CSV or Parquet file with every cell as text ('' = missing) and a ``_row`` column."""
    if path.suffix.lower() == ".parquet":
        return _read_parquet(path)
    return _read_csv(path)


def _read_csv(path: Path) -> tuple[pd.DataFrame | None, list[Problem]]:
    try:
        frame = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=False,
            encoding="utf-8-sig",
        )
    except UnicodeDecodeError as exc:
        return None, [Problem(path.name, None, None, f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})")]
    except pd.errors.EmptyDataError:
        return None, [Problem(path.name, None, None, "the file is empty (a header row is required)")]
    except pd.errors.ParserError as exc:
        match = re.search(r"line (\d+)", str(exc))
        row = int(match.group(1)) if match else None
        return None, [Problem(path.name, row, None, f"cannot read the CSV file: {exc}")]
    frame = frame.fillna("")
    frame[ROW] = np.arange(2, len(frame) + 2)
    # a blank line keeps its line number but is no record
    data_columns = [c for c in frame.columns if c != ROW]
    if data_columns:
        blank = (frame[data_columns] == "").all(axis=1)
        if blank.any():
            frame = frame[~blank]
    return frame.reset_index(drop=True), []


def _parquet_column_as_text(column: pa.ChunkedArray) -> np.ndarray:
    kind = column.type
    if pa.types.is_timestamp(kind):
        as_date = pc.cast(column, pa.date32())
        if pc.all(pc.equal(pc.cast(as_date, kind), column)).as_py() is not False:
            column = as_date
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        column = pc.binary_join(pc.cast(column, pa.list_(pa.string())), " ")
    elif not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        column = pc.cast(column, pa.string())
    return np.asarray(column.fill_null("").to_pylist(), dtype=object)


def _read_parquet(path: Path) -> tuple[pd.DataFrame | None, list[Problem]]:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        return None, [Problem(path.name, None, None, f"cannot read the Parquet file: {exc}")]
    try:
        frame = pd.DataFrame({name: _parquet_column_as_text(table.column(name)) for name in table.column_names})
    except pa.ArrowException as exc:
        return None, [Problem(path.name, None, None, f"cannot read the Parquet file as text: {exc}")]
    frame[ROW] = np.arange(2, len(frame) + 2)
    return frame, []


# ------------------------------------------------------------------------------------------------ checking


def check_header(
    frame: pd.DataFrame, columns: Sequence[Column], file: str, *, also_known: Iterable[str] = ()
) -> tuple[list[Problem], list[str]]:
    """Problems for missing required columns (row 1, the header) and warnings for unknown columns."""
    known = {c.name for c in columns} | set(also_known) | {ROW}
    problems = [
        Problem(file, 1, c.name, "required column is missing")
        for c in columns
        if c.required and c.name not in frame.columns
    ]
    warnings = [f"{file}: unknown column '{name}' ignored" for name in frame.columns if name not in known]
    for warning in warnings:
        logger.warning(warning)
    return problems, warnings


def _describe(column: Column) -> str:
    if column.vocabulary is not None:
        return f"one of {', '.join(column.vocabulary)}"
    return {
        "int": "an integer",
        "float": "a number",
        "date": "a date YYYY-MM-DD",
        "time": "a time HH:MM",
        "int_list": "space-separated integers",
        "float_list": "space-separated numbers",
        "upper_word": "an upper-case word such as GOOD_TO_FIRM",
    }.get(column.kind, "text")


def numbers(values: pd.Series) -> np.ndarray:
    """Text as float64 ('' and unparsable text as NaN): Arrow's fast cast, pandas' lenient parser as fallback."""
    text = pa.array(values, type=pa.string(), from_pandas=True)
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    try:
        return pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        return pd.to_numeric(values.where(values != ""), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def invalid_mask(values: pd.Series, column: Column) -> pd.Series:
    """True where a non-empty value does not fit the column (vectorised)."""
    present = values != ""
    if column.vocabulary is not None:
        return present & ~values.isin(column.vocabulary)
    kind = column.kind
    if kind == "int":
        parsed = numbers(values)
        with np.errstate(invalid="ignore"):
            integral = np.isfinite(parsed) & (np.floor(parsed) == parsed)
        return present & ~integral
    if kind == "float":
        return present & ~np.isfinite(numbers(values))
    if kind == "date":
        ok = values.str.fullmatch(_DATE.pattern).fillna(False).astype(bool)
        dates = pd.to_datetime(values.where(ok), format="%Y-%m-%d", errors="coerce")
        return present & dates.isna()
    if kind == "time":
        return present & ~values.str.fullmatch(_TIME.pattern).fillna(False).astype(bool)
    if kind == "int_list":
        return present & ~values.str.fullmatch(_INT_LIST.pattern).fillna(False).astype(bool)
    if kind == "float_list":
        return present & ~values.str.fullmatch(_FLOAT_LIST.pattern).fillna(False).astype(bool)
    if kind == "upper_word":
        return present & ~values.str.fullmatch(_UPPER_WORD.pattern).fillna(False).astype(bool)
    return pd.Series(False, index=values.index)


def check_values(
    frame: pd.DataFrame, columns: Sequence[Column], file: str, *, race_key: str | None = "race_id"
) -> list[Problem]:
    """A problem for each missing required value and each value of the wrong type or vocabulary."""
    problems: list[Problem] = []
    race_ids = frame[race_key] if race_key and race_key in frame.columns else None
    for column in columns:
        if column.name not in frame.columns:
            continue
        values = frame[column.name]
        missing = values == ""
        if column.required and missing.any():
            for i in np.flatnonzero(missing.to_numpy()):
                problems.append(_problem(frame, race_ids, i, file, column.name, "a value is required"))
        bad = invalid_mask(values, column)
        if bad.any():
            expected = _describe(column)
            for i in np.flatnonzero(bad.to_numpy()):
                message = f"expected {expected}, got {values.iat[i]!r}"
                problems.append(_problem(frame, race_ids, i, file, column.name, message))
    return problems


def _problem(frame: pd.DataFrame, race_ids: pd.Series | None, i: int, file: str, column: str, message: str) -> Problem:
    race_id = race_ids.iat[i] if race_ids is not None else None
    return Problem(file, int(frame[ROW].iat[i]), column, message, race_id or None)


def check_unique(
    frame: pd.DataFrame, keys: Sequence[str], file: str, *, race_key: str | None = "race_id"
) -> list[Problem]:
    """A problem for each row repeating the key of an earlier row."""
    if any(k not in frame.columns for k in keys):
        return []
    duplicated = frame.duplicated(list(keys), keep=False).to_numpy()
    if not duplicated.any():
        return []
    race_ids = frame[race_key] if race_key and race_key in frame.columns else None
    first_row: dict[tuple[str, ...], int] = {}
    problems = []
    for i in np.flatnonzero(duplicated):
        key = tuple(frame[k].iat[i] for k in keys)
        row = int(frame[ROW].iat[i])
        if key not in first_row:
            first_row[key] = row
            continue
        if len(keys) == 1:
            message = f"duplicate {keys[0]} {key[0]!r} (first at row {first_row[key]})"
        else:
            described = ", ".join(f"{k} {v!r}" for k, v in zip(keys, key, strict=True))
            message = f"duplicate {described} (first at row {first_row[key]})"
        problems.append(_problem(frame, race_ids, i, file, keys[-1], message))
    return problems


def check_references(
    frame: pd.DataFrame, known: pd.Series, file: str, parent_file: str, *, key: str = "race_id"
) -> list[Problem]:
    """A problem for each row whose ``key`` is not among the ``known`` keys of the parent file."""
    if key not in frame.columns:
        return []
    unknown = (frame[key] != "") & ~frame[key].isin(known)
    return [
        _problem(frame, frame[key], i, file, key, f"race {frame[key].iat[i]!r} is not in {parent_file}")
        for i in np.flatnonzero(unknown.to_numpy())
    ]


def sort_problems(problems: list[Problem], file_order: Sequence[str]) -> list[Problem]:
    """Problems by file (in the given order), then row."""
    rank = {name: i for i, name in enumerate(file_order)}
    return sorted(problems, key=lambda p: (rank.get(p.file, len(rank)), p.row or 0))


# ---------------------------------------------------------------------------------------------- converting


def as_string(values: pd.Series) -> pd.Series:
    """Text with '' as missing."""
    return values.where(values != "").astype("string")


def as_float(values: pd.Series) -> pd.Series:
    """Validated numbers; missing as <NA>."""
    parsed = numbers(values)
    return pd.Series(pd.arrays.FloatingArray(np.nan_to_num(parsed), np.isnan(parsed)), index=values.index)


def as_int(values: pd.Series) -> pd.Series:
    """Validated integers; missing as <NA>."""
    parsed = numbers(values)
    missing = np.isnan(parsed)
    whole = np.where(missing, 0, parsed).astype("int64")
    return pd.Series(pd.arrays.IntegerArray(whole, missing), index=values.index)


def as_date(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values.where(values != ""), format="%Y-%m-%d", errors="coerce")


def as_lists(values: pd.Series, element: pa.DataType) -> list[list[float] | list[int] | None]:
    """Space-separated numbers (already validated) as Python lists; '' as None."""
    text = pa.array(values.where(values != "").astype(object).to_numpy(), type=pa.string(), from_pandas=True)
    parts = pc.split_pattern(text, " ")
    return pc.cast(parts, pa.list_(element)).to_pylist()


def lists_from_columns(matrix: np.ndarray, element: pa.DataType) -> list[list[float] | list[int] | None]:
    """The non-missing values of each row of a float matrix (NaN = missing) as a Python list; no value = None."""
    present = ~np.isnan(matrix)
    counts = present.sum(axis=1)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    values = pa.array(matrix[present]).cast(element)
    return pa.ListArray.from_arrays(offsets, values, mask=pa.array(counts == 0)).to_pylist()


# ------------------------------------------------------------------------------------------------ rejecting


@dataclass
class Partition:
    """Which rows of the races and runners files survive, and the rows left out with their reasons."""

    races_ok: np.ndarray
    runners_ok: np.ndarray
    rejected_rows: list[dict[str, object]]


def _raw(frame: pd.DataFrame, i: int) -> dict[str, str]:
    return {c: frame[c].iat[i] for c in frame.columns if c != ROW}


def partition_races(
    races: pd.DataFrame,
    runners: pd.DataFrame,
    problems: list[Problem],
    *,
    races_file: str,
    runners_file: str,
    key: str = "race_id",
) -> Partition:
    """Reject every race with a problem in its own row or in any of its runners, with all its rows.

    A problem without a row (or in the header) condemns every row of its file. Each rejected row gets
    its own first problem as its reason, or ``race <id> rejected: <the race's first problem>``.
    """
    own: dict[tuple[str, int], Problem] = {}
    by_race: dict[str, Problem] = {}
    whole_file: dict[str, Problem] = {}
    for problem in problems:
        if problem.file not in (races_file, runners_file):
            continue
        if problem.row is None or problem.row == 1:
            whole_file.setdefault(problem.file, problem)
            continue
        own.setdefault((problem.file, problem.row), problem)
        if problem.race_id is not None:
            by_race.setdefault(problem.race_id, problem)
    file_problem = whole_file.get(races_file) or whole_file.get(runners_file)

    def keys_of(frame: pd.DataFrame) -> pd.Series:
        return frame[key] if key in frame.columns else pd.Series("", index=frame.index)

    def has_own(frame: pd.DataFrame, file: str) -> np.ndarray:
        rows = {row for f, row in own if f == file}
        return np.isin(frame[ROW].to_numpy(), list(rows)) if rows else np.zeros(len(frame), dtype=bool)

    race_keys, runner_keys = keys_of(races), keys_of(runners)
    bad = list(by_race)
    races_ok = ~race_keys.isin(bad).to_numpy() & ~has_own(races, races_file)
    runners_ok = (
        ~runner_keys.isin(bad).to_numpy()
        & ~has_own(runners, runners_file)
        & runner_keys.isin(race_keys[races_ok]).to_numpy()
    )
    if file_problem is not None:
        races_ok[:] = False
        runners_ok[:] = False
    # a row of a rejected race may itself have been fine; rows with their own problem are always out
    rejected: list[dict[str, object]] = []
    for frame, file, ok, keys in (
        (races, races_file, races_ok, race_keys),
        (runners, runners_file, runners_ok, runner_keys),
    ):
        rows = frame[ROW].to_numpy() if ROW in frame.columns else np.arange(2, len(frame) + 2)
        for i in np.flatnonzero(~ok):
            row = int(rows[i])
            race_id = keys.iat[i] or None
            problem = own.get((file, row))
            if problem is not None:
                reason, column = str(problem), problem.column
            elif file in whole_file:
                reason, column = str(whole_file[file]), whole_file[file].column
            elif file_problem is not None:
                reason, column = f"race {race_id} rejected: {file_problem}", None
            else:
                cause = by_race.get(race_id or "")
                reason, column = f"race {race_id} rejected: {cause}", None
            rejected.append(
                {
                    "file": file,
                    "row": row,
                    "column": column,
                    "race_id": race_id,
                    "reason": reason,
                    "raw": _raw(frame, i),
                }
            )
    return Partition(races_ok=races_ok, runners_ok=runners_ok, rejected_rows=rejected)


def reject_rows(frame: pd.DataFrame, problems: list[Problem], file: str) -> tuple[np.ndarray, list[dict[str, object]]]:
    """Reject each row with a problem of its own (for files whose rows belong to no race, e.g. horses)."""
    own: dict[int, Problem] = {}
    whole: Problem | None = None
    for problem in problems:
        if problem.file != file:
            continue
        if problem.row is None or problem.row == 1:
            whole = whole or problem
        else:
            own.setdefault(problem.row, problem)
    rows = frame[ROW].to_numpy()
    ok = np.zeros(len(frame), dtype=bool) if whole is not None else ~np.isin(rows, list(own))
    rejected: list[dict[str, object]] = []
    for i in np.flatnonzero(~ok):
        problem = own.get(int(rows[i])) or whole
        rejected.append(
            {
                "file": file,
                "row": int(rows[i]),
                "column": problem.column if problem else None,
                "race_id": None,
                "reason": str(problem),
                "raw": _raw(frame, i),
            }
        )
    return ok, rejected


def fail_if_unreadable(problems: list[Problem]) -> None:
    """Raise at once when a file could not be read at all: there is nothing to validate or skip."""
    if problems:
        raise ImportValidationError(problems)


def write_rejects(parsed: ParsedResults, file: Path) -> None:
    """Write the rows left out by a skip-invalid import as CSV: file,row,column,race_id,reason,raw (raw as JSON)."""
    file = Path(file)
    if file.parent and not file.parent.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(REJECT_COLUMNS)
        for rejected in parsed.rejected_rows:
            writer.writerow(
                [
                    rejected.get("file", ""),
                    rejected.get("row", ""),
                    rejected.get("column") or "",
                    rejected.get("race_id") or "",
                    rejected.get("reason", ""),
                    json.dumps(rejected.get("raw", {}), ensure_ascii=False, default=str),
                ]
            )
    logger.info("Wrote %d rejected rows to %s", len(parsed.rejected_rows), file)
