"""A server killed with SIGKILL under load loses no prediction it acknowledged to a client."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from serve_helpers import SubprocessServer, race_body


@pytest.mark.slow
def test_every_acknowledged_prediction_is_in_the_log_after_sigkill_and_restart(tmp_path: Path) -> None:
    db = tmp_path / "warehouse.duckdb"
    server = SubprocessServer(db).start()
    acknowledged: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=5) as c:
            j = 0
            while not stop.is_set():
                try:
                    r = c.post("/api/v1/quantify", json=race_body(f"K{i}-{j}", 14))
                except httpx.HTTPError:
                    return  # the server is gone: nothing more is acknowledged
                if r.status_code == 200:
                    with lock:
                        acknowledged.update(r.json()["metadata"]["prediction_ids"])
                j += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        server.kill()  # mid-load, no chance to flush or close anything
        stop.set()
        for t in threads:
            t.join(10)
        assert len(acknowledged) > 14 * 10

        restarted = SubprocessServer(db, port=server.port).start()
        try:
            logged = httpx.get(
                f"{restarted.url}/api/v1/monitoring/predictions", params={"limit": 10000}, timeout=10
            ).json()
            ids = {p["prediction_id"] for p in logged}
            assert len(logged) < 10000, "raise the limit: the check must see the whole log"
            missing = acknowledged - ids
            assert not missing, f"{len(missing)} acknowledged predictions lost"
        finally:
            restarted.stop()
    finally:
        stop.set()
        server.stop()
