"""`racequant monitor daily | drift | alerts` on a prediction log beside the warehouse."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from racequant.cli import app
from racequant.warehouse import prediction_log
from test_monitor_metrics import simulate_day

runner = CliRunner()


def _warehouse_with_log(tmp_path: Path) -> Path:
    db = tmp_path / "w.duckdb"
    rng = np.random.default_rng(3)
    with prediction_log.open_log(tmp_path / "w.predlog.duckdb") as conn:
        prediction_log.begin(conn)
        for k in range(10):
            simulate_day(conn, date(2024, 1, 1) + timedelta(days=k), 20, rng)
        for k in range(10, 14):  # a last stretch where the model has lost its skill and is slow
            simulate_day(conn, date(2024, 1, 1) + timedelta(days=k), 20, rng, skill=0.0, latency=900)
        prediction_log.commit(conn)
    return db


def test_monitor_daily_reads_the_log_beside_the_warehouse(tmp_path: Path) -> None:
    db = _warehouse_with_log(tmp_path)
    result = runner.invoke(app, ["monitor", "daily", "--date", "2024-01-03", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n_races"] == 20
    assert 0.5 < metrics["win_auc"] <= 1.0


def test_monitor_drift_and_alerts_flag_a_lost_model(tmp_path: Path) -> None:
    db = _warehouse_with_log(tmp_path)
    drift = runner.invoke(app, ["monitor", "drift", "--as-of", "2024-01-14", "--db", str(db)])
    assert drift.exit_code == 0, drift.output
    report = json.loads(drift.stdout)
    assert report["performance"]["recent"]["n_races"] == 7 * 20  # the default recent window is 7 days
    assert report["performance"]["auc_flag"] is True
    assert "performance" in report["flags"]
    alerts = runner.invoke(app, ["monitor", "alerts", "--date", "2024-01-14", "--db", str(db), "--json"])
    assert alerts.exit_code == 0, alerts.output
    kinds = {a["kind"] for a in json.loads(alerts.stdout)}
    assert {"latency", "drift"} <= kinds


def test_monitor_daily_rejects_a_malformed_date(tmp_path: Path) -> None:
    result = runner.invoke(app, ["monitor", "daily", "--date", "14/01/2024", "--db", str(tmp_path / "w.duckdb")])
    assert result.exit_code != 0
    assert "--date" in result.output
