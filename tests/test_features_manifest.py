"""The manifest, the stored features and the functions behind the CLI."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features_helpers import mismatched_columns, warehouse_from_simulation
from racequant.errors import RacequantError
from racequant.features import api
from racequant.features.build import build_features, feature_columns
from racequant.features.manifest import CATEGORIES, all_specs, feature_version, fundamental_specs
from racequant.warehouse import feature_store


def test_the_manifest_documents_at_least_100_features_in_known_categories():
    specs = all_specs()
    assert len(specs) >= 100
    assert len({s.name for s in specs}) == len(specs)
    assert all(s.category in CATEGORIES and s.description and s.columns_read for s in specs)


def test_the_market_is_never_a_fundamental_feature():
    assert not any(s.category == "market" for s in fundamental_specs())
    assert any(s.name == "market_prob" for s in all_specs())


def test_feature_version_is_a_stable_hash():
    assert feature_version() == feature_version()
    assert feature_version().startswith("f")


@pytest.fixture(scope="module")
def sim_conn(tmp_path_factory: pytest.TempPathFactory):
    conn = warehouse_from_simulation(250, 3, tmp_path_factory.mktemp("sim_small"))
    yield conn
    conn.close()


def test_the_build_has_one_column_per_feature_and_one_row_per_runner(sim_conn):
    frame = build_features(sim_conn)
    assert feature_columns(frame) == [s.name for s in all_specs()]
    runners = sim_conn.execute("SELECT count(*) FROM runners WHERE status <> 'withdrawn'").fetchone()[0]
    assert len(frame) == runners
    probs = frame.groupby("race_id")["market_prob"].sum()
    assert ((probs - 1).abs() < 1e-9).all()
    scenarios = {"elite", "over_rated", "under_rated", "questionable", "mixed"}
    assert set(frame["quant_triple_scenario"].dropna()) <= scenarios


def test_build_store_show_and_export(sim_conn, tmp_path: Path):
    summary = api.build_and_store(sim_conn)
    assert summary["feature_version"] == feature_version()
    assert summary["features"] == len(all_specs())
    race_id, horse_id = sim_conn.execute("SELECT race_id, horse_id FROM features LIMIT 1 OFFSET 500").fetchone()
    shown = api.show(sim_conn, horse_id, race_id)
    assert set(shown["features"]) == {s.name for s in all_specs()}
    out = api.export(sim_conn, tmp_path / "features.parquet")
    assert out["rows"] == summary["rows"]
    assert len(pd.read_parquet(tmp_path / "features.parquet")) == summary["rows"]
    with pytest.raises(RacequantError, match="No stored features"):
        api.show(sim_conn, "no-such-horse", race_id)


def test_stored_features_are_the_built_rows_bit_for_bit_under_a_memory_limit(sim_conn):
    # the store writes the build's result table straight into the warehouse (no DataFrame in between)
    frame = build_features(sim_conn)
    memory_limit = sim_conn.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    summary = api.build_and_store(sim_conn, memory_limit="1GB")
    assert sim_conn.execute("SELECT current_setting('memory_limit')").fetchone()[0] == memory_limit
    stored = feature_store.read_features(sim_conn)
    assert set(stored.pop("feature_version")) == {feature_version()}
    assert list(stored.columns) == list(frame.columns)
    assert stored.dtypes.to_dict() == frame.dtypes.to_dict()
    assert mismatched_columns(frame, stored) == {}
    assert summary["rows"] == len(frame)
    assert summary["coverage_mean"] == round(float(frame[feature_columns(frame)].notna().mean().mean()), 4)


def test_list_features_names_columns_read():
    listed = api.list_features()
    assert listed[0].keys() >= {"name", "category", "description", "columns_read", "fundamental"}
