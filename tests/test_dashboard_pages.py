"""Every dashboard page, run by Streamlit's AppTest against a small fixture warehouse.

The fixture copies the shared trained-model warehouse (tests/model_fixtures.py), stores in it one real walk-forward
run (the seconds-fast reference pipeline) and qualitative records for one race, and writes a prediction log with
outcomes, stored daily metrics and an alert. The pages only read it.
"""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from fusion_helpers import race_records
from model_fixtures import TrainedModel, trained_model  # noqa: F401  (the session fixture)
from racequant.dashboard import APP_PATH

PAGES = APP_PATH.parent / "pages"
TIMEOUT = 180  # seconds per page run: the machine may be loaded


@dataclass(frozen=True)
class DashboardData:
    db: Path
    models_dir: Path
    default_race: str  # the race the race card page opens on: newest day, first track, first race
    qualitative_horses: dict[str, float]  # likelihood ratios stored for the default race


def _store_backtest(db: Path, cut: str, end: str) -> pd.DataFrame:
    from racequant.backtest import run_backtest, store_result
    from racequant.backtest.reference import ConditionalLogitPipeline
    from racequant.backtest.splitter import WalkForwardSplit
    from racequant.warehouse import connect
    from racequant.warehouse.backtest_store import load_backtest_frame

    with connect(db) as conn:
        frame = load_backtest_frame(conn)
        columns = ["rating_today", "speed_last_3_avg", "jockey_win_rate"]
        frame[columns] = frame[columns].astype(float).fillna(frame[columns].astype(float).mean())
        result = run_backtest(
            frame,
            ConditionalLogitPipeline(),
            WalkForwardSplit(cut, end, test_window_days=14, retrain_every_days=14, expanding=True),
            feature_columns=columns,
            n_bootstrap=50,
            second_stage_min_races=20,
        )
        store_result(conn, result)
    return result.predictions


def _write_prediction_log(log: Path, predictions: pd.DataFrame) -> None:
    """The backtest's test predictions as if served at noon of their race day, then the results and metrics."""
    from racequant.monitor import check_and_alert, daily_metrics
    from racequant.settings import Settings
    from racequant.warehouse import prediction_log

    rows = []
    for r in predictions.itertuples():
        day = pd.Timestamp(r.date).date()
        rows.append(
            {
                "prediction_id": uuid.uuid4().hex,
                "request_id": r.race_id,
                "race_id": r.race_id,
                "horse_id": r.horse_id,
                "timestamp": datetime(day.year, day.month, day.day, 12, tzinfo=UTC),
                "race_date": day,
                "win_prob": r.win_prob,
                "place_prob": r.place_prob,
                "win_prob_lower": r.win_prob_lower,
                "win_prob_upper": r.win_prob_upper,
                "place_prob_lower": None,
                "place_prob_upper": None,
                "model_version": "fixture-v1",
                "feature_version": "f",
                "calibration_group": r.track,
                "latency_ms": 40.0,
                "features_json": None,
            }
        )
    outcomes = {
        race_id: [
            (h, None if pd.isna(p) else int(p), "finished") for h, p in zip(g.horse_id, g.finish_position, strict=True)
        ]
        for race_id, g in predictions.groupby("race_id")
    }
    with prediction_log.open_log(log) as conn:
        prediction_log.insert_predictions(conn, rows)
        prediction_log.record_many_outcomes(conn, outcomes, datetime.now(UTC))
    days = sorted({pd.Timestamp(d).date() for d in predictions["date"]})
    for day in days[:-1]:
        daily_metrics(log, day)
    check_and_alert(log, Settings(alert_latency_ms=10.0), day=days[-1])  # 40 ms > 10 ms: one latency alert


@pytest.fixture(scope="module")
def dashboard_data(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> DashboardData:  # noqa: F811
    from racequant.fusion.api import store_submitted
    from racequant.warehouse import connect_read_only
    from racequant.warehouse.dashboard_queries import race_dates, races_on

    root = tmp_path_factory.mktemp("dashboard")
    db = root / "warehouse.duckdb"
    shutil.copy(trained_model.db, db)
    with connect_read_only(db) as conn:
        last = race_dates(conn)[0]
        races = races_on(conn, last)
        default_race = str(races.iloc[0]["race_id"])
        horses = conn.execute(
            "SELECT horse_id FROM runners WHERE race_id = ? AND status <> 'withdrawn' ORDER BY saddle_no",
            [default_race],
        ).fetchall()
    predictions = _store_backtest(db, trained_model.cut.isoformat(), last.isoformat())
    _write_prediction_log(root / "warehouse.predlog.duckdb", predictions)
    lrs = {h: (3.0 if i == 0 else 1.0) for i, (h,) in enumerate(horses)}  # the first horse talked up strongly
    store_submitted(db, race_records(default_race, lrs), source="test")
    return DashboardData(db, trained_model.models_dir, default_race, lrs)


@pytest.fixture
def env(dashboard_data: DashboardData, monkeypatch: pytest.MonkeyPatch) -> DashboardData:
    monkeypatch.setenv("RACEQUANT_DB", str(dashboard_data.db))
    monkeypatch.setenv("RACEQUANT_MODELS_DIR", str(dashboard_data.models_dir))
    monkeypatch.delenv("RACEQUANT_MODEL_VERSION", raising=False)
    monkeypatch.delenv("RACEQUANT_API_URL", raising=False)
    monkeypatch.delenv("RACEQUANT_PREDLOG", raising=False)
    return dashboard_data


def run_page(name: str) -> AppTest:
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def test_race_card_shows_each_runners_probabilities_intervals_fused_and_market(env: DashboardData) -> None:
    at = run_page("race_card")
    assert env.default_race in at.subheader[0].value
    table = at.table[0].value
    assert len(table) == len(env.qualitative_horses)
    win = table["win"].astype(float)
    assert win.between(0, 1).all() and win.sum() == pytest.approx(1.0, abs=0.01)
    lower, upper = zip(*(cell.split("-") for cell in table["win 90% interval"]), strict=True)
    assert (pd.Series(lower, dtype=float).to_numpy() <= win.to_numpy() + 1e-3).all()
    assert (pd.Series(upper, dtype=float).to_numpy() >= win.to_numpy() - 1e-3).all()
    assert table["market"].astype(float).sum() == pytest.approx(1.0, abs=0.01)  # odds-implied, overround removed
    fused = table["win fused"].astype(float)
    assert fused.sum() == pytest.approx(1.0, abs=0.01)
    assert (fused != win).any()  # the stored likelihood ratios moved the probabilities
    assert table["top features"].str.contains(r"\(", regex=True).all()
    assert "stored in the warehouse" in " ".join(c.value for c in at.caption)
    assert len(at.get("vega_lite_chart")) >= 2


def test_race_card_picks_another_race_by_number(env: DashboardData) -> None:
    at = run_page("race_card")
    first = at.subheader[0].value
    at.selectbox(key="race_no").select_index(1).run(timeout=TIMEOUT)
    assert not at.exception
    assert at.subheader[0].value != first
    assert "No qualitative records" in " ".join(c.value for c in at.caption)
    assert at.table[0].value["win"].astype(float).sum() == pytest.approx(1.0, abs=0.01)


def test_backtest_page_shows_the_headline_with_the_market_row_and_the_groups(env: DashboardData) -> None:
    at = run_page("backtest")
    headline = at.table[0].value
    assert list(headline.index) == [
        "model (fundamental)",
        "market (odds)",
        "market recalibrated",
        "combined (model + market)",
    ]
    assert float(headline.loc["market (odds)", "pseudo-R2"]) > 0
    titles = [s.value for s in at.subheader]
    assert titles == ["Headline", "Bankroll", "Per fold over time", "By track", "By class"]
    assert set(at.table[1].value.index) == {"Happy Valley", "Sha Tin"}
    assert len(at.table[2].value) >= 2  # classes
    assert len(at.get("vega_lite_chart")) >= 4  # reliability, odds bands, bankroll, folds


def test_monitoring_page_shows_daily_metrics_drift_flags_and_alerts(env: DashboardData) -> None:
    at = run_page("monitoring")
    daily, alerts = at.dataframe[0].value, at.dataframe[1].value
    assert len(daily) >= 3 and daily["win_auc"].notna().all()
    assert list(at.table[0].value.index) == ["performance", "features (PSI)", "interval coverage"]
    assert (alerts["kind"] == "latency").any()


def test_monitoring_page_explains_a_missing_prediction_log(
    env: DashboardData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RACEQUANT_PREDLOG", str(tmp_path / "none.predlog.duckdb"))
    at = AppTest.from_file(str(PAGES / "monitoring.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "There is no prediction log" in at.info[0].value


def test_models_page_lists_the_registry_and_the_loaded_version(env: DashboardData) -> None:
    at = run_page("models")
    registry = at.table[0].value
    assert registry.loc["fixture-v1", "loaded"] == "yes"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d to \d{4}-\d\d-\d\d", registry.loc["fixture-v1", "training window"])
    assert float(registry.loc["fixture-v1", "pseudo-R2"]) != 0
    assert "fixture-v1" in at.success[0].value


def test_pages_say_what_is_missing_without_a_warehouse_or_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RACEQUANT_DB", str(tmp_path / "absent.duckdb"))
    monkeypatch.setenv("RACEQUANT_MODELS_DIR", str(tmp_path / "no-models"))
    for page in ("race_card", "backtest"):
        at = AppTest.from_file(str(PAGES / f"{page}.py"), default_timeout=TIMEOUT).run()
        assert not at.exception and "There is no warehouse" in at.warning[0].value
    at = AppTest.from_file(str(PAGES / "models.py"), default_timeout=TIMEOUT).run()
    assert not at.exception and "No model under" in at.info[0].value


def test_the_app_entry_script_navigates_to_the_race_card(env: DashboardData) -> None:
    at = AppTest.from_file(str(APP_PATH), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Race card"
    assert len(at.table[0].value) == len(env.qualitative_horses)
