"""The API with the real registry predictor: the lifespan loads a trained version and predicts warehouse cards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model_fixtures import TrainedModel, trained_model  # noqa: F401  (the session fixture)
from racequant.serve import create_app
from racequant.settings import Settings
from racequant.warehouse import connect_read_only
from serve_helpers import API_KEY, ThreadServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(
    trained_model: TrainedModel,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ThreadServer, TrainedModel]]:
    settings = Settings(
        db=trained_model.db,
        models_dir=trained_model.models_dir,
        api_keys=[API_KEY],
        predlog=tmp_path_factory.mktemp("model-api") / "log.predlog.duckdb",
    )
    with ThreadServer(create_app(settings)) as server:
        yield server, trained_model


def test_the_lifespan_loads_the_registry_version_with_its_six_models(served: tuple[ThreadServer, TrainedModel]) -> None:
    server, model = served
    status = httpx.get(f"{server.url}/api/v1/model/status").json()
    assert status["model_version"] == model.version and status["feature_count"] > 10
    assert status["status"] == "ok" and all(status["models_loaded"].values()) and len(status["models_loaded"]) == 6


def test_a_held_out_card_is_quantified_logged_and_explained(
    served: tuple[ThreadServer, TrainedModel], tmp_path: Path
) -> None:
    server, model = served
    race_id = model.held_out[0]
    with connect_read_only(model.db) as conn:
        card = model.card(conn, race_id)
    r = httpx.post(f"{server.url}/api/v1/quantify", json=card, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["metadata"]["model_version"] == model.version
    assert abs(sum(p["win_prob_base"] for p in body["predictions"]) - 1) < 1e-6
    assert all(p["catboost_win"] is not None and p["top_features"] for p in body["predictions"])

    horse = body["predictions"][0]["horse_id"]
    stored = httpx.get(f"{server.url}/api/v1/features/{horse}", params={"race_id": race_id}, timeout=30)
    assert stored.status_code == 200 and stored.json()["features"]
    context = httpx.get(
        f"{server.url}/api/v1/features/{horse}",
        timeout=30,
        params={
            "date": card["date"],
            "track": card["track"],
            "distance_m": card["distance"],
            "surface": card.get("surface", "turf"),
        },
    )
    assert context.status_code == 200, context.text
    assert httpx.get(f"{server.url}/api/v1/features/NOBODY", params={"race_id": race_id}).status_code == 404
    missing = httpx.get(f"{server.url}/api/v1/features/{horse}", params={"race_id": "NO-RACE"})
    assert missing.status_code == 404 and "NO-RACE" in missing.json()["detail"]

    drift = httpx.get(f"{server.url}/api/v1/monitoring/drift", timeout=30).json()
    assert drift["features"]["status"] in ("ok", "unavailable")  # a reference exists; one race is too few to judge

    # the log keeps each runner's model features, as the feature-drift check reads them
    service = server.server.config.app.state.service
    logged = service.writer.read(
        lambda c: c.execute("SELECT horse_id, features_json FROM predictions WHERE race_id = ?", [race_id]).fetchall()
    )
    assert sorted(h for h, _ in logged) == sorted(p["horse_id"] for p in body["predictions"])
    for _, text in logged:
        values = json.loads(text)
        assert len(values) == service.predictor.feature_count
        assert any(isinstance(v, float) for v in values.values())
