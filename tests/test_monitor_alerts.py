"""Alerts reach a Slack-compatible webhook (a local receiver here), are retried, and fall back to the log."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from racequant.monitor import check_and_alert, evaluate_alerts, send_alerts
from racequant.warehouse import prediction_log


class Receiver:
    """A local webhook that answers the queued status codes (then 200) and keeps what it received."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append(json.loads(body))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


DRIFT = {
    "as_of": "2024-01-27",
    "flags": ["performance", "features"],
    "performance": {
        "auc_flag": True,
        "ece_flag": False,
        "auc_drop": 0.08,
        "auc_drop_max": 0.05,
        "ece_max": 0.1,
        "recent": {"win_ece": 0.03},
    },
    "features": {"flag": True, "drifted": ["rating", "draw"]},
    "interval_coverage": {"flag": False},
}
METRICS = {"day": "2024-01-27", "mean_latency_ms": 700.0, "win_ece": 0.14}


def test_drift_latency_and_calibration_each_raise_an_alert() -> None:
    alerts = evaluate_alerts(DRIFT, METRICS)
    assert [a["kind"] for a in alerts] == ["drift", "latency", "calibration"]
    assert "AUC dropped by 0.080" in alerts[0]["message"] and "rating, draw" in alerts[0]["message"]
    assert evaluate_alerts({**DRIFT, "flags": []}, {"day": "d", "mean_latency_ms": 20.0, "win_ece": 0.02}) == []


def test_alerts_post_slack_compatible_json_to_the_webhook(receiver: Receiver, tmp_path: Path) -> None:
    log = tmp_path / "w.predlog.duckdb"
    sent = send_alerts(evaluate_alerts(DRIFT, METRICS), webhook_url=receiver.url, log=log)
    assert all(a["delivered"] for a in sent)
    assert [r["kind"] for r in receiver.received] == ["drift", "latency", "calibration"]
    assert all(r["text"].startswith("[racequant] ") for r in receiver.received)
    with prediction_log.open_log(log, read_only=True) as conn:
        stored = prediction_log.alerts_frame(conn)
    assert len(stored) == 3 and stored["delivered"].all()


def test_a_failing_webhook_is_retried(receiver: Receiver) -> None:
    receiver.statuses = [500, 503]
    sent = send_alerts([{"kind": "latency", "message": "slow"}], webhook_url=receiver.url, retries=3, backoff_s=0.01)
    assert sent[0]["delivered"] and len(receiver.received) == 3


def test_an_unreachable_webhook_falls_back_to_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = Receiver()
    url = dead.url
    dead.close()  # nothing listens there any more
    log = tmp_path / "w.predlog.duckdb"
    with caplog.at_level(logging.WARNING, logger="racequant.monitor.alerts"):
        sent = send_alerts(
            [{"kind": "drift", "message": "Drift: PSI"}],
            webhook_url=url,
            timeout_s=0.5,
            retries=1,
            backoff_s=0.01,
            log=log,
        )
    assert not sent[0]["delivered"]
    assert any("ALERT drift: Drift: PSI" in r.getMessage() for r in caplog.records)
    with prediction_log.open_log(log, read_only=True) as conn:
        assert not prediction_log.alerts_frame(conn)["delivered"].any()


def test_without_a_webhook_alerts_go_to_the_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="racequant.monitor.alerts"):
        sent = send_alerts([{"kind": "calibration", "message": "ECE high"}])
    assert not sent[0]["delivered"] and "ALERT calibration" in caplog.text


def test_check_and_alert_runs_metrics_and_drift_and_sends_what_they_call_for(
    receiver: Receiver, tmp_path: Path
) -> None:
    import uuid
    from datetime import UTC, datetime

    from racequant.settings import Settings

    log = tmp_path / "w.predlog.duckdb"
    at = datetime(2024, 2, 1, 12, tzinfo=UTC)
    with prediction_log.open_log(log) as conn:
        prediction_log.insert_predictions(
            conn,
            [
                {
                    "prediction_id": uuid.uuid4().hex,
                    "request_id": "q",
                    "race_id": "R",
                    "horse_id": f"H{i}",
                    "timestamp": at,
                    "race_date": at.date(),
                    "win_prob": 0.5,
                    "place_prob": 0.5,
                    "model_version": "m",
                    "latency_ms": 900.0,
                }
                for i in range(8)
            ],
        )
    settings = Settings(alert_webhook_url=receiver.url, alert_retries=0)
    sent = check_and_alert(log, settings, day="2024-02-01")
    assert [a["kind"] for a in sent] == ["latency"] and sent[0]["delivered"]
    assert receiver.received[0]["details"]["mean_latency_ms"] == 900.0
