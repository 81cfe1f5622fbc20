"""Building the point-in-time feature table: one SQL path for the bulk build and for a single race card.

The pipeline (DuckDB SQL, window functions, no Python loop per horse):
  1. ``_base``: races in strict start order (race_seq), one row per run, pars and speed figures learned
     from earlier races only;
  2. horse stage: windows over the horse's own runs ordered by race_seq, ending 1 PRECEDING;
  3. group stage: per-race aggregates per jockey, trainer, sire, draw... accumulated over earlier races only;
  4. field stage: today's runners compared with each other (only pre-race values);
  5. composites.
A race card is appended as a virtual race after all history before ``as_of`` and the same statements run,
restricted (by semi-joins that drop nothing the target rows need) to that race.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

import duckdb
import pandas as pd

from racequant.errors import RacequantError
from racequant.features import class_, composites, connections, context, market, pedigree, sectionals, speed
from racequant.features._base import BEFORE, base_statements
from racequant.features.manifest import all_specs, feature_version

logger = logging.getLogger(__name__)


class FeatureBuildError(RacequantError):
    """Features cannot be built from the given input."""


_HORSE_WINDOWS = f"""
    wh AS (PARTITION BY horse_id ORDER BY race_seq),
    wa AS (PARTITION BY horse_id ORDER BY race_seq {BEFORE}),
    w5 AS (PARTITION BY horse_id ORDER BY race_seq ROWS BETWEEN 5 PRECEDING AND 1 PRECEDING),
    w3 AS (PARTITION BY horse_id ORDER BY race_seq ROWS BETWEEN 3 PRECEDING AND 1 PRECEDING),
    wd AS (PARTITION BY horse_id, dist_band ORDER BY race_seq {BEFORE}),
    wt AS (PARTITION BY horse_id, track ORDER BY race_seq {BEFORE}),
    wg AS (PARTITION BY horse_id, going ORDER BY race_seq {BEFORE}),
    ws AS (PARTITION BY horse_id, surface ORDER BY race_seq {BEFORE}),
    wj AS (PARTITION BY horse_id, jockey_id ORDER BY race_seq {BEFORE})
"""

_FIELD_WINDOWS = """
    fr AS (PARTITION BY race_id ORDER BY horse_id ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING),
    frx AS (PARTITION BY race_id ORDER BY horse_id ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING
            EXCLUDE CURRENT ROW)
"""

_TARGET_RUNS = "(SELECT * FROM _fx_run WHERE race_id IN (SELECT race_id FROM _fx_tgt))"


def _groups() -> dict[str, tuple[tuple[str, ...], int | None]]:
    groups: dict[str, tuple[tuple[str, ...], int | None]] = {}
    for name, (keys, rolling, _m) in connections.GROUPS.items():
        groups[name] = (keys, rolling)
    for name, (keys, _m1, _m2) in pedigree.GROUPS.items():
        groups[name] = (keys, None)
    return groups


def _group_statement(name: str, keys: tuple[str, ...], rolling: int | None) -> str:
    k = ", ".join(keys)
    not_null = " AND ".join(f"{c} IS NOT NULL" for c in keys)
    start = "UNBOUNDED" if rolling is None else str(rolling)
    return f"""
    CREATE OR REPLACE TEMP TABLE _fx_g_{name} AS
    WITH a AS (
        SELECT {k}, race_seq, sum(has_result) AS n, sum(won) AS w, sum(placed) AS p,
               list_sum(list(fig ORDER BY horse_id) FILTER (WHERE fig IS NOT NULL)) AS fs, count(fig) AS fn
        FROM _fx_run SEMI JOIN (SELECT DISTINCT {k} FROM {_TARGET_RUNS} t WHERE {not_null}) USING ({k})
        GROUP BY {k}, race_seq
    )
    SELECT {", ".join(f"{c} AS k_{c}" for c in keys)}, race_seq AS k_race_seq,
           sum(n) OVER w AS n_b, sum(w) OVER w AS w_b, sum(p) OVER w AS p_b, sum(fs) OVER w AS fs_b,
           sum(fn) OVER w AS fn_b
    FROM a
    WINDOW w AS (PARTITION BY {k} ORDER BY race_seq ROWS BETWEEN {start} PRECEDING AND 1 PRECEDING)
    """


def _pipeline(races: str, runners: str, horses: str, targets_sql: str) -> list[str]:
    stmts = base_statements(races, runners, horses)
    stmts.append(f"CREATE OR REPLACE TEMP TABLE _fx_tgt AS {targets_sql}")
    stmts.extend(_group_statement(n, keys, rolling) for n, (keys, rolling) in _groups().items())
    horse_exprs = (
        *speed.HORSE_EXPRS,
        *class_.HORSE_EXPRS,
        *sectionals.HORSE_EXPRS,
        *context.HORSE_EXPRS,
        *connections.HORSE_EXPRS,
    )
    stmts.append(f"""
    CREATE OR REPLACE TEMP TABLE _fx_h AS
    SELECT *, {", ".join(horse_exprs)}
    FROM _fx_run
    WHERE horse_id IN (SELECT horse_id FROM {_TARGET_RUNS} t)
    WINDOW {_HORSE_WINDOWS}
    """)
    row1 = (*speed.ROW_EXPRS, *class_.ROW_EXPRS, *sectionals.ROW_EXPRS, *context.ROW_EXPRS)
    join_exprs = (*connections.JOIN_EXPRS, *pedigree.EXPRS)
    joins = []
    for name, (keys, _rolling) in _groups().items():
        on = " AND ".join(f"g_{name}.k_{c} = h.{c}" for c in (*keys, "race_seq"))
        joins.append(f"LEFT JOIN _fx_g_{name} g_{name} ON {on}")
    stmts.append(f"""
    CREATE OR REPLACE TEMP TABLE _fx_j AS
    SELECT h.*, {", ".join(row1)}, {", ".join(join_exprs)}
    FROM _fx_h h {" ".join(joins)}
    WHERE h.race_id IN (SELECT race_id FROM _fx_tgt)
    """)
    field_exprs = (
        *speed.FIELD_EXPRS,
        *class_.FIELD_EXPRS,
        *sectionals.FIELD_EXPRS,
        *context.FIELD_EXPRS,
        *connections.FIELD_EXPRS,
        *composites.FIELD_EXPRS,
        *market.FIELD_EXPRS,
    )
    stmts.append(f"""
    CREATE OR REPLACE TEMP TABLE _fx_f AS
    SELECT *, {", ".join(field_exprs)}
    FROM _fx_j
    WINDOW {_FIELD_WINDOWS}
    """)
    casts = []
    for spec in all_specs():
        sql_type = "VARCHAR" if spec.dtype == "varchar" else "DOUBLE"
        casts.append(f"CAST({spec.name} AS {sql_type}) AS {spec.name}")
    stmts.append(f"""
    CREATE OR REPLACE TEMP TABLE _fx_out AS
    WITH c AS (SELECT *, {", ".join(composites.ROW_EXPRS)} FROM _fx_f)
    SELECT race_id, horse_id, date AS race_date, race_seq, {", ".join(casts)}
    FROM c ORDER BY race_seq, horse_id
    """)
    return stmts


_TEMP_TABLES = (
    "_fx_race",
    "_fx_run0",
    "_fx_rt",
    "_fx_run1",
    "_fx_cp",
    "_fx_run",
    "_fx_tgt",
    "_fx_h",
    "_fx_j",
    "_fx_f",
    "_fx_out",
)


def _cleanup(conn: duckdb.DuckDBPyConnection, extra: Iterable[str] = ()) -> None:
    names = [*_TEMP_TABLES, *(f"_fx_g_{n}" for n in _groups()), *extra]
    for name in names:
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        conn.execute(f"DROP VIEW IF EXISTS {name}")


def _run(
    conn: duckdb.DuckDBPyConnection,
    races: str,
    runners: str,
    horses: str,
    targets_sql: str,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    try:
        for i, stmt in enumerate(_pipeline(races, runners, horses, targets_sql)):
            conn.execute(stmt)
            if progress is not None:
                progress(f"feature SQL step {i + 1}")
        out = conn.execute("SELECT * FROM _fx_out").df()
    except duckdb.Error as exc:
        raise FeatureBuildError(f"The feature build failed: {exc}") from exc
    finally:
        _cleanup(conn)
    out["race_seq"] = out["race_seq"].astype("int64")
    return out


def build_features(
    conn: duckdb.DuckDBPyConnection,
    *,
    race_ids: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Point-in-time features of every runner (withdrawn excluded) of the given races (default: all).

    Columns: race_id, horse_id, race_date, race_seq, then every feature of the manifest (market included;
    ``manifest.fundamental_specs()`` names the ones a model may learn from).
    """
    started = time.perf_counter()
    if race_ids is None:
        targets = "SELECT race_id FROM _fx_race"
    else:
        conn.register("_fx_wanted", pd.DataFrame({"race_id": list(race_ids)}, dtype="string"))
        targets = "SELECT race_id FROM _fx_race WHERE race_id IN (SELECT race_id FROM _fx_wanted)"
    try:
        out = _run(conn, "races", "runners", "horses", targets, progress)
    finally:
        if race_ids is not None:
            conn.unregister("_fx_wanted")
    logger.info("Built %d feature rows in %.2f s", len(out), time.perf_counter() - started)
    return out


_RACE_COLS = (
    "race_id",
    "date",
    "track",
    "country",
    "race_no",
    "off_time",
    "distance_m",
    "surface",
    "going",
    "race_class",
    "rating_band",
    "prize",
    "course_config",
    "section_distances_m",
)
_RUNNER_COLS = (
    "race_id",
    "horse_id",
    "horse_name",
    "saddle_no",
    "draw",
    "jockey_id",
    "trainer_id",
    "age",
    "sex",
    "carried_weight_lbs",
    "horse_weight_lbs",
    "rating",
    "gear",
    "status",
    "finish_position",
    "margin_lengths",
    "finish_time_s",
    "running_positions",
    "section_times_s",
    "win_odds",
    "place_odds",
)
_HORSE_COLS = ("horse_id", "sire", "dam", "damsire")


def _card_frames(card: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    if "race" not in card or "runners" not in card:
        raise FeatureBuildError("A race card needs a 'race' record and a list of 'runners'.")
    race = dict(card["race"])
    for col in ("race_id", "date", "track", "distance_m", "surface"):
        if race.get(col) is None:
            raise FeatureBuildError(f"The race card has no '{col}'.")
    race_id = race["race_id"]
    races = pd.DataFrame([{c: race.get(c) for c in _RACE_COLS}])
    races["date"] = pd.to_datetime(races["date"]).dt.date
    rows = []
    for runner in card["runners"]:
        row = {c: runner.get(c) for c in _RUNNER_COLS}
        row["race_id"] = race_id
        if row["horse_id"] is None:
            raise FeatureBuildError("Every runner of the race card needs a 'horse_id'.")
        # The race has not been run: results are unknown whatever the card says.
        for col in (
            "status",
            "finish_position",
            "margin_lengths",
            "finish_time_s",
            "running_positions",
            "section_times_s",
        ):
            row[col] = None
        if runner.get("status") == "withdrawn":
            continue
        rows.append(row)
    if not rows:
        raise FeatureBuildError("The race card has no runners.")
    runners = pd.DataFrame(rows, columns=list(_RUNNER_COLS))
    horses = pd.DataFrame(
        [{c: h.get(c) for c in _HORSE_COLS} for h in card.get("horses", [])], columns=list(_HORSE_COLS)
    )
    return races, runners, horses


def features_for_card(
    conn: duckdb.DuckDBPyConnection, card: Mapping[str, Any], as_of: date | datetime | str | None = None
) -> pd.DataFrame:
    """Features of one new race card, computed by the bulk pipeline on the history before the race.

    ``card`` = {"race": {race columns}, "runners": [{runner columns}], "horses": [{horse_id, sire, dam,
    damsire}] (optional, for horses not yet in the warehouse)}. Only races that start before the card's
    race and are dated on or before ``as_of`` (default: the race date) are used.
    """
    races, runners, horses = _card_frames(card)
    race_date = races["date"].iloc[0]
    cutoff = pd.Timestamp(as_of).date() if as_of is not None else race_date
    if cutoff > race_date:
        cutoff = race_date
    tag = uuid.uuid4().hex[:8]
    names = {k: f"_fx_card_{k}_{tag}" for k in ("races", "runners", "horses")}
    src = {k: f"_fx_src_{k}_{tag}" for k in ("races", "runners", "horses")}
    for key, frame in (("races", races), ("runners", runners), ("horses", horses)):
        conn.register(names[key], frame)
    race_cols = ", ".join(_RACE_COLS)
    runner_cols = ", ".join(_RUNNER_COLS)
    order = "ORDER BY date, race_no NULLS LAST, off_time NULLS LAST, race_id"
    card_id = races["race_id"].iloc[0]
    try:
        conn.execute(
            f"""
        CREATE OR REPLACE TEMP TABLE {src["races"]} AS
        WITH allr AS (
            SELECT {race_cols}, 0 AS is_card FROM races WHERE date <= ? AND race_id <> ?
            UNION ALL
            SELECT CAST(race_id AS VARCHAR), CAST(date AS DATE), CAST(track AS VARCHAR), CAST(country AS VARCHAR),
                   CAST(race_no AS INTEGER), CAST(off_time AS VARCHAR), CAST(distance_m AS INTEGER),
                   CAST(surface AS VARCHAR), CAST(going AS VARCHAR), CAST(race_class AS VARCHAR),
                   CAST(rating_band AS VARCHAR), CAST(prize AS DOUBLE), CAST(course_config AS VARCHAR),
                   CAST(section_distances_m AS INTEGER[]), 1 FROM {names["races"]}
        ), seq AS (SELECT *, row_number() OVER ({order}) AS s FROM allr)
        SELECT {race_cols} FROM seq WHERE s <= (SELECT s FROM seq WHERE is_card = 1)
        """,
            [cutoff, card_id],
        )
        conn.execute(
            f"""
        CREATE OR REPLACE TEMP TABLE {src["runners"]} AS
        SELECT {runner_cols} FROM runners SEMI JOIN {src["races"]} USING (race_id)
        WHERE race_id <> ?
        UNION ALL
        SELECT CAST(race_id AS VARCHAR), CAST(horse_id AS VARCHAR), CAST(horse_name AS VARCHAR),
               CAST(saddle_no AS INTEGER), CAST(draw AS INTEGER), CAST(jockey_id AS VARCHAR),
               CAST(trainer_id AS VARCHAR), CAST(age AS INTEGER), CAST(sex AS VARCHAR),
               CAST(carried_weight_lbs AS DOUBLE), CAST(horse_weight_lbs AS DOUBLE), CAST(rating AS DOUBLE),
               CAST(gear AS VARCHAR), CAST(NULL AS VARCHAR), CAST(NULL AS INTEGER), CAST(NULL AS DOUBLE),
               CAST(NULL AS DOUBLE), CAST(NULL AS INTEGER[]), CAST(NULL AS DOUBLE[]), CAST(win_odds AS DOUBLE),
               CAST(place_odds AS DOUBLE)
        FROM {names["runners"]}
        """,
            [card_id],
        )
        conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE {src["horses"]} AS
        SELECT horse_id, sire, dam, damsire FROM horses
        UNION ALL
        SELECT CAST(horse_id AS VARCHAR), CAST(sire AS VARCHAR), CAST(dam AS VARCHAR), CAST(damsire AS VARCHAR)
        FROM {names["horses"]} WHERE horse_id NOT IN (SELECT horse_id FROM horses)
        """)
        out = _run(
            conn,
            src["races"],
            src["runners"],
            src["horses"],
            f"SELECT race_id FROM _fx_race WHERE race_id = '{_sql_str(card_id)}'",
        )
    finally:
        for key in names:
            conn.unregister(names[key])
            conn.execute(f"DROP TABLE IF EXISTS {src[key]}")
    return out


def _sql_str(value: object) -> str:
    return str(value).replace("'", "''")


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The feature columns of a built frame (everything after the keys)."""
    return [c for c in frame.columns if c not in ("race_id", "horse_id", "race_date", "race_seq")]


__all__ = ["FeatureBuildError", "build_features", "feature_columns", "feature_version", "features_for_card"]
