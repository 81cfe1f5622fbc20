"""The model's worker processes: the same answers as in the server's threads, a killed worker is replaced and its
request answered 503, and no worker outlives the app."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from model_fixtures import TrainedModel, trained_model  # noqa: F401  (the session fixture)
from racequant.serve import create_app
from racequant.serve.processes import ProcessPredictionPool
from racequant.settings import Settings
from racequant.warehouse import connect_read_only
from serve_helpers import FixturePredictor, HangingPredictor, ThreadServer, race_body


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, exited but not yet reaped by whoever adopted it, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # gone meanwhile
        return False


def _pool(server: ThreadServer, app: Any) -> ProcessPredictionPool:
    pool = app.state.service.predict_pool
    assert isinstance(pool, ProcessPredictionPool)
    return pool


def _without_time(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in p.items() if k != "prediction_timestamp"} for p in answer["predictions"]]


@pytest.mark.slow
def test_worker_processes_answer_exactly_what_the_server_threads_answer(
    trained_model: TrainedModel,  # noqa: F811
    tmp_path: Path,
) -> None:
    with connect_read_only(trained_model.db) as conn:
        cards = [trained_model.card(conn, race_id) for race_id in trained_model.held_out[:6]]
    answers: dict[int, list[Any]] = {}
    for processes in (0, 2):
        settings = Settings(
            db=trained_model.db,
            models_dir=trained_model.models_dir,
            predlog=tmp_path / f"p{processes}.predlog.duckdb",
        )
        app = create_app(settings, predict_processes=processes, reference_features=None)
        with ThreadServer(app) as server, concurrent.futures.ThreadPoolExecutor(6) as clients:
            if processes:
                assert len(_pool(server, app).pids) == 2
            # sent together, so that the workers take several cards in one model call
            responses = list(
                clients.map(lambda c: httpx.post(f"{server.url}/api/v1/quantify", json=c, timeout=60), cards)
            )
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        answers[processes] = [_without_time(r.json()) for r in responses]
    assert answers[2] == answers[0]
    assert all(p["catboost_win"] is not None and p["top_features"] for a in answers[2] for p in a)


def test_a_killed_worker_fails_its_request_with_503_and_is_replaced(tmp_path: Path) -> None:
    marker = tmp_path / "hanging-worker.pid"
    settings = Settings(db=tmp_path / "warehouse.duckdb")
    app = create_app(
        settings,
        HangingPredictor(marker),
        feature_lookup=None,
        backtest_runner=None,
        reference_features=None,
        predict_processes=1,
    )
    with ThreadServer(app) as server, concurrent.futures.ThreadPoolExecutor(1) as client:
        pool = _pool(server, app)
        (first,) = pool.pids
        hanging = client.submit(httpx.post, f"{server.url}/api/v1/quantify", json=race_body("HANG1"), timeout=60)
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert int(marker.read_text()) == first
        os.kill(first, signal.SIGKILL)

        r = hanging.result(60)
        assert r.status_code == 503, r.text
        assert "model worker stopped" in r.json()["detail"]
        assert "Traceback" not in r.text and ".py" not in r.text

        after = httpx.post(f"{server.url}/api/v1/quantify", json=race_body("AFTER1"), timeout=60)
        assert after.status_code == 200, after.text
        (second,) = pool.pids
        assert second != first and _alive(second) and not _alive(first)
        assert pool.replaced == 1


def test_no_worker_process_outlives_the_app(tmp_path: Path) -> None:
    settings = Settings(db=tmp_path / "warehouse.duckdb")
    app = create_app(
        settings,
        FixturePredictor(),
        feature_lookup=None,
        backtest_runner=None,
        reference_features=None,
        predict_processes=2,
    )
    with ThreadServer(app) as server:
        pids = _pool(server, app).pids
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        r = httpx.post(f"{server.url}/api/v1/quantify", json=race_body("Q1"), timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["horse_id"] == "Q1-H0"
    assert not any(_alive(p) for p in pids)


def test_the_workers_exit_when_the_server_is_killed(tmp_path: Path) -> None:
    code = (
        "import functools, sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from serve_helpers import FixturePredictor\n"
        "from racequant.serve.processes import ProcessPredictionPool, given_predictor\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPredictionPool(functools.partial(given_predictor, FixturePredictor()), 2)\n"
        "    print(' '.join(map(str, pool.pids)), flush=True)\n"
        "    time.sleep(120)\n"
    )
    script = tmp_path / "server.py"
    script.write_text(code)
    server = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        pids = [int(p) for p in server.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        server.send_signal(signal.SIGKILL)  # no lifespan exit, no clean-up: the children see their pipe close
        server.wait(10)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids)
    finally:
        server.kill()
        server.wait(10)
