"""The quantify answer and the prediction log's journal: nothing is served that the journal did not take."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from racequant.monitor import journal as journal_module
from racequant.serve import create_app
from racequant.settings import Settings
from racequant.warehouse import prediction_log
from serve_helpers import FixturePredictor, ThreadServer, race_body


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[httpx.Client, Settings, Any]]:
    settings = Settings(db=tmp_path / "warehouse.duckdb")
    app = create_app(settings, FixturePredictor(), feature_lookup=None, backtest_runner=None, reference_features=None)
    with ThreadServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield client, settings, app


def test_a_full_disk_answers_503_and_leaves_no_partial_record_in_the_journal(
    served: tuple[httpx.Client, Settings, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, settings, _ = served
    assert client.post("/api/v1/quantify", json=race_body("OK1", 6)).status_code == 200
    journal = prediction_log.journal_path(settings.predlog_path())
    real_write = os.write

    def half_then_full(fd: int, data: Any) -> int:
        if fd >= 0 and len(data) > 100:
            real_write(fd, bytes(data[:50]))  # part of the record reaches the file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(journal_module.os, "write", half_then_full)
    refused = client.post("/api/v1/quantify", json=race_body("FULL", 6))
    monkeypatch.undo()
    assert refused.status_code == 503 and "nothing was served" in refused.json()["detail"]
    left = journal.read_bytes()
    assert left == b"" or left.endswith(b"\n")  # the partial record was cut off: later records stay readable
    assert client.post("/api/v1/quantify", json=race_body("OK2", 6)).status_code == 200
    logged = {p["race_id"] for p in client.get("/api/v1/monitoring/predictions").json()}
    assert logged == {"OK1", "OK2"}


def test_a_closed_log_writer_answers_503(served: tuple[httpx.Client, Settings, Any]) -> None:
    client, _, app = served
    app.state.service.writer.close()
    refused = client.post("/api/v1/quantify", json=race_body("LATE", 6))
    assert refused.status_code == 503 and "nothing was served" in refused.json()["detail"]
