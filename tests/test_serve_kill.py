"""A server killed with SIGKILL under load loses no prediction it acknowledged to a client.

The server acknowledges a prediction once it is in the log's journal (before DuckDB commits it), so the kill
usually leaves acknowledged predictions only in the journal: the restarted server replays them into the log.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb
import httpx
import pytest

from racequant.warehouse import prediction_log
from serve_helpers import API_KEY, SubprocessServer, race_body


@pytest.mark.slow
def test_every_acknowledged_prediction_is_in_the_log_after_sigkill_and_restart(tmp_path: Path) -> None:
    db = tmp_path / "warehouse.duckdb"
    server = SubprocessServer(db).start()
    acknowledged: set[str] = set()
    races: list[str] = []
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
                        races.append(f"K{i}-{j}")
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

        log = db.with_name("warehouse.predlog.duckdb")
        restarted = SubprocessServer(db, port=server.port).start()
        try:
            # the restart replayed the journal: a result for the last acknowledged race scores all its runners
            last = races[-1]
            answer = httpx.post(
                f"{restarted.url}/api/v1/results",
                headers={"X-API-Key": API_KEY},
                json={
                    "race_id": last,
                    "results": [
                        {"horse_id": f"{last}-H{k}", "finish_position": k + 1, "status": "finished"} for k in range(14)
                    ],
                },
                timeout=10,
            )
            assert answer.status_code == 200 and answer.json()["predictions_updated"] == 14
            assert sum(p.stat().st_size for p in prediction_log.journal_segments(log)) == 0
        finally:
            restarted.stop()
        with duckdb.connect(str(log), read_only=True) as conn:
            ids = [r[0] for r in conn.execute("SELECT prediction_id FROM predictions").fetchall()]
        missing = acknowledged - set(ids)
        assert not missing, f"{len(missing)} acknowledged predictions lost"
        assert len(ids) == len(set(ids)), "a replayed prediction was logged twice"
    finally:
        stop.set()
        server.stop()
