"""The model's worker threads: cards queued together share one call; a bad card fails alone."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import pytest

from racequant.serve.batching import PredictionPool, PredictionPoolClosedError


class CountingPredictor:
    """Records each call; a card named 'bad' raises; the first call waits until released (so others queue)."""

    model_version = feature_version = "test"
    feature_count = 0

    def __init__(self) -> None:
        self.models_loaded: dict[str, bool] = {}
        self.calls: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def _one(self, card: str) -> list[dict[str, Any]]:
        if card == "bad":
            raise ValueError("bad card")
        return [{"race_id": card}]

    def predict(self, card: str, as_of: datetime | None) -> list[dict[str, Any]]:
        self.entered.set()
        self.release.wait(5)
        self.calls.append([card])
        return self._one(card)

    def predict_many(self, cards: list[tuple[str, datetime | None]]) -> list[list[dict[str, Any]]]:
        self.calls.append([c for c, _ in cards])
        return [self._one(c) for c, _ in cards]


def test_cards_queued_together_share_one_call_and_a_bad_one_fails_alone() -> None:
    predictor = CountingPredictor()
    pool = PredictionPool(predictor, workers=1, max_batch=8)
    first = pool.submit("first", None, lambda records: records[0]["race_id"])
    assert predictor.entered.wait(5)  # the worker is busy with the first card: the next ones queue
    futures = {c: pool.submit(c, None, lambda records: records[0]["race_id"]) for c in ("a", "bad", "b")}
    predictor.release.set()
    assert first.result(5) == "first"
    assert futures["a"].result(5) == "a" and futures["b"].result(5) == "b"
    with pytest.raises(ValueError, match="bad card"):
        futures["bad"].result(5)
    pool.close()
    # the three queued behind the first went in one call; it failed, so each was predicted alone
    assert predictor.calls[:2] == [["first"], ["a", "bad", "b"]]
    assert sorted(predictor.calls[2:]) == [["a"], ["b"], ["bad"]]


def test_a_closed_pool_refuses_cards() -> None:
    pool = PredictionPool(CountingPredictor(), workers=1)
    pool.close()
    with pytest.raises(PredictionPoolClosedError):
        pool.submit("a", None, lambda records: records)
