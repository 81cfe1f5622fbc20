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

import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from typing import Any

import duckdb
import pandas as pd

from racequant.errors import RacequantError
from racequant.features import (
    card_engine,
    class_,
    composites,
    connections,
    context,
    market,
    pedigree,
    sectionals,
    shrinkage,
    speed,
)
from racequant.features._base import BEFORE, Step, base_steps, card_base_steps
from racequant.features.manifest import all_specs, feature_version
from racequant.ingest.schema import RACE_COLUMNS, RUNNER_COLUMNS
from racequant.warehouse import feature_store

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


_TARGET_RUNS = "(SELECT * FROM _fx_run WHERE race_id IN (SELECT race_id FROM _fx_tgt))"


# The columns of a run the horse windows read.
_HORSE_INPUTS = (
    "date",
    "dist_band",
    "track",
    "going",
    "surface",
    "jockey_id",
    "gear",
    "distance_m",
    "fig",
    "fig2",
    "fig_x",
    "fig_x2",
    "fig_xy",
    "rating",
    "class_num",
    "perf_vs_class_par",
    "prize_won",
    "l200",
    "kick",
    "early_fig",
    "early_pos",
    "mid_pos",
    "led_early",
    "pos_gained",
    "race_pace_fig",
    "carried_weight_lbs",
    "horse_weight_lbs",
    "has_result",
    "won",
    "placed",
    "finish_pct",
    "finish_position",
    "margin_lengths",
)


def _alias(expr: str) -> str:
    """The output name of ``<expression> AS name``."""
    return expr.rsplit(" AS ", 1)[1].strip()


def _groups() -> dict[str, tuple[tuple[str, ...], int | None]]:
    groups: dict[str, tuple[tuple[str, ...], int | None]] = {}
    for name, (keys, rolling, _m) in connections.GROUPS.items():
        groups[name] = (keys, rolling)
    for name, (keys, _m1, _m2) in pedigree.GROUPS.items():
        groups[name] = (keys, None)
    return groups


def _group_steps(
    name: str, keys: tuple[str, ...], rolling: int | None, group_aggs: Callable[[str, tuple[str, ...]], str] | str
) -> list[Step]:
    """Per (key, race) totals of the runs touching the targets' keys, then the totals over earlier races."""
    k = ", ".join(keys)
    not_null = " AND ".join(f"{c} IS NOT NULL" for c in keys)
    start = "UNBOUNDED" if rolling is None else str(rolling)
    aggs = f"""
    SELECT {k}, race_seq, sum(has_result) AS n, sum(won) AS w, sum(placed) AS p,
           sum(fig) AS fs, count(fig) AS fn  -- fig is DECIMAL: an exact sum whatever the order
    FROM _fx_run SEMI JOIN (SELECT DISTINCT {k} FROM {_TARGET_RUNS} t WHERE {not_null}) USING ({k})
    GROUP BY {k}, race_seq
    """
    totals = f"""
    SELECT {", ".join(f"{c} AS k_{c}" for c in keys)}, race_seq AS k_race_seq, n AS n_own, w AS w_own, p AS p_own,
           sum(n) OVER w AS n_b, sum(w) OVER w AS w_b, sum(p) OVER w AS p_b, sum(fs) OVER w AS fs_b,
           sum(fn) OVER w AS fn_b
    FROM {group_aggs(name, keys) if callable(group_aggs) else f"_fx_ga_{name}"}
    WINDOW w AS (PARTITION BY {k} ORDER BY race_seq ROWS BETWEEN {start} PRECEDING AND 1 PRECEDING)
    """
    return [(f"_fx_ga_{name}", aggs), (f"_fx_g_{name}", totals)]


def _target_steps(
    group_aggs: Callable[[str, tuple[str, ...]], str] | str = "",
    horse_runs: str = "_fx_run",
    mom_aggs: str = "_fx_moma",
    mom_cum: str = "_fx_momc",
) -> list[Step]:
    """Everything after the base stage, for the runners of the races in _fx_tgt.

    ``group_aggs`` (group name, keys -> relation; default this build's ``_fx_ga_<name>``) and ``horse_runs``
    are what the cumulative windows run over: this build's own relations in bulk, the stored history
    followed by the card's own rows for a race card.
    """
    steps: list[Step] = []
    for n, (keys, rolling) in _groups().items():
        steps.extend(_group_steps(n, keys, rolling, group_aggs))
    steps.extend(shrinkage.steps(mom_aggs, mom_cum))
    # The windows sort only the columns they read (every window spec sorts its whole input row).
    steps.append(
        (
            "_fx_h",
            f"""
    SELECT race_id, horse_id, {", ".join(_horse_exprs())}
    FROM (SELECT race_id, horse_id, race_seq, {", ".join(_HORSE_INPUTS)} FROM {horse_runs})
    WHERE horse_id IN (SELECT horse_id FROM {_TARGET_RUNS} t)
    WINDOW {_HORSE_WINDOWS}
    """,
        )
    )
    return steps + _output_steps()


def _horse_exprs() -> tuple[str, ...]:
    return (
        *speed.HORSE_EXPRS,
        *class_.HORSE_EXPRS,
        *sectionals.HORSE_EXPRS,
        *context.HORSE_EXPRS,
        *connections.HORSE_EXPRS,
    )


_GROUP_TOTALS = ("n_b", "w_b", "p_b", "fs_b", "fn_b")


def _group_joins(runs: str) -> str:
    """LEFT JOINs of each group's totals (_fx_g_<name>, alias g_<name>) to the runs aliased ``runs``."""
    joins = []
    for name, (keys, _rolling) in _groups().items():
        on = " AND ".join(f"g_{name}.k_{c} = {runs}.{c}" for c in (*keys, "race_seq"))
        joins.append(f"LEFT JOIN _fx_g_{name} g_{name} ON {on}")
    return " ".join(joins)


def _output_steps(*, packed_groups: bool = False) -> list[Step]:
    """From the horse stage (_fx_h), the group totals (_fx_g_*) and the fitted m (_fx_mom) to _fx_out.

    With ``packed_groups`` (a race card) each group's totals are first joined to the runners' keys alone and
    packed into one struct column g_<name> per group (``g_jockey.n_b`` then reads the struct's field), so
    the wide runner rows pass one join instead of thirteen (which costs about 50 ms on 14 rows).
    """
    steps: list[Step] = []
    horse_cols = [_alias(e) for e in _horse_exprs()]
    row1 = (*speed.ROW_EXPRS, *class_.ROW_EXPRS, *sectionals.ROW_EXPRS, *context.ROW_EXPRS)
    join_exprs = (*connections.JOIN_EXPRS, *pedigree.EXPRS)
    joins = _group_joins("h")
    if packed_groups:
        key_cols = ", ".join(c for c in _key_columns() if c != "horse_id")
        packed = ", ".join(
            f"struct_pack({', '.join(f'{t} := g_{n}.{t}' for t in _GROUP_TOTALS)}) AS g_{n}" for n in _groups()
        )
        steps.append(
            (
                "_fx_gs",
                f"""
        SELECT r.race_id, r.horse_id, {packed}
        FROM (SELECT race_id, horse_id, race_seq, {key_cols} FROM {_TARGET_RUNS} t) r {_group_joins("r")}
        """,
            )
        )
        joins = "JOIN _fx_gs USING (race_id, horse_id)"
    steps.append(
        (
            "_fx_j",
            f"""
    SELECT h.*, {", ".join(row1)}, {", ".join(join_exprs)}
    FROM (SELECT r.*, {", ".join(f"x.{c}" for c in horse_cols)}
          FROM {_TARGET_RUNS} r JOIN _fx_h x USING (race_id, horse_id)) h
    {joins} LEFT JOIN _fx_mom ON _fx_mom.race_seq = h.race_seq
    """,
        )
    )
    field_exprs = (
        *speed.FIELD_EXPRS,
        *class_.FIELD_EXPRS,
        *sectionals.FIELD_EXPRS,
        *context.FIELD_EXPRS,
        *connections.FIELD_EXPRS,
        *composites.FIELD_EXPRS,
        *market.FIELD_EXPRS,
    )
    field_lists = (
        *speed.FIELD_LISTS,
        *class_.FIELD_LISTS,
        *sectionals.FIELD_LISTS,
        *context.FIELD_LISTS,
        *connections.FIELD_LISTS,
        *composites.FIELD_LISTS,
        *market.FIELD_LISTS,
    )
    # One group-by per race gives each value of today's field as a list (ordered by horse_id); the field
    # features compare the runner with those lists.
    steps.append(("_fx_fl", f"SELECT race_id, {', '.join(field_lists)} FROM _fx_j GROUP BY race_id"))
    steps.append(
        (
            "_fx_f",
            f"""
    SELECT j.*, {", ".join(field_exprs)}
    FROM _fx_j j JOIN _fx_fl USING (race_id)
    """,
        )
    )
    casts = []
    for spec in all_specs():
        sql_type = "VARCHAR" if spec.dtype == "varchar" else "DOUBLE"
        casts.append(f"CAST({spec.name} AS {sql_type}) AS {spec.name}")
    steps.append(
        (
            "_fx_out",
            f"""
    SELECT race_id, horse_id, date AS race_date, race_seq, {", ".join(casts)}
    FROM (SELECT *, {", ".join(composites.ROW_EXPRS)} FROM _fx_f) c ORDER BY race_seq, horse_id
    """,
        )
    )
    return steps


def _pipeline(races: str, runners: str, horses: str, targets_sql: str) -> list[Step]:
    return [
        *base_steps(races, runners, horses),
        ("_fx_tgt", targets_sql),
        *_target_steps(),
    ]


def _step_names() -> list[str]:
    return [name for name, _sql in _pipeline("races", "runners", "horses", "")]


def _cleanup(conn: duckdb.DuckDBPyConnection, extra: Iterable[str] = (), keep: str | None = None) -> None:
    for name in (*_step_names(), *extra):
        if name != keep:
            conn.execute(f"DROP TABLE IF EXISTS {name}")


def _execute_steps(
    conn: duckdb.DuckDBPyConnection, steps: Sequence[Step], progress: Callable[[str], None] | None = None
) -> None:
    for i, (name, sql) in enumerate(steps):
        conn.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}")
        if progress is not None:
            progress(f"feature SQL step {i + 1}/{len(steps)} ({name})")


# Bump when the stored race-card state changes shape (it is rebuilt when its fingerprint differs).
_CARD_STATE_LAYOUT = 2


def _card_state_sources() -> dict[str, str]:
    """Stored card state -> the relation of the bulk build it is copied from.

    Runs are stored in (horse_id, race_seq) order and group totals in (key, race_seq) order, so a card's
    lookups of a few horses and keys read a few row groups (DuckDB skips the others by their min/max).
    Rolling groups keep each (key, race)'s position in its key's history (k_n) for their last-N frame.
    """
    sources = {
        "race": "_fx_race",
        "rta": "_fx_rta",
        "rt": "_fx_rt",
        "cpa": "_fx_cpa",
        "run": "(SELECT * FROM _fx_run ORDER BY horse_id, race_seq)",
        "moma": "_fx_moma",
        "momc": "_fx_momc",
    }
    for n, (keys, rolling) in _groups().items():
        k = ", ".join(keys)
        k_n = "" if rolling is None else f", row_number() OVER (PARTITION BY {k} ORDER BY race_seq) AS k_n"
        sources[f"ga_{n}"] = f"(SELECT *{k_n} FROM _fx_ga_{n} ORDER BY {k}, race_seq)"
    # m of every group as fitted after each race with changes: the bulk build's expressions on _fx_momc
    fitted = ", ".join(shrinkage.fitted_exprs())
    sources["mom"] = f"""(
        SELECT 0 AS race_seq, {fitted} FROM (SELECT 1) t LEFT JOIN (SELECT * FROM _fx_momc WHERE FALSE) c ON TRUE
        UNION ALL SELECT race_seq, {fitted} FROM _fx_momc c ORDER BY race_seq)"""
    return sources


def _save_card_state(conn: duckdb.DuckDBPyConnection) -> None:
    feature_store.save_card_state(
        conn, _card_state_sources(), fingerprint=_warehouse_fingerprint(conn), version=feature_version()
    )


def _limit_memory(conn: duckdb.DuckDBPyConnection, memory_limit: str) -> dict[str, str]:
    """Cap DuckDB's memory and let it stream without keeping insertion order; return the previous settings."""
    names = ("memory_limit", "preserve_insertion_order")
    previous = {n: str(conn.execute(f"SELECT current_setting('{n}')").fetchall()[0][0]) for n in names}
    conn.execute(f"SET memory_limit = '{_sql_str(memory_limit)}'")
    conn.execute("SET preserve_insertion_order = false")
    return previous


def _warehouse_fingerprint(conn: duckdb.DuckDBPyConnection) -> str:
    return f"{feature_version()}:state{_CARD_STATE_LAYOUT}:{feature_store.warehouse_fingerprint(conn)}"


def build_features(
    conn: duckdb.DuckDBPyConnection,
    *,
    race_ids: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    save_card_state: bool = False,
    memory_limit: str | None = None,
) -> pd.DataFrame:
    """Point-in-time features of every runner (withdrawn excluded) of the given races (default: all).

    Columns: race_id, horse_id, race_date, race_seq, then every feature of the manifest (market included;
    ``manifest.fundamental_specs()`` names the ones a model may learn from). With ``save_card_state`` (only
    for a build of all races) the running state race cards start from is stored too. ``memory_limit``
    (e.g. "2GB") caps DuckDB for this build (it spills to disk beyond it); the connection's settings are
    restored afterwards.
    """
    started = time.perf_counter()
    with built_features(
        conn, race_ids=race_ids, progress=progress, save_card_state=save_card_state, memory_limit=memory_limit
    ) as table:
        try:
            out = (
                conn.sql(f"SELECT * FROM {table}")
                .to_arrow_table()
                .to_pandas(self_destruct=True, split_blocks=True, date_as_object=False)
            )
        except duckdb.Error as exc:
            raise FeatureBuildError(f"The feature build failed: {exc}") from exc
    out["race_seq"] = out["race_seq"].astype("int64")
    out["race_date"] = out["race_date"].astype("datetime64[us]")  # as DuckDB's own .df() gives it
    logger.info("Built %d feature rows in %.2f s", len(out), time.perf_counter() - started)
    return out


_RELATION = re.compile(r"\b_fx_\w+\b")


def _execute_bulk_steps(
    conn: duckdb.DuckDBPyConnection,
    steps: Sequence[Step],
    progress: Callable[[str], None] | None,
    *,
    save_card_state: bool,
) -> None:
    """``_execute_steps``, dropping each relation after the last step that reads it (peak memory and spilling
    of large builds: three wide copies of the runs and 26 group tables are otherwise held to the end).

    With ``save_card_state`` the race-card state is stored as soon as the relations it copies exist.
    """
    reads = [set(_RELATION.findall(sql)) for _name, sql in steps]
    last_read = {
        name: max((j for j, r in enumerate(reads) if name in r), default=i) for i, (name, _) in enumerate(steps)
    }
    held = (
        set().union(*(_RELATION.findall(src) for src in _card_state_sources().values())) if save_card_state else set()
    )
    live: list[str] = []
    for i, (name, sql) in enumerate(steps):
        conn.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}")
        if progress is not None:
            progress(f"feature SQL step {i + 1}/{len(steps)} ({name})")
        if held and held <= {n for n, _sql in steps[: i + 1]}:
            _save_card_state(conn)
            held = set()
        for done in [n for n in live if last_read[n] <= i and n not in held]:
            conn.execute(f"DROP TABLE {done}")
            live.remove(done)
        live.append(name)


@contextlib.contextmanager
def built_features(
    conn: duckdb.DuckDBPyConnection,
    *,
    race_ids: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    save_card_state: bool = False,
    memory_limit: str | None = None,
) -> Iterator[str]:
    """Run the bulk build and yield the name of the temp table holding its result (``build_features``' rows).

    A large build is stored from the table without copying it out of DuckDB (``api.build_and_store``). The
    intermediate relations are dropped before the yield; the result table, after it; ``memory_limit`` holds
    until then.
    """
    if race_ids is None:
        targets = "SELECT race_id FROM _fx_race"
    else:
        conn.register("_fx_wanted", pd.DataFrame({"race_id": list(race_ids)}, dtype="string"))
        targets = "SELECT race_id FROM _fx_race WHERE race_id IN (SELECT race_id FROM _fx_wanted)"
    restore = _limit_memory(conn, memory_limit) if memory_limit else {}
    try:
        try:
            steps = _pipeline("races", "runners", "horses", targets)
            _execute_bulk_steps(conn, steps, progress, save_card_state=save_card_state and race_ids is None)
        except duckdb.Error as exc:
            raise FeatureBuildError(f"The feature build failed: {exc}") from exc
        yield "_fx_out"
    finally:
        _cleanup(conn)
        for name, value in restore.items():
            # a default (as 80% of RAM) is reset exactly; current_setting shows a size rounded to 0.1 GiB
            conn.execute(f"RESET {name}")
            if str(conn.execute(f"SELECT current_setting('{name}')").fetchall()[0][0]) != value:
                conn.execute(f"SET {name} = '{_sql_str(value)}'")
        if race_ids is not None:
            conn.unregister("_fx_wanted")


def refresh_card_state(conn: duckdb.DuckDBPyConnection, *, force: bool = False) -> bool:
    """Store the running state race cards start from, unless it is current; return True if it was rebuilt.

    The state is the base stage of the whole history (every run's figures, every race's par aggregates) and
    the per-(key, race) totals of every group, exactly as the bulk build computes them.
    """
    if not force and feature_store.card_state_fingerprint(conn) == _warehouse_fingerprint(conn):
        return False
    started = time.perf_counter()
    steps = [*base_steps("races", "runners", "horses"), ("_fx_tgt", "SELECT race_id FROM _fx_race")]
    for name, (keys, rolling) in _groups().items():
        steps.extend(_group_steps(name, keys, rolling, ""))
    steps.extend(shrinkage.steps()[:2])
    try:
        _execute_steps(conn, steps)
        _save_card_state(conn)
    except duckdb.Error as exc:
        raise FeatureBuildError(f"Building the race-card state failed: {exc}") from exc
    finally:
        _cleanup(conn)
    logger.info("Stored the race-card state in %.2f s", time.perf_counter() - started)
    return True


# a card's rows take the canonical columns (less the source label and the going as the source wrote it)
_RACE_COLS = tuple(c for c in RACE_COLUMNS if c not in ("source", "going_raw"))
_RUNNER_COLS = tuple(RUNNER_COLUMNS)
_HORSE_COLS = ("horse_id", "sire", "dam", "damsire", "sex", "foaled_year")


def _card_records(card: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The card's race record, its declared runners (results cleared) and its horse records, validated."""
    if "race" not in card or "runners" not in card:
        raise FeatureBuildError("A race card needs a 'race' record and a list of 'runners'.")
    race = dict(card["race"])
    for col in ("race_id", "date", "track", "distance_m", "surface"):
        if race.get(col) is None:
            raise FeatureBuildError(f"The race card has no '{col}'.")
    race_id = race["race_id"]
    race = {c: race.get(c) for c in _RACE_COLS}
    race["date"] = pd.Timestamp(race["date"]).date()
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
    horses = [{c: h.get(c) for c in _HORSE_COLS} for h in card.get("horses", [])]
    return race, rows, horses


def _card_frames(
    race: Mapping[str, Any], runners: list[dict[str, Any]], horses: list[dict[str, Any]]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The card's records as the frames the SQL card path registers."""
    return (
        pd.DataFrame([race], columns=list(_RACE_COLS)),
        pd.DataFrame(runners, columns=list(_RUNNER_COLS)),
        pd.DataFrame(horses, columns=list(_HORSE_COLS)),
    )


_CARD_RACES = """(
    SELECT CAST(race_id AS VARCHAR) AS race_id, CAST(date AS DATE) AS date, CAST(track AS VARCHAR) AS track,
           CAST(country AS VARCHAR) AS country, CAST(race_no AS INTEGER) AS race_no,
           CAST(off_time AS VARCHAR) AS off_time, CAST(distance_m AS INTEGER) AS distance_m,
           CAST(surface AS VARCHAR) AS surface, CAST(going AS VARCHAR) AS going,
           CAST(race_class AS VARCHAR) AS race_class, CAST(rating_band AS VARCHAR) AS rating_band,
           CAST(prize AS DOUBLE) AS prize, CAST(course_config AS VARCHAR) AS course_config,
           CAST(section_distances_m AS INTEGER[]) AS section_distances_m
    FROM {src})"""
# The race has not been run: results are unknown whatever the card says.
_CARD_RUNNERS = """(
    SELECT CAST(race_id AS VARCHAR) AS race_id, CAST(horse_id AS VARCHAR) AS horse_id,
           CAST(horse_name AS VARCHAR) AS horse_name, CAST(saddle_no AS INTEGER) AS saddle_no,
           CAST(draw AS INTEGER) AS draw, CAST(jockey_id AS VARCHAR) AS jockey_id,
           CAST(trainer_id AS VARCHAR) AS trainer_id, CAST(age AS INTEGER) AS age, CAST(sex AS VARCHAR) AS sex,
           CAST(carried_weight_lbs AS DOUBLE) AS carried_weight_lbs,
           CAST(horse_weight_lbs AS DOUBLE) AS horse_weight_lbs, CAST(rating AS DOUBLE) AS rating,
           CAST(gear AS VARCHAR) AS gear, CAST(NULL AS VARCHAR) AS status, CAST(NULL AS INTEGER) AS finish_position,
           CAST(NULL AS DOUBLE) AS margin_lengths, CAST(NULL AS DOUBLE) AS finish_time_s,
           CAST(NULL AS INTEGER[]) AS running_positions, CAST(NULL AS DOUBLE[]) AS section_times_s,
           CAST(win_odds AS DOUBLE) AS win_odds, CAST(place_odds AS DOUBLE) AS place_odds
    FROM {src})"""
_CARD_HORSES = """(
    SELECT horse_id, sire, dam, damsire, sex, foaled_year FROM horses
    WHERE horse_id IN (SELECT CAST(horse_id AS VARCHAR) FROM {runners})
    UNION ALL
    SELECT CAST(horse_id AS VARCHAR), CAST(sire AS VARCHAR), CAST(dam AS VARCHAR), CAST(damsire AS VARCHAR),
           CAST(sex AS VARCHAR), CAST(foaled_year AS INTEGER)
    FROM {src} WHERE CAST(horse_id AS VARCHAR) NOT IN (SELECT horse_id FROM horses))"""


def _history_before(conn: duckdb.DuckDBPyConnection, race: pd.Series, cutoff: date) -> tuple[int, str]:
    """The stored races that start before the card's race and are dated on or before ``cutoff``.

    Returns (the race_seq to give the card's race, a predicate on race_seq selecting those races). The
    stored start order is a prefix of the full order, so this is ``race_seq <= n`` (minus the card's own
    race if the warehouse holds it with an earlier start key).
    """
    row = conn.execute(
        """
        WITH allr AS (
            SELECT date, race_no, off_time, race_id, race_seq FROM feature_state_race
            WHERE date <= $cutoff AND race_id <> $race_id
            UNION ALL SELECT $date, $race_no, $off_time, $race_id, NULL
        ), s AS (
            SELECT race_seq, row_number() OVER (ORDER BY date, race_no NULLS LAST, off_time NULLS LAST, race_id) AS s
            FROM allr
        )
        SELECT coalesce(max(race_seq) FILTER (WHERE s < (SELECT s FROM s WHERE race_seq IS NULL)), 0),
               (SELECT max(race_seq) FROM feature_state_race WHERE race_id = $race_id)
        FROM s
        """,
        {
            "cutoff": cutoff,
            "race_id": str(race["race_id"]),
            "date": race["date"],
            "race_no": None if pd.isna(race["race_no"]) else int(race["race_no"]),
            "off_time": None if pd.isna(race["off_time"]) else str(race["off_time"]),
        },
    ).fetchall()[0]
    last_seq, own_seq = int(row[0]), row[1]
    where = f"race_seq <= {last_seq}"
    if own_seq is not None and own_seq < last_seq:
        where += f" AND race_seq <> {int(own_seq)}"
    return last_seq, where


# A card's race follows every stored race it may see, so each horse window of the bulk build (frame: the
# horse's earlier runs of a partition, or its last N) is, for the card's row, an aggregate over the stored
# runs of the card's horses before the card, filtered to that frame. race_seq_h numbers a horse's runs
# (1, 2, ...) and the stored runs before the card are a prefix of them, so last_h is its last run.
_CARD_FRAMES = {
    "wh": "race_seq_h = last_h",  # only lag(x): the value of the last run
    "wa": "TRUE",
    "w5": "race_seq_h > last_h - 5",
    "w3": "race_seq_h > last_h - 3",
    "wd": "dist_band IS NOT DISTINCT FROM c_dist_band",
    "wt": "track IS NOT DISTINCT FROM c_track",
    "wg": "going IS NOT DISTINCT FROM c_going",
    "ws": "surface IS NOT DISTINCT FROM c_surface",
    "wj": "jockey_id IS NOT DISTINCT FROM c_jockey_id",
}
_WINDOW_CALL = re.compile(r"\b(\w+)\(([^()]*)\) OVER (w\w+)\b")


def _card_horse_steps(last_seq: int, keys: Mapping[str, str]) -> list[Step]:
    """The horse stage (_fx_h) of a card: the bulk build's window expressions, each window call replaced by
    the same aggregate over the card horses' stored runs, filtered to the window's frame (_CARD_FRAMES)."""
    calls: dict[str, str] = {}

    def aggregate(match: re.Match[str]) -> str:
        func, arg, window = match.groups()
        if (func == "lag") != (window == "wh"):
            raise FeatureBuildError(f"No card form for the window call {match.group(0)!r}.")
        if func == "lag":
            func = "max"  # the one run of the frame
        if arg == "*":
            arg = "race_seq"  # a first starter's row of the LEFT JOIN has no run
        frame = _CARD_FRAMES[window]
        call = f"{func}({arg})" if frame == "TRUE" else f"{func}(CASE WHEN {frame} THEN {arg} END)"
        return calls.setdefault(call, f"_a{len(calls)}")

    exprs = [_WINDOW_CALL.sub(aggregate, e) for e in _horse_exprs()]
    today = ", ".join(f"{c} AS c_{c}" for c in ("dist_band", "track", "going", "surface", "jockey_id"))
    hist = f"""
    SELECT horse_id, race_seq, race_seq_h, {", ".join(_HORSE_INPUTS)},
           max(race_seq_h) OVER (PARTITION BY horse_id) AS last_h
    FROM feature_state_run
    WHERE {keys["horse_id"]} AND race_seq <= {int(last_seq)}
    """
    aggs = f"""
    SELECT c.race_id, c.horse_id, {", ".join(f"{call} AS {name}" for call, name in calls.items())}
    FROM (SELECT race_id, horse_id, {today} FROM _fx_run) c LEFT JOIN _fx_hist h ON h.horse_id = c.horse_id
    GROUP BY c.race_id, c.horse_id
    """
    horse = f"SELECT race_id, horse_id, {', '.join(exprs)} FROM _fx_run JOIN _fx_ha USING (race_id, horse_id)"
    return [("_fx_hist", hist), ("_fx_ha", aggs), ("_fx_h", horse)]


def _card_group_steps(last_seq: int, keys: Mapping[str, str]) -> list[Step]:
    """Each group's totals (_fx_g_<name>) for the card's keys: the bulk build's window sums over a key's earlier
    (key, race) rows are, for the card's race, sums over the stored rows of that key (the last N if rolling).

    ``keys``: column -> a predicate selecting the card's values of it (``_key_filters``).
    """
    steps: list[Step] = []
    for name, (cols, rolling) in _groups().items():
        k = ", ".join(cols)
        rows = f"feature_state_ga_{name} WHERE race_seq <= {int(last_seq)} AND {' AND '.join(keys[c] for c in cols)}"
        if rolling is not None:  # the key's last `rolling` (key, race) rows: k_n numbers them 1, 2, ...
            rows = (
                f"(SELECT * FROM {rows}) s JOIN (SELECT {k}, count(*) AS last_n FROM {rows} GROUP BY {k})"
                f" USING ({k}) WHERE k_n > last_n - {rolling}"
            )
        steps.append(
            (
                f"_fx_g_{name}",
                f"""
        SELECT {", ".join(f"{c} AS k_{c}" for c in cols)}, {int(last_seq) + 1} AS k_race_seq,
               sum(n) AS n_b, sum(w) AS w_b, sum(p) AS p_b, sum(fs) AS fs_b, sum(fn) AS fn_b
        FROM {rows} GROUP BY {k}
        """,
            )
        )
    # the fitted m of the last race with changes before the card (a row 0 holds the defaults of no history)
    steps.append(
        (
            "_fx_mom",
            f"""
    SELECT {int(last_seq) + 1} AS race_seq, * EXCLUDE (race_seq)
    FROM (SELECT * FROM feature_state_mom WHERE race_seq <= {int(last_seq)} ORDER BY race_seq DESC LIMIT 1)
    """,
        )
    )
    return steps


def _card_base(names: Mapping[str, str], last_seq: int) -> list[Step]:
    """The card's own base rows (_fx_run), on the stored pars of the races race_seq <= last_seq."""
    return card_base_steps(
        _CARD_RACES.format(src=names["races"]),
        _CARD_RUNNERS.format(src=names["runners"]),
        _CARD_HORSES.format(src=names["horses"], runners=names["runners"]),
        last_seq=last_seq,
    )


def _card_statements(last_seq: int, keys: Mapping[str, str]) -> list[Step]:
    """The statements of one card after its base rows (_fx_run), down to _fx_out: each one WITH query.

    Groups of small relations run as one statement each (a statement costs ~1-2 ms however small); the wide
    runner rows are materialised between stages (in one WITH query the join and field stages over them plan
    and run about 3x slower than step by step).
    """
    groups = _card_group_steps(last_seq, keys)
    *output, final = _output_steps(packed_groups=True)
    output = dict(output)
    return [
        ("_fx_tgt", "SELECT DISTINCT race_id FROM _fx_run"),
        ("_fx_gs", _with_query([*groups[:-1], ("_fx_gs", output.pop("_fx_gs"))])),
        groups[-1],  # _fx_mom
        ("_fx_h", _with_query(_card_horse_steps(last_seq, keys))),
        *output.items(),
        final,
    ]


def _run_card(conn: duckdb.DuckDBPyConnection, names: Mapping[str, str], last_seq: int) -> pd.DataFrame:
    """The card's base rows, then (their keys as constants) every later statement; the features as a frame."""
    conn.execute(f"CREATE OR REPLACE TEMP TABLE _fx_run AS {_with_query(_card_base(names, last_seq))}")
    *statements, (_name, final) = _card_statements(last_seq, _key_filters(conn))
    _execute_steps(conn, statements)
    # as the bulk build copies its result out (Arrow), which is also faster than .df() for 150 columns
    out = conn.sql(final).to_arrow_table().to_pandas(split_blocks=True, date_as_object=False)
    out["race_date"] = out["race_date"].astype("datetime64[us]")
    return out


def _key_columns() -> tuple[str, ...]:
    cols = {c: None for keys, _rolling in _groups().values() for c in keys}
    return ("horse_id", *cols)


def _key_filters(conn: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """For each key column of the card's rows (_fx_run), a predicate selecting its values, as constants.

    A lookup filtered by constants reads only the stored rows of the card's horses and keys (a filter on a
    join with the card's rows would read them all); NULL keys match nothing, as in the bulk build's joins.
    """
    cols = _key_columns()
    rows = conn.execute(f"SELECT {', '.join(cols)} FROM _fx_run").fetchall()
    out = {}
    for i, col in enumerate(cols):
        values = sorted({row[i] for row in rows if row[i] is not None})
        if not values:
            out[col] = "FALSE"
            continue
        literals = [str(int(v)) if isinstance(v, int) else f"'{_sql_str(v)}'" for v in values]
        out[col] = f"{col} IN ({', '.join(literals)})"
    return out


def _card_steps_by_windows(names: Mapping[str, str], last_seq: int, before: str) -> list[Step]:
    """The bulk build's window steps over (stored rows before the card) + (the card's rows).

    Used when the card's own race is stored with an earlier start key (a hole in the card's history), where
    the stored running numbers (race_seq_h, k_n, the shrinkage totals) do not apply.
    """

    def group_aggs(name: str, keys: tuple[str, ...]) -> str:
        k = ", ".join(keys)
        return (
            f"(SELECT * FROM feature_state_ga_{name} SEMI JOIN (SELECT DISTINCT {k} FROM _fx_ga_{name}) USING ({k})"
            f" WHERE {before} UNION ALL BY NAME SELECT * FROM _fx_ga_{name})"
        )

    return [
        *base_steps(
            _CARD_RACES.format(src=names["races"]),
            _CARD_RUNNERS.format(src=names["runners"]),
            _CARD_HORSES.format(src=names["horses"], runners=names["runners"]),
            seq_offset=last_seq,
            race_aggs=f"(SELECT * FROM feature_state_rta WHERE {before} UNION ALL BY NAME SELECT * FROM _fx_rta)",
            class_aggs=f"(SELECT * FROM feature_state_cpa WHERE {before} UNION ALL BY NAME SELECT * FROM _fx_cpa)",
        ),
        ("_fx_tgt", "SELECT race_id FROM _fx_race"),
        *_target_steps(
            group_aggs,
            f"(SELECT * FROM feature_state_run WHERE {before} AND horse_id IN (SELECT horse_id FROM _fx_run)"
            " UNION ALL BY NAME SELECT * FROM _fx_run)",
            f"(SELECT * FROM feature_state_moma WHERE {before} UNION ALL BY NAME SELECT * FROM _fx_moma)",
            "_fx_momc",
        ),
    ]


@contextlib.contextmanager
def _windows_aggregate_arithmetic(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Aggregates computed as window functions compute them.

    DuckDB's aggregate_function_rewriter turns a plain avg(DECIMAL) into sum / count in DOUBLE, which can
    differ in the last bit from avg's own division (that window functions always use); the card's
    aggregates stand for the bulk build's windows, so the rewrite is switched off for the card's query.
    """
    previous = str(conn.execute("SELECT current_setting('disabled_optimizers')").fetchall()[0][0])
    names = [n for n in previous.split(",") if n.strip()]
    conn.execute(f"SET disabled_optimizers = '{_sql_str(','.join([*names, 'aggregate_function_rewriter']))}'")
    try:
        yield
    finally:
        conn.execute(f"SET disabled_optimizers = '{_sql_str(previous)}'")


def _with_query(steps: Sequence[Step]) -> str:
    """The steps as one statement: each relation a CTE, the last one selected."""
    *ctes, (_last, final) = steps
    if not ctes:
        return final
    if final.lstrip().upper().startswith("WITH"):
        final = f"SELECT * FROM ({final})"
    return "WITH " + ", ".join(f"{name} AS ({sql})" for name, sql in ctes) + f" {final}"


def features_for_card(
    conn: duckdb.DuckDBPyConnection,
    card: Mapping[str, Any],
    as_of: date | datetime | str | None = None,
    *,
    compiled: bool = True,
) -> pd.DataFrame:
    """Features of one new race card: the bulk build's statements on the stored state plus the card's rows.

    ``card`` = {"race": {race columns}, "runners": [{runner columns}], "horses": [{horse_id, sire, dam,
    damsire, sex, foaled_year}] (optional, for horses not yet in the warehouse)}. Only races that start before
    the card's race and are dated on or before ``as_of`` (default: the race date) are used.

    The stored state (``refresh_card_state``: every run's base figures, every race's par aggregates, every
    group's per-(key, race) totals, the shrinkage fit's running totals) is rebuilt first if the warehouse
    changed since. The card's race comes after every race it may see, so each cumulative window of the bulk
    build is, for the card's rows, an aggregate over stored rows (the card's horses' runs, its keys' totals):
    one query with the bulk build's expressions, its windows as those aggregates, gives the card exactly the
    features the bulk build gives that race.

    By default the same expressions run compiled to numpy on the stored state held in memory
    (``card_engine``, ~100x less fixed cost than DuckDB's per expression); cards it does not handle, and every
    card with ``compiled=False`` (the reference it is tested against), take the SQL statements.
    """
    started = time.perf_counter()
    race, runner_rows, horse_rows = _card_records(card)
    race_date = race["date"]
    cutoff = pd.Timestamp(as_of).date() if as_of is not None else race_date
    cutoff = min(cutoff, race_date)
    out = (
        card_engine.card_features(conn, race, runner_rows, horse_rows, cutoff, _card_state_hooks())
        if compiled
        else None
    )
    path = "compiled"
    if out is None:
        path = "SQL"
        out = _sql_card_features(conn, race, runner_rows, horse_rows, cutoff)
    elapsed_ms = (time.perf_counter() - started) * 1000
    logger.debug("Race card %s: %d runners in %.1f ms (%s)", race["race_id"], len(out), elapsed_ms, path)
    return out


def _sql_card_features(
    conn: duckdb.DuckDBPyConnection,
    race: Mapping[str, Any],
    runner_rows: list[dict[str, Any]],
    horse_rows: list[dict[str, Any]],
    cutoff: date,
) -> pd.DataFrame:
    """The card's features from the bulk build's SQL statements (the reference path of ``features_for_card``)."""
    races, runners, horses = _card_frames(race, runner_rows, horse_rows)
    refresh_card_state(conn)
    last_seq, before = _history_before(conn, races.iloc[0], cutoff)
    tag = uuid.uuid4().hex[:8]
    names = {k: f"_fx_card_{k}_{tag}" for k in ("races", "runners", "horses")}
    for key, frame in (("races", races), ("runners", runners), ("horses", horses)):
        conn.register(names[key], frame)
    try:
        if " AND " in before:
            # step by step: one WITH query of the window steps plans and runs about 3x slower
            _execute_steps(conn, _card_steps_by_windows(names, last_seq, before))
            out = conn.execute("SELECT * FROM _fx_out").df()
        else:
            with _windows_aggregate_arithmetic(conn):
                out = _run_card(conn, names, last_seq)
    except duckdb.Error as exc:
        raise FeatureBuildError(f"The race-card features failed: {exc}") from exc
    finally:
        for key in names:
            conn.unregister(names[key])
    out["race_seq"] = out["race_seq"].astype("int64")
    return out


def _card_state_hooks() -> card_engine.StateHooks:
    return card_engine.StateHooks(fingerprint=_warehouse_fingerprint, refresh=refresh_card_state)


def _sql_str(value: object) -> str:
    return str(value).replace("'", "''")


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The feature columns of a built frame (everything after the keys)."""
    return [c for c in frame.columns if c not in ("race_id", "horse_id", "race_date", "race_seq")]


__all__ = [
    "FeatureBuildError",
    "build_features",
    "built_features",
    "feature_columns",
    "feature_version",
    "features_for_card",
    "refresh_card_state",
]
