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


def _case_table(k: list[float | None]) -> tuple[duckdb.DuckDBPyConnection, dict[str, card_engine.Col]]:
    """A table of DOUBLE, DECIMAL and VARCHAR values with NULLs, and the condition column k."""
    rng = np.random.default_rng(len(k))
    n = len(k)
    data = pd.DataFrame(
        {
            "k": k,
            "d": [None if i % 5 == 0 else float(v) for i, v in enumerate(rng.random(n) * 10)],
            "y": [None if i % 4 == 1 else f"{v / 10**4:.4f}" for i, v in enumerate(rng.integers(-(10**8), 10**8, n))],
            "s": [None if i % 6 == 2 else f"s{i}" for i in range(n)],
        }
    )
    conn = duckdb.connect()
    conn.register("src", data)
    conn.execute("CREATE TABLE t AS SELECT k::DOUBLE AS k, d::DOUBLE AS d, CAST(y AS DECIMAL(18, 4)) AS y, s FROM src")
    return conn, card_engine._fetch(conn, "t", "rowid")


@pytest.mark.parametrize(
    "k",
    [
        [1.0] * 30,  # the condition holds on every row: the THEN itself
        [None if i % 3 == 0 else (1.0 if i % 2 else -1.0) for i in range(30)],  # every branch, NULL conditions
        [-1.0] * 30,
        [None] * 30,
    ],
    ids=["all true", "mixed with nulls", "all false", "all null"],
)
@pytest.mark.parametrize(
    "expr",
    [
        "CASE WHEN k > 0 THEN d END",
        "CASE WHEN k > 0 THEN y ELSE d END",
        "CASE WHEN k IS NOT NULL THEN y * 2 ELSE 1.5 END",
        "CASE WHEN k > 0 THEN NULL ELSE d END",
        "CASE WHEN k > 0 THEN s ELSE 'no' END",
        "CASE WHEN k > 0 AND d > 1 THEN coalesce(y, 0) END",
    ],
)
def test_a_case_with_one_check_equals_the_general_case_and_duckdb(k, expr, monkeypatch):
    conn, cols = _case_table(k)
    n = len(k)
    fn = card_engine.compile_expr(card_engine.parse_exprs([f"{expr} AS out"])[0])
    with np.errstate(all="ignore"):
        fast = fn(card_engine.Ctx(n, cols, None))
        with monkeypatch.context() as m:  # the general path: np.where over every row
            m.setattr(card_engine, "_all_of", lambda *args: False)
            general = fn(card_engine.Ctx(n, cols, None))
    assert (fast.kind, fast.scale, fast.width) == (general.kind, general.scale, general.width)
    assert fast.v.dtype == general.v.dtype and fast.v.shape == general.v.shape
    assert fast.null.dtype == general.null.dtype and fast.null.shape == general.null.shape
    assert np.array_equal(fast.null, general.null)
    ok = ~general.null
    if general.kind == "str":
        assert fast.v[ok].tolist() == general.v[ok].tolist()
        expected = conn.execute(f"SELECT {expr} FROM t ORDER BY rowid").fetchnumpy()
        want = [None if v is None or v is pd.NA else v for v in next(iter(expected.values())).tolist()]
        assert [None if null else v for v, null in zip(fast.v.tolist(), fast.null.tolist(), strict=True)] == want
        return
    assert np.array_equal(fast.v[ok].view(np.int64), general.v[ok].view(np.int64))
    expected = conn.execute(f"SELECT CAST({expr} AS DOUBLE) FROM t ORDER BY rowid").fetchnumpy()
    expected = np.ma.filled(next(iter(expected.values())).astype(float), np.nan)
    got = card_engine.to_double(fast) if fast.kind != "null" else fast
    got_v = np.where(got.null, np.nan, got.v.astype(float))
    same = (got_v.view(np.int64) == expected.view(np.int64)) | (np.isnan(got_v) & np.isnan(expected))
    assert same.all(), (expr, np.flatnonzero(~same)[:5])


def test_the_one_check_case_takes_the_then_itself_where_the_condition_always_holds(monkeypatch):
    _conn, cols = _case_table([1.0] * 20)
    taken = []
    all_of = card_engine._all_of
    monkeypatch.setattr(card_engine, "_all_of", lambda *args: taken.append(all_of(*args)) or taken[-1])
    fn = card_engine.compile_expr(card_engine.parse_exprs(["CASE WHEN k > 0 THEN d END AS out"])[0])
    out = fn(card_engine.Ctx(20, cols, None))
    assert taken == [True]
    assert out.v is cols["d"].v and out.null is cols["d"].null


def test_repeated_subexpressions_are_computed_once_with_the_values_of_each_alone():
    _conn, cols = _case_table([None if i % 3 == 0 else float(i % 4 - 1) for i in range(24)])
    exprs = [
        "coalesce(y, 0) + d AS a",
        "coalesce(y, 0) * 2 AS b",
        "CASE WHEN coalesce(y, 0) > 0 THEN list_avg([d, d * 3]) END AS c",
        "list_sum(list_transform([d, d + 1], lambda v: v + coalesce(y, 0))) AS e",  # inside a lambda: its own
        "list_avg([d, d * 3]) - coalesce(y, 0) AS f",
        "a + 1 AS g",
        "CASE WHEN coalesce(y, 0) > 0 THEN list_avg([d, d * 3]) END / 2 AS h",
    ]
    nodes = card_engine.parse_exprs(exprs)
    items = card_engine._items(nodes)
    ctx = card_engine.Ctx(24, cols, None)
    with np.errstate(all="ignore"):
        shared = card_engine._stage(ctx, items)
        assert len(ctx.shared) >= 3  # coalesce(y, 0), list_avg([d, d * 3]), the CASE
        alone_items = [(name, card_engine.compile_expr(node)) for (name, _fn), node in zip(items, nodes, strict=True)]
        alone = card_engine._stage(card_engine.Ctx(24, cols, None), alone_items)
    assert list(shared) == list(alone)
    for name, col in alone.items():
        got = shared[name]
        assert (got.kind, got.scale, got.v.shape, got.v.dtype) == (col.kind, col.scale, col.v.shape, col.v.dtype), name
        assert np.array_equal(got.null, col.null), name
        assert np.array_equal(got.v[~col.null], col.v[~col.null]), name


def _dec_to_double_one_by_one(v: np.ndarray, scale: int) -> np.ndarray:
    """DuckDB's DECIMAL -> DOUBLE as the engine first wrote it: integer part + fraction, value by value."""
    out = v.astype(np.float64) / 10.0**scale
    p = 10**scale
    for i, x in enumerate(v.tolist()):
        if abs(x) > 2**53:
            q = abs(x) // p * (1 if x >= 0 else -1)
            out[i] = float(q) + float(x - q * p) / 10.0**scale
    return out


@pytest.mark.parametrize("scale", [1, 4, 12, 18])
def test_wide_decimals_convert_to_double_as_value_by_value(scale):
    rng = np.random.default_rng(scale)
    v = np.concatenate(
        [
            rng.integers(-(2**62), 2**62, 500),
            rng.integers(-(2**54), 2**54, 500),
            np.array([2**53, 2**53 + 1, -(2**53) - 1, 2**63 - 1, -(2**63) + 1, 0, 1, -1], np.int64),
        ]
    )
    got = card_engine._dec_to_double(v, scale)
    assert np.array_equal(got.view(np.int64), _dec_to_double_one_by_one(v, scale).view(np.int64))


def test_prefix_totals_at_once_equal_each_total():
    rng = np.random.default_rng(5)
    rows = 300
    cols = {
        "a": card_engine.Col("int", rng.integers(0, 9, rows), np.zeros(rows, bool)),
        "b": card_engine.Col("dec", rng.integers(-(10**6), 10**6, rows), rng.random(rows) < 0.2, 2, 38),
        "c": card_engine.Col("int", rng.integers(0, 2, rows), rng.random(rows) < 0.5),
    }
    types = {"a": ("int", 0, 38), "b": ("dec", 2, 38), "c": ("int", 0, 38)}
    prefix = card_engine._Prefix.of(cols, np.arange(rows), ["a", "b", "c"], types)
    lo = rng.integers(0, rows, 40)
    hi = np.minimum(lo + rng.integers(0, 30, 40), rows)
    lo[:3], hi[:3] = 0, 0  # empty ranges: NULL totals
    for name, got in zip(prefix.sums, prefix.totals(lo, hi), strict=True):
        want = prefix.total(name, lo, hi)
        assert (got.kind, got.scale, got.width) == (want.kind, want.scale, want.width)
        assert np.array_equal(got.v, want.v) and np.array_equal(got.null, want.null)


def test_output_strings_are_the_arrays_pandas_builds():
    values = np.array(["a", None, "b", "", "a"], dtype=object)
    got = card_engine._strings(values)
    want = pd.array(values, dtype="str")
    assert got.dtype == want.dtype
    pd.testing.assert_extension_array_equal(got, want)


def test_row_values_by_tolist_equal_each_value():
    c = card_engine.Col("str", np.array(["x", None, "y"], dtype=object), np.array([False, True, False]))
    d = card_engine.Col("dec", np.array([5, 7, -3], np.int64), np.array([False, False, True]), 1, 18)
    for col in (c, d):
        got = card_engine._pys(col, 3)
        assert got == [card_engine._py(col, i) for i in range(3)]
        assert [type(x) for x in got] == [type(card_engine._py(col, i)) for i in range(3)]


def _horse_windows() -> list[tuple[str, str | None, dict]]:
    """(function, argument, frame spec) of every window call of the horse stage, as the compiler reads them."""
    from racequant.features import build as b

    found = []

    def walk(node) -> None:
        if isinstance(node, list):
            for x in node:
                walk(x)
        elif isinstance(node, dict):
            if node.get("class") == "WINDOW":
                func = node["function_name"].lower()
                args = node.get("arguments", [])
                arg = (
                    args[0]["expression"]["column_names"][-1]
                    if args and "column_names" in args[0]["expression"]
                    else None
                )
                found.append((func, arg, card_engine._window_spec(node)))
            for x in node.values():
                walk(x)

    walk(card_engine.parse_select(dict(b._target_steps())["_fx_h"])["select_list"])
    return found


def test_windows_over_the_last_runs_equal_the_general_frame(simulated):
    """The last N runs (and lag's last run) read from the matrix's last columns give what the general frame gives:
    a partition by horse_id (always equal within a horse's runs) takes the general path for the same frame."""
    from racequant.features.build import _card_records

    conn, full = simulated
    engine = card_engine.engine_for(conn, _card_state_hooks())
    windows = _horse_windows()
    assert {f for f, _a, s in windows if not s["partition"] and (s["last"] or s["lag_only"])} >= {"lag", "avg", "sum"}
    assert max(e - s for s, e in engine.run_index.values()) > 6  # wider than the last 5 runs and one more
    checked = 0
    for race_id in full["race_id"].drop_duplicates().tolist()[-12:]:
        race, runners, horses = _card_records(card_of(conn, race_id))
        last_seq, _own = engine.history(race, race["date"])
        with np.errstate(all="ignore"):
            base = engine._base(race, runners, horses, last_seq)
            fast = engine.horse_window(base, last_seq)
            general = engine.horse_window(base, last_seq)
            for func, arg, spec in windows:
                got = fast(func, arg, spec)
                want = general(func, arg, {**spec, "partition": ["horse_id", *spec["partition"]]})
                assert (got.kind, got.scale, got.v.dtype) == (want.kind, want.scale, want.v.dtype), (func, arg)
                assert np.array_equal(got.null, want.null), (func, arg, spec)
                if got.v.dtype == object:
                    assert got.v.tolist() == want.v.tolist(), (func, arg, spec)
                elif got.v.dtype.kind == "f":  # every slot, NULL ones too, bit for bit
                    assert np.array_equal(got.v.view(np.int64), want.v.view(np.int64)), (func, arg, spec)
                else:
                    assert np.array_equal(got.v, want.v), (func, arg, spec)
                checked += int((~got.null).sum())
    assert checked > 1000


def _common_all_by_sets(cols) -> tuple[str, int, int]:
    """The engine's first rule for a CASE / coalesce type (sets of kinds), the reference of its fast path."""
    kinds = {c.kind for c in cols} - {"null"}
    if not kinds:
        return "null", 0, 18
    if kinds <= {"int", "dec", "dbl", "bool"}:
        kind = next(k for k in ("dbl", "dec", "int", "bool") if k in kinds)
    elif len(kinds) == 1:
        kind = kinds.pop()
    else:
        raise card_engine.Unsupported("no common type")
    scale = max((c.scale for c in cols if c.kind == "dec"), default=0)
    width = max((c.width for c in cols if c.kind == "dec"), default=18)
    return kind, scale, width


def _numeric_common_by_sets(a, b) -> str:
    kinds = {a.kind, b.kind} - {"null"}
    if not kinds:
        return "null"
    if "dbl" in kinds:
        return "dbl"
    if "dec" in kinds:
        return "dec"
    if kinds <= {"int", "bool"}:
        return "int"
    if len(kinds) == 1:
        return kinds.pop()
    raise card_engine.Unsupported("no common type")


def test_the_typing_rules_fast_paths_equal_the_rules_by_sets():
    import itertools

    def col(kind: str, scale: int) -> card_engine.Col:
        return card_engine.Col(kind, np.zeros(2, np.int64), np.zeros(2, bool), scale, 10 + scale)

    def same(rule, reference, *args) -> None:
        try:
            want = reference(*args)
        except card_engine.Unsupported:
            with pytest.raises(card_engine.Unsupported):
                rule(*args)
            return
        assert rule(*args) == want, [c.kind for c in args[0]] if isinstance(args[0], list) else args

    kinds = ["null", "int", "dec", "dbl", "bool", "str", "date"]
    for size in (1, 2, 3):
        for combo in itertools.product(kinds, repeat=size):
            cols = [col(k, i + 1 if k == "dec" else 0) for i, k in enumerate(combo)]
            same(card_engine._common_all, _common_all_by_sets, cols)
            if size == 2:
                same(card_engine._numeric_common, _numeric_common_by_sets, *cols)


def test_a_product_by_a_power_of_ten_gives_up_where_the_general_check_does():
    rng = np.random.default_rng(3)
    for _ in range(300):
        a = rng.integers(-(10 ** int(rng.integers(1, 19))), 10 ** int(rng.integers(1, 19)), 6)
        b = np.int64(10 ** int(rng.integers(0, 7)))
        fa = np.abs(a.astype(np.float64)) * abs(float(b))
        if fa.max() >= 4e18:
            with pytest.raises(card_engine.Unsupported):
                card_engine._mul_i64(a, b)
        else:
            assert np.array_equal(card_engine._mul_i64(a, b), a * b)
    edge = np.array([np.iinfo(np.int64).min, 4 * 10**17], np.int64)
    with pytest.raises(card_engine.Unsupported):
        card_engine._mul_i64(edge, np.int64(1))


@pytest.mark.parametrize(
    "expr",
    [
        "CASE s WHEN 's1' THEN 10 WHEN 's3' THEN 9.5 WHEN 's1' THEN 1 WHEN 'none' THEN 2 END",  # a repeated value
        "CASE s WHEN 's2' THEN 'a' WHEN 's4' THEN NULL ELSE 'other' END",
        "CASE s WHEN 's5' THEN 1.25 WHEN 's7' THEN 3 ELSE 0.5 END",
        "CASE CASE WHEN k > 0 THEN 1 WHEN k < 0 THEN 3 END WHEN 1 THEN 'one' WHEN 3 THEN 'x' WHEN 1 THEN 'again' END",
        "CASE CASE WHEN k > 0 THEN 2 WHEN k < 0 THEN 1 END WHEN 1 THEN 'low' WHEN 2 THEN 'high' END",
    ],
)
def test_a_case_of_constants_equals_the_general_case_and_duckdb(expr, monkeypatch):
    k = [None if i % 5 == 0 else (1.0 if i % 3 else -1.0) for i in range(40)]
    conn, cols = _case_table(k)
    node = card_engine.parse_exprs([f"{expr} AS out"])[0]
    switched, fell_back = [], []
    real = card_engine._compile_switch

    def recording(node, general):  # the outermost CASE's switch: did it run, did it leave it to the general CASE
        fn = real(node, lambda ctx: fell_back.append(1) or general(ctx))
        return None if fn is None else (lambda ctx: switched.append(1) or fn(ctx))

    with monkeypatch.context() as m:
        m.setattr(card_engine, "_compile_switch", recording)
        switch = card_engine.compile_expr(node)
    with monkeypatch.context() as m:
        m.setattr(card_engine, "_compile_switch", lambda node, general: None)
        general = card_engine.compile_expr(node)
    got = [switch(card_engine.Ctx(40, cols, None)) for _ in range(2)]
    assert switched and not fell_back
    want = general(card_engine.Ctx(40, cols, None))
    for out in got:
        assert (out.kind, out.scale, out.width) == (want.kind, want.scale, want.width)
        assert (out.v.dtype, out.v.shape, out.null.dtype, out.null.shape) == (
            want.v.dtype,
            want.v.shape,
            want.null.dtype,
            want.null.shape,
        )
        assert np.array_equal(out.null, want.null)
        assert out.v.tolist() == want.v.tolist()  # NULL slots too
    expected = conn.execute(f"SELECT ({expr})::VARCHAR FROM t ORDER BY rowid").fetchnumpy()
    expected = [None if v is None or v is pd.NA else v for v in next(iter(expected.values())).tolist()]
    if want.kind == "str":
        assert [None if null else v for v, null in zip(want.v.tolist(), want.null.tolist(), strict=True)] == expected
    else:
        assert want.null.tolist() == [v is None for v in expected]


def test_output_frames_have_their_own_column_index():
    cols = {
        "a": card_engine.Col("dbl", np.array([1.0, 2.0]), np.array([False, True])),
        "s": card_engine.Col("str", np.array(["x", None], dtype=object), np.array([False, True])),
    }
    first, second = card_engine._frame(cols), card_engine._frame(cols)
    first.columns.name = "changed"
    assert second.columns.name is None and card_engine._frame(cols).columns.name is None
    assert list(second.columns) == ["a", "s"] and np.isnan(second["a"].iloc[1]) and second["s"].isna().iloc[1]
