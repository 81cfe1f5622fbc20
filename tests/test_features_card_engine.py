"""The compiled race-card engine: bit for bit the features of the SQL card path and of the bulk build."""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from features_helpers import (
    card_of,
    copy_warehouse,
    mismatched_columns,
    warehouse_from_folder,
    warehouse_from_simulation,
)
from racequant.features import build_features, card_engine, features_for_card
from racequant.features.build import _card_state_hooks

HK_1997 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hkjc-1997-2005"
ENGINE_LOG = "racequant.features.card_engine"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory):
    conn = warehouse_from_simulation(400, 23, tmp_path_factory.mktemp("sim_engine"))
    full = build_features(conn)
    yield conn, full
    conn.close()


def _compiled(
    conn: duckdb.DuckDBPyConnection, card: dict, caplog: pytest.LogCaptureFixture, as_of=None
) -> pd.DataFrame:
    """The card through the compiled engine, failing if it fell back to the SQL path."""
    with caplog.at_level(logging.INFO, logger=ENGINE_LOG):
        caplog.clear()
        frame = features_for_card(conn, card, as_of)
        fallbacks = [r.getMessage() for r in caplog.records if "takes the SQL path" in r.getMessage()]
    assert fallbacks == []
    return frame


def _assert_same_as_sql_and_bulk(conn, full, race_ids, caplog) -> None:
    for race_id in race_ids:
        card = card_of(conn, race_id)
        fast = _compiled(conn, card, caplog)
        sql = features_for_card(conn, card, compiled=False)
        bulk = full[full["race_id"] == race_id].reset_index(drop=True)
        assert mismatched_columns(sql, fast) == {}, race_id
        assert mismatched_columns(bulk, fast) == {}, race_id
        assert list(fast.columns) == list(sql.columns)
        assert (fast.dtypes == sql.dtypes).all()


def test_compiled_cards_equal_the_sql_path_and_the_bulk_build_on_simulated_races(simulated, caplog):
    conn, full = simulated
    race_ids = full["race_id"].drop_duplicates().tolist()
    picked = [*race_ids[:3], *random.Random(5).sample(race_ids[3:-1], 20), race_ids[-1]]
    _assert_same_as_sql_and_bulk(conn, full, picked, caplog)
    # the sample covers the cases the engine must get right
    rows = full[full["race_id"].isin(picked)]
    assert (rows["runs_count"] == 0).any()  # first-time starters
    assert (rows["runs_count"] >= 5).any()  # full last-5 windows
    assert rows["speed_std_l5"].notna().any() and rows["speed_trend"].notna().any()


def _edge_card(conn: duckdb.DuckDBPyConnection) -> dict:
    """A new race after the last stored day: known horses, a first starter with a known sire, one without any
    horse record, an unknown jockey, a withdrawn runner, tied ratings and odds, missing values."""
    last = conn.execute("SELECT race_id FROM races ORDER BY date DESC, race_no DESC LIMIT 1").fetchone()[0]
    card = card_of(conn, last)
    day = pd.Timestamp(card["race"]["date"]) + timedelta(days=3)
    card["race"] = {**card["race"], "race_id": "EDGE-1", "date": day, "race_no": 1}
    runners = [{**r, "race_id": "EDGE-1"} for r in card["runners"] if r.get("status") != "withdrawn"][:8]
    sire = conn.execute("SELECT sire FROM horses WHERE sire IS NOT NULL LIMIT 1").fetchone()[0]
    template = dict(runners[0])
    runners += [
        {**template, "horse_id": "NEW-STARTER", "horse_name": "New Starter", "draw": 11, "jockey_id": "J-UNKNOWN"},
        {**template, "horse_id": "NO-RECORD", "horse_name": "No Record", "draw": 12, "sex": None, "age": None},
        {**template, "horse_id": "GONE", "status": "withdrawn", "draw": 13},
    ]
    runners[1]["rating"] = runners[2]["rating"] = runners[0]["rating"]  # ties in the field ranks
    runners[1]["win_odds"] = runners[2]["win_odds"] = runners[0]["win_odds"]
    runners[3].update(rating=None, draw=None, win_odds=None, carried_weight_lbs=None, horse_weight_lbs=None)
    card["runners"] = runners
    card["horses"] = [{"horse_id": "NEW-STARTER", "sire": sire, "dam": "D-NEW", "sex": "G", "foaled_year": 2015}]
    return card


def test_an_edge_card_equals_the_sql_path_and_the_bulk_build_of_the_warehouse_holding_it(simulated, caplog):
    conn, _full = simulated
    card = _edge_card(conn)
    fast = _compiled(conn, card, caplog)
    sql = features_for_card(conn, card, compiled=False)
    assert mismatched_columns(sql, fast) == {}
    by_horse = fast.set_index("horse_id")
    assert "GONE" not in by_horse.index
    assert by_horse.loc["NEW-STARTER", "first_start"] == 1.0 and pd.isna(by_horse.loc["NEW-STARTER", "speed_last"])
    assert by_horse.loc["NEW-STARTER", "sire_runs"] > 0 and by_horse.loc["NEW-STARTER", "jockey_rides"] == 0
    assert pd.isna(by_horse.loc["NO-RECORD", "sire_runs"]) and pd.isna(by_horse.loc["NO-RECORD", "age"])
    assert fast["rating_rank_in_field"].value_counts().max() >= 3  # the three tied ratings share a rank
    # the bulk build of a warehouse holding the card's race gives the same rows (a race's own results never
    # reach its features: the warehouse needs a status, any will do)
    held = copy_warehouse(conn)
    frames = {
        "races": pd.DataFrame([card["race"]]),
        "runners": pd.DataFrame(card["runners"]).assign(
            status=lambda f: f["status"].where(f["status"] == "withdrawn", "finished"),
            finish_position=None,
            finish_time_s=None,
            margin_lengths=None,
            running_positions=None,
            section_times_s=None,
        ),
        "horses": pd.DataFrame(card["horses"]),
    }
    for table, frame in frames.items():
        cols = [r[0] for r in held.execute(f"DESCRIBE {table}").fetchall()]
        held.register("_new", frame.reindex(columns=cols))
        held.execute(f"INSERT INTO {table} SELECT * FROM _new")
        held.unregister("_new")
    bulk = build_features(held)
    assert mismatched_columns(bulk[bulk["race_id"] == "EDGE-1"].reset_index(drop=True), fast) == {}


def test_a_compiled_card_seen_from_an_earlier_day_equals_the_sql_path(simulated, caplog):
    conn, full = simulated
    dates = sorted(full["race_date"].dt.date.unique())
    race_id = full.loc[full["race_date"].dt.date == dates[-1], "race_id"].iloc[-1]
    card = card_of(conn, race_id)
    for as_of in (dates[len(dates) // 3], dates[-2], dates[0] - timedelta(days=1)):
        fast = _compiled(conn, card, caplog, as_of=as_of)
        assert mismatched_columns(features_for_card(conn, card, as_of, compiled=False), fast) == {}
    assert mismatched_columns(fast, features_for_card(conn, card)) != {}  # the cut matters


def test_a_wrong_stored_value_changes_the_compiled_card(simulated, caplog):
    conn, full = simulated
    race_id = full.loc[full["runs_count"] >= 3, "race_id"].iloc[-1]
    card = card_of(conn, race_id)
    engine = card_engine.engine_for(conn, _card_state_hooks())
    horse = full.loc[(full["race_id"] == race_id) & (full["runs_count"] >= 3), "horse_id"].iloc[0]
    start, end = engine.run_index[horse]
    fig = engine.runs["fig"]
    seq = int(full.loc[full["race_id"] == race_id, "race_seq"].iloc[0])
    last = start + int(np.searchsorted(engine.runs["race_seq"].v[start:end], seq - 1, "right")) - 1  # its last run
    saved = fig.v[last], fig.null[last]
    try:
        fig.v[last], fig.null[last] = 77_123_456, False  # a figure of 77.123456 the bulk build never gave
        wrong = _compiled(conn, card, caplog)
    finally:
        fig.v[last], fig.null[last] = saved
    diff = mismatched_columns(features_for_card(conn, card, compiled=False), wrong)
    assert "speed_last" in diff and "speed_last_3_avg" in diff
    assert mismatched_columns(features_for_card(conn, card, compiled=False), _compiled(conn, card, caplog)) == {}


def test_values_the_engine_does_not_type_take_the_sql_path(simulated, caplog):
    conn, full = simulated
    card = card_of(conn, full["race_id"].iloc[-1])
    card["runners"][0]["jockey_id"] = 12345  # the SQL path casts it to VARCHAR '12345'
    with caplog.at_level(logging.INFO, logger=ENGINE_LOG):
        frame = features_for_card(conn, card)
    assert any("takes the SQL path" in r.getMessage() for r in caplog.records)
    assert mismatched_columns(features_for_card(conn, card, compiled=False), frame) == {}


def test_the_engine_is_kept_until_the_warehouse_changes(tmp_path: Path):
    conn = warehouse_from_simulation(60, 3, tmp_path)
    hooks = _card_state_hooks()
    first = card_engine.engine_for(conn, hooks)
    assert card_engine.engine_for(conn, hooks) is first
    assert card_engine.engine_for(copy_warehouse(conn), hooks) is not first  # another in-memory database
    conn.execute("DELETE FROM runners WHERE race_id = (SELECT max(race_id) FROM races)")
    assert card_engine.engine_for(conn, hooks) is not first


def test_connections_to_one_warehouse_file_share_the_engine(tmp_path: Path):
    memory = warehouse_from_simulation(60, 4, tmp_path / "sim")
    path = tmp_path / "w.duckdb"
    memory.execute(f"ATTACH '{path}' AS f")
    memory.execute("COPY FROM DATABASE memory TO f")
    memory.execute("DETACH f")
    hooks = _card_state_hooks()
    writer = duckdb.connect(str(path))
    shared = card_engine.engine_for(writer, hooks)
    per_request = duckdb.connect(str(path))  # as the API's per-request connections
    assert card_engine.engine_for(per_request, hooks) is shared
    per_request.close()
    writer.execute("DELETE FROM runners WHERE race_id = (SELECT max(race_id) FROM races)")
    changed = card_engine.engine_for(duckdb.connect(str(path)), hooks)
    assert changed is not shared
    writer.close()
    # a read-only connection is checked once: while it is open no process can write the file
    calls = []
    counting = card_engine.StateHooks(
        fingerprint=lambda c: calls.append(1) or hooks.fingerprint(c), refresh=hooks.refresh
    )
    reader = duckdb.connect(str(path), read_only=True)
    assert card_engine.engine_for(reader, counting) is changed
    assert card_engine.engine_for(reader, counting) is changed
    assert len(calls) == 1


@pytest.mark.parametrize(
    "expr",
    [
        "CAST(x AS DOUBLE)",
        "CAST(y AS DOUBLE) - x",
        "z * y",
        "(z * y)::DOUBLE - x",
        "x / y",
        "y - z",
        "CAST(d AS DECIMAL(18, 6))",
        "CAST(d * 1000 AS DECIMAL(18, 2))",
        "greatest(0, d - 5) / nullif(z, 0)",
        "CASE WHEN d > 0.5 THEN y WHEN d < 0.1 THEN 1.0 END",
        "coalesce(z, y, 0) + 0.57 * d",
        "list_avg([x, y, z])",
        "list_stddev_samp([d, d * 3, CAST(y AS DOUBLE), 0.1])",
        "list_sum(list_transform([d, d + 1, d * 7], lambda v: 1.0 / v))",
        "1 + len(list_filter([d, 0.5, 0.25, d], lambda v: v > 0.3))",
    ],
)
def test_compiled_expressions_compute_what_duckdb_computes(expr: str):
    rng = np.random.default_rng(abs(hash(expr)) % 2**32)
    n = 400
    data = pd.DataFrame(
        {
            "x": [f"{v / 10**12:.12f}" for v in rng.integers(-(10**17), 10**17, n)],  # beyond 2**53 scaled
            "y": [f"{v / 10**4:.4f}" for v in rng.integers(-(10**9), 10**9, n)],
            "z": [None if i % 7 == 0 else f"{v / 10**6:.6f}" for i, v in enumerate(rng.integers(-(10**9), 10**9, n))],
            "d": rng.random(n) * 3,
        }
    )
    conn = duckdb.connect()
    conn.register("src", data)
    conn.execute(
        "CREATE TABLE t AS SELECT CAST(x AS DECIMAL(38, 12)) AS x, CAST(y AS DECIMAL(18, 4)) AS y,"
        " CAST(z AS DECIMAL(18, 6)) AS z, d FROM src"
    )
    expected = conn.execute(f"SELECT CAST({expr} AS DOUBLE) FROM t").fetchnumpy()
    expected = np.ma.filled(next(iter(expected.values())).astype(float), np.nan)
    cols = card_engine._fetch(conn, "t", "rowid")
    fn = card_engine.compile_expr(card_engine.parse_exprs([f"CAST({expr} AS DOUBLE) AS out"])[0])
    with np.errstate(all="ignore"):
        got = fn(card_engine.Ctx(n, cols, None))
    got_v = np.broadcast_to(np.where(got.null, np.nan, got.v), (n,))
    same = (got_v.view(np.int64) == expected.view(np.int64)) | (np.isnan(got_v) & np.isnan(expected))
    assert same.all(), (expr, np.flatnonzero(~same)[:5])


@pytest.mark.slow
@pytest.mark.realdata
def test_real_data_compiled_cards_equal_the_sql_path_and_the_bulk_build(caplog):
    if not HK_1997.exists():
        pytest.skip(f"The real data set is not at {HK_1997}")
    conn = warehouse_from_folder(HK_1997, "hkjc-kaggle")
    full = build_features(conn)
    race_ids = full["race_id"].drop_duplicates().tolist()
    fourteen = full.groupby("race_id").size()
    picked = [
        race_ids[0],
        *random.Random(7).sample(race_ids[1:], 25),
        fourteen[fourteen == 14].index.max(),  # the benchmark's card
        race_ids[-1],
    ]
    _assert_same_as_sql_and_bulk(conn, full, picked, caplog)
    card = card_of(conn, race_ids[-1])
    as_of = pd.Timestamp(full["race_date"].max()).date() - timedelta(days=100)
    fast = _compiled(conn, card, caplog, as_of=as_of)
    assert mismatched_columns(features_for_card(conn, card, as_of, compiled=False), fast) == {}


def test_feature_sql_the_compiler_does_not_know_sends_every_card_to_sql_with_one_warning(tmp_path, monkeypatch, caplog):
    conn = warehouse_from_simulation(40, 8, tmp_path)
    card = card_of(conn, conn.execute("SELECT max(race_id) FROM races").fetchone()[0])

    def unknown(cls):  # as if a feature used a function the compiler does not know
        raise card_engine.Unsupported("function some_new_function")

    card_engine._compiled.cache_clear()
    monkeypatch.setattr(card_engine.Program, "compile", classmethod(unknown))
    try:
        with caplog.at_level(logging.INFO, logger=ENGINE_LOG):
            frames = [features_for_card(conn, card) for _ in range(2)]
    finally:
        monkeypatch.undo()
        card_engine._compiled.cache_clear()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "does not compile" in r.getMessage()]
    assert len(warnings) == 1
    assert mismatched_columns(features_for_card(conn, card, compiled=False), frames[1]) == {}
