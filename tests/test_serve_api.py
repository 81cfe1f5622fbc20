"""The API over a real uvicorn server and a real HTTP client: every endpoint, auth, limits and error answers."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from racequant.serve import create_app
from racequant.serve.errors import NotFoundError
from racequant.settings import Settings
from serve_helpers import API_KEY, FixturePredictor, ThreadServer, qualitative, race_body

KEY = {"X-API-Key": API_KEY}


def fixture_features(horse_id: str, race_id: str | None, race: dict[str, Any] | None) -> dict[str, Any]:
    if not horse_id.startswith("R"):
        raise NotFoundError(f"horse_id: horse {horse_id!r} is not in the warehouse.")
    if race_id is not None and race_id == "NO-SUCH-RACE":
        raise NotFoundError(f"race_id: race {race_id!r} is not in the warehouse.")
    return {
        "horse_id": horse_id,
        "race_id": race_id,
        "feature_version": "fixture-features",
        "features": {"rating": 50.0, "track": (race or {}).get("track")},
    }


def fixture_backtest(params: dict[str, Any]) -> dict[str, Any]:
    time.sleep(0.05)
    return {"n_folds": 3, "pseudo_r2": 0.12, "start": params["start"]}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    db = tmp_path_factory.mktemp("api") / "warehouse.duckdb"
    return Settings(db=db, api_keys=["other-key", API_KEY], max_past_runs=3, max_body_bytes=50_000)


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[ThreadServer]:
    app = create_app(
        settings,
        FixturePredictor(),
        feature_lookup=fixture_features,
        backtest_runner=fixture_backtest,
        reference_features=None,
    )
    with ThreadServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def assert_clean(response: httpx.Response) -> None:
    """No stack trace, no file system path in an answer."""
    text = response.text
    assert "Traceback" not in text and 'File "' not in text
    assert "/work/" not in text and "/tmp/" not in text and ".py" not in text


def fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    assert_clean(response)
    return [d["field"] for d in response.json()["detail"]]


def test_quantify_answers_every_runner_in_the_output_schema_and_logs_them(client: httpx.Client) -> None:
    r = client.post("/api/v1/quantify", json=race_body("Q1"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["race_id"] == "Q1"
    assert body["metadata"]["n_horses"] == 14 and body["metadata"]["model_version"] == "fixture-1"
    assert body["metadata"]["feature_version"] == "fixture-features"
    preds = body["predictions"]
    assert abs(sum(p["win_prob_base"] for p in preds) - 1) < 1e-9
    assert set(preds[0]) >= {
        "race_id",
        "horse_id",
        "horse_name",
        "win_prob_base",
        "place_prob_base",
        "win_prob_lower",
        "win_prob_upper",
        "place_prob_lower",
        "place_prob_upper",
        "catboost_win",
        "lightgbm_win",
        "xgboost_win",
        "top_features",
        "speed_rating",
        "class_rating",
        "sectional_l200",
        "quant_triple_scenario",
        "model_version",
        "feature_version",
        "calibration_group",
        "prediction_timestamp",
    }
    assert preds[0]["sectional_l200"] is None  # NaN is sent as null
    assert "_features" not in preds[0]
    logged = client.get("/api/v1/monitoring/predictions", params={"race_id": "Q1"}).json()
    assert {p["prediction_id"] for p in logged} == set(body["metadata"]["prediction_ids"])


def test_withdrawn_runners_get_no_prediction(client: httpx.Client) -> None:
    body = race_body("Q2", 8)
    body["horses"][0]["status"] = "withdrawn"
    r = client.post("/api/v1/quantify", json=body)
    assert r.status_code == 200 and r.json()["metadata"]["n_horses"] == 7


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b.pop("distance"), "distance"),
        (lambda b: b.update(surface="sand"), "surface"),
        (lambda b: b.update(date="2024-13-01"), "date"),
        (lambda b: b.update(date="0001-01-01"), "date"),
        (lambda b: b["horses"][2].update(draw=0), "horses.2.draw"),
        (lambda b: b["horses"][3].pop("jockey"), "horses.3.jockey"),
        (lambda b: b["horses"][1].update(horse_id=b["horses"][0]["horse_id"]), "horses.1.horse_id"),
        (lambda b: b["horses"][4].update(draw=1), "horses.4.draw"),
        (lambda b: b["horses"][0].update(colour="bay"), "horses.0.colour"),
        (lambda b: b.update(horses=b["horses"] * 2), "horses"),
        (lambda b: b.update(horses=[]), "horses"),
        (lambda b: b["horses"][0].update(past_runs=[{"date": "2023-01-01"}] * 4), "horses.0.past_runs"),
        (lambda b: b["horses"][0].update(past_runs=[{"date": "2023-01-01"}] * 51), "horses.0.past_runs"),
        (lambda b: b["horses"][0].update(past_runs=[{"date": "2024-03-03"}]), "horses.0.past_runs.0.date"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(client: httpx.Client, change: Any, field: str) -> None:
    body = race_body("BAD", 14)
    change(body)
    r = client.post("/api/v1/quantify", json=body)
    assert field in fields(r)
    assert any(d["msg"].startswith(field) for d in r.json()["detail"])


def test_a_body_that_is_not_json_is_a_422_and_a_huge_one_a_413(client: httpx.Client) -> None:
    r = client.post("/api/v1/quantify", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert_clean(r)
    r = client.post("/api/v1/quantify", content=b" " * 60_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body" in r.json()["detail"]


def test_24_runners_pass_and_25_do_not(client: httpx.Client) -> None:
    assert client.post("/api/v1/quantify", json=race_body("Q24", 24)).status_code == 200
    assert "horses" in fields(client.post("/api/v1/quantify", json=race_body("Q25", 25)))


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/results", {"race_id": "Q1", "results": [{"horse_id": "Q1-H0", "finish_position": 1}]}),
        ("POST", "/api/v1/backtest", {"start": "2020-01-01", "end": "2020-06-01"}),
        ("POST", "/api/v1/fuse", {**race_body("F0", 2), "qualitative": qualitative("F0", ["F0-H0", "F0-H1"])}),
    ],
)
def test_mutating_endpoints_need_a_valid_api_key(client: httpx.Client, method: str, path: str, body: Any) -> None:
    r = client.request(method, path, json=body)
    assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
    r = client.request(method, path, json=body, headers={"X-API-Key": "wrong-key"})
    assert r.status_code == 403 and "X-API-Key" in r.json()["detail"]
    r = client.request(method, path, json=body, headers={"X-API-Key": API_KEY[:-1]})
    assert r.status_code == 403
    r = client.request(method, path, json=body, headers=KEY)
    assert r.status_code in (200, 202), r.text


def test_results_update_the_log_and_unknown_races_or_horses_are_404s(client: httpx.Client) -> None:
    assert client.post("/api/v1/quantify", json=race_body("RES", 8)).status_code == 200
    results = [{"horse_id": f"RES-H{i}", "finish_position": i + 1} for i in range(8)]
    r = client.post("/api/v1/results", json={"race_id": "RES", "results": results}, headers=KEY)
    assert r.status_code == 200 and r.json() == {"race_id": "RES", "n_results": 8, "predictions_updated": 8}
    logged = {p["horse_id"]: p for p in client.get("/api/v1/monitoring/predictions", params={"race_id": "RES"}).json()}
    assert logged["RES-H0"]["won"] is True and logged["RES-H2"]["placed"] is True
    assert logged["RES-H3"]["placed"] is False and logged["RES-H7"]["won"] is False

    r = client.post("/api/v1/results", json={"race_id": "NOPE", "results": results}, headers=KEY)
    assert r.status_code == 404 and "NOPE" in r.json()["detail"] and "race_id" in r.json()["detail"]
    r = client.post(
        "/api/v1/results",
        json={"race_id": "RES", "results": [{"horse_id": "GHOST", "finish_position": 1}]},
        headers=KEY,
    )
    assert r.status_code == 404 and "GHOST" in r.json()["detail"]
    r = client.post("/api/v1/results", json={"race_id": "RES", "results": [{"horse_id": "RES-H0"}]}, headers=KEY)
    assert "results.0.finish_position" in fields(r)


def test_monitoring_metrics_and_drift_answer_from_the_log(client: httpx.Client) -> None:
    metrics = client.get("/api/v1/monitoring/metrics").json()
    assert metrics["n_predictions"] > 0 and metrics["n_scored"] >= 8
    assert metrics["win_auc"] is not None and metrics["mean_latency_ms"] > 0
    drift = client.get("/api/v1/monitoring/drift").json()
    assert set(drift) >= {"performance", "features", "interval_coverage", "flags"}
    assert "date" in fields(client.get("/api/v1/monitoring/metrics", params={"date": "yesterday"}))


def test_features_by_race_id_or_context_and_404_naming_the_unknown(client: httpx.Client) -> None:
    r = client.get("/api/v1/features/R1-H0", params={"race_id": "R1"})
    assert r.status_code == 200 and r.json()["features"]["rating"] == 50.0
    r = client.get(
        "/api/v1/features/R1-H0", params={"date": "2024-03-03", "track": "ST", "distance_m": 1200, "surface": "turf"}
    )
    assert r.status_code == 200 and r.json()["features"]["track"] == "ST"
    r = client.get("/api/v1/features/XYZ", params={"race_id": "R1"})
    assert r.status_code == 404 and "XYZ" in r.json()["detail"]
    r = client.get("/api/v1/features/R1-H0", params={"race_id": "NO-SUCH-RACE"})
    assert r.status_code == 404 and "NO-SUCH-RACE" in r.json()["detail"]
    assert "track" in fields(client.get("/api/v1/features/R1-H0", params={"date": "2024-03-03"}))


def test_model_status_lists_the_six_models(client: httpx.Client) -> None:
    status = client.get("/api/v1/model/status").json()
    assert status["status"] == "ok" and status["model_version"] == "fixture-1" and status["feature_count"] == 2
    assert sorted(status["models_loaded"]) == sorted(
        f"{lib}_{t}" for lib in ("catboost", "lightgbm", "xgboost") for t in ("win", "place")
    )


def test_a_backtest_job_runs_in_the_background_and_reports_its_metrics(client: httpx.Client) -> None:
    r = client.post("/api/v1/backtest", json={"start": "2020-01-01", "end": "2020-06-01"}, headers=KEY)
    assert r.status_code == 202 and r.json()["state"] in ("queued", "running")
    job_id = r.json()["job_id"]
    for _ in range(100):
        job = client.get(f"/api/v1/backtest/{job_id}").json()
        if job["state"] == "done":
            break
        time.sleep(0.02)
    assert job["state"] == "done" and job["metrics"]["n_folds"] == 3
    r = client.get("/api/v1/backtest/unknown-job")
    assert r.status_code == 404 and "unknown-job" in r.json()["detail"]
    r = client.post("/api/v1/backtest", json={"start": "2020-06-01", "end": "2020-01-01"}, headers=KEY)
    assert "end" in fields(r)


def test_fuse_gives_fused_probabilities_and_422_for_a_horse_without_record(client: httpx.Client) -> None:
    body = race_body("FU", 3)
    horses = [r["horse_id"] for r in body["horses"]]
    r = client.post("/api/v1/fuse", json={**body, "qualitative": qualitative("FU", horses)}, headers=KEY)
    assert r.status_code == 200, r.text
    fused = {f["horse_id"]: f for f in r.json()["fused"]}
    assert abs(sum(f["win_prob_final"] for f in fused.values()) - 1) < 1e-9
    assert fused["FU-H0"]["win_prob_final"] > fused["FU-H0"]["win_prob_base"]  # its LR is 1.2, the others 1
    r = client.post("/api/v1/fuse", json={**body, "qualitative": qualitative("FU", horses[:2])}, headers=KEY)
    assert r.status_code == 422 and "FU-H2" in r.text
    r = client.post("/api/v1/fuse", json={**body, "qualitative": qualitative("FU", ["OTHER"])}, headers=KEY)
    assert "qualitative.0.horse_id" in fields(r)


def test_healthz_and_prometheus_metrics(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "model_version": "fixture-1"}
    assert client.post("/api/v1/quantify", json=race_body("MT")).status_code == 200  # counted whatever ran before
    text = client.get("/metrics").text
    assert 'racequant_http_requests_total{method="POST",route="/api/v1/quantify",status="200"}' in text
    assert "racequant_http_request_duration_seconds_bucket" in text
    assert 'racequant_predictions_served_total{model_version="fixture-1"}' in text


def test_concurrent_clients_all_find_their_predictions_in_the_log(client: httpx.Client, server: ThreadServer) -> None:
    def one(i: int) -> list[str]:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            ids = []
            for j in range(5):
                r = c.post("/api/v1/quantify", json=race_body(f"C{i}-{j}", 14))
                assert r.status_code == 200
                ids += r.json()["metadata"]["prediction_ids"]
            return ids

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        acknowledged = {pid for ids in pool.map(one, range(20)) for pid in ids}
    logged = {p["prediction_id"] for p in client.get("/api/v1/monitoring/predictions", params={"limit": 10000}).json()}
    assert len(acknowledged) == 20 * 5 * 14 and acknowledged <= logged


def test_an_internal_error_answers_500_without_trace_or_path(tmp_path: Any) -> None:
    app = create_app(
        Settings(db=tmp_path / "w.duckdb"),
        FixturePredictor(fail=RuntimeError(f"boom in {tmp_path}")),
        feature_lookup=None,
        backtest_runner=None,
        reference_features=None,
    )
    with ThreadServer(app) as srv:
        r = httpx.post(f"{srv.url}/api/v1/quantify", json=race_body("E1", 3), timeout=10)
        assert r.status_code == 500
        assert_clean(r)
        assert "boom" not in r.text
