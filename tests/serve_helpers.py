"""Helpers of the API tests: a real uvicorn server on a free local port (thread or subprocess) and fixtures."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from racequant.models.card import RaceCard
from racequant.serve.predictor import SIX_MODELS

API_KEY = "test-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """uvicorn serving ``app`` in a thread of this process, on a free port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)


class SubprocessServer:
    """``racequant.serve.run_server`` in a child process (market-baseline predictor), for kill tests."""

    def __init__(self, db: Path, port: int | None = None) -> None:
        self.db = db
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SubprocessServer:
        env = {
            **os.environ,
            "RACEQUANT_DB": str(self.db),
            "RACEQUANT_MODEL_VERSION": "market-baseline",
            "RACEQUANT_API_KEYS": API_KEY,
            "RACEQUANT_LOG_LEVEL": "WARNING",
        }
        code = (
            "from racequant.serve import run_server; from racequant.settings import Settings; "
            f"run_server(Settings(), '127.0.0.1', {self.port})"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class FixturePredictor:
    """A tiny predictor: win chances from the rating (equal without), Harville-free place = 3 x win capped."""

    model_version = "fixture-1"
    feature_version = "fixture-features"
    feature_count = 2
    models_loaded = dict.fromkeys(SIX_MODELS, True)

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail

    def predict(self, card: RaceCard, as_of: datetime | None) -> list[dict[str, Any]]:
        if self.fail is not None:
            raise self.fail
        runners = card.declared()
        weights = [1.0 + (r.rating or 50.0) / 50.0 for r in runners]
        total = sum(weights)
        out = []
        for r, w in zip(runners, weights, strict=True):
            p = w / total
            out.append(
                {
                    "race_id": card.race_id,
                    "horse_id": r.horse_id,
                    "horse_name": r.horse_name,
                    "win_prob_base": p,
                    "place_prob_base": min(1.0, 3 * p),
                    "win_prob_lower": p * 0.8,
                    "win_prob_upper": min(1.0, p * 1.2),
                    "place_prob_lower": min(1.0, 2.5 * p),
                    "place_prob_upper": min(1.0, 3.5 * p),
                    "catboost_win": p,
                    "lightgbm_win": p,
                    "xgboost_win": p,
                    "top_features": [{"feature": "rating", "importance": 0.1}],
                    "speed_rating": 80.0,
                    "class_rating": None,
                    "sectional_l200": float("nan"),
                    "quant_triple_scenario": "mixed",
                    "calibration_group": card.track,
                    "prediction_timestamp": datetime.now(UTC),
                    "_features": {"rating": r.rating, "draw": r.draw},
                }
            )
        return out


def race_body(race_id: str = "R1", n: int = 14, **race: Any) -> dict[str, Any]:
    """A race request in the seed's form (race fields beside ``horses``)."""
    return {
        "race_id": race_id,
        "date": "2024-03-03",
        "track": "ST",
        "distance": 1200,
        "surface": "turf",
        "going": "GOOD",
        "race_class": "4",
        **race,
        "horses": [
            {
                "horse_id": f"{race_id}-H{i}",
                "horse_name": f"Horse {i}",
                "draw": (i % 24) + 1,
                "weight": 120.0,
                "jockey": f"J{i}",
                "trainer": f"T{i % 5}",
                "rating": 40.0 + i,
                "win_odds": 3.0 + i,
            }
            for i in range(n)
        ],
    }


def qualitative(race_id: str, horse_ids: list[str]) -> list[dict[str, Any]]:
    narrative = (
        "A steady, consistent type who handles the track well and races prominently from a good draw; "
        "the form lines are solid and the trainer's yard is in good heart at this meeting."
    )
    return [
        {
            "race_id": race_id,
            "horse_id": h,
            "horse_name": h,
            "lr_form_fitness": 1.2 if i == 0 else 1.0,
            "lr_conditions": 1.0,
            "lr_tactics": 1.0,
            "lr_context": 1.0,
            "lr_product": 1.2 if i == 0 else 1.0,
            "key_strengths": ["draw"],
            "key_concerns": [],
            "race_narrative": narrative,
            "qualitative_confidence": 0.5,
            "model_chain": "analyst",
            "prediction_timestamp": "2024-03-02T10:00:00",
        }
        for i, h in enumerate(horse_ids)
    ]


class HangingPredictor(FixturePredictor):
    """The fixture predictor, except that a race whose id starts with HANG writes the predicting process's id to
    ``marker`` and hangs (so that a test can kill the model worker process in the middle of a request)."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = marker

    def predict(self, card: RaceCard, as_of: datetime | None) -> list[dict[str, Any]]:
        if card.race_id.startswith("HANG"):
            self.marker.write_text(str(os.getpid()))
            time.sleep(120)
        return super().predict(card, as_of)
