"""FusionInterface: both pipelines run at once, the slower one does not hold up the faster longer than it must."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from typing import Any

import pytest

from fusion_helpers import quant_records, race_card, race_records
from racequant.fusion.errors import FusionMismatchError, ProviderError
from racequant.fusion.interface import FusionInterface
from racequant.fusion.providers import NullProvider
from racequant.fusion.schema import QualitativeRecord, validate_qualitative

DELAY = 0.4
CARD = race_card("R1", ["A", "B", "C"])


def _sync_quant(delay: float = 0.0):  # type: ignore[no-untyped-def]
    def predict_race(card: Mapping[str, Any]) -> list[dict[str, Any]]:
        time.sleep(delay)  # a blocking model: runs in a worker thread
        return quant_records(str(card["race_id"]), {"A": 0.5, "B": 0.3, "C": 0.2})

    return predict_race


class _SlowProvider:
    name = "slow"

    def __init__(self, delay: float, lrs: dict[str, float] | None = None, fail: bool = False) -> None:
        self.delay = delay
        self.lrs = lrs or {"A": 2.0, "B": 1.0, "C": 0.5}
        self.fail = fail
        self.cancelled = False

    async def assess(self, card: Mapping[str, Any], notes: str | None = None) -> list[QualitativeRecord]:
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.fail:
            raise ProviderError("the analysts are on strike")
        return validate_qualitative(race_records(str(card["race_id"]), self.lrs))


def _timed(coro) -> tuple[Any, float]:  # type: ignore[no-untyped-def]
    async def run() -> tuple[Any, float]:
        start = time.perf_counter()
        result = await coro
        return result, time.perf_counter() - start

    return asyncio.run(run())


def test_predict_race_fuses_both_sides() -> None:
    out = FusionInterface(_sync_quant(), _SlowProvider(0.0)).predict_race_sync(CARD)
    assert [r["win_prob_final"] for r in out] == pytest.approx([1 / 1.4, 0.3 / 1.4, 0.1 / 1.4])


def test_the_two_pipelines_run_concurrently() -> None:
    interface = FusionInterface(_sync_quant(DELAY), _SlowProvider(DELAY))
    out, elapsed = _timed(interface.predict_race(CARD))
    assert len(out) == 3
    # sequential would take 2 * DELAY
    assert DELAY <= elapsed < 1.5 * DELAY


def test_a_fast_quantitative_side_waits_only_for_the_slow_qualitative_side() -> None:
    interface = FusionInterface(_sync_quant(0.0), _SlowProvider(DELAY))
    (quant, qual), elapsed = _timed(interface.run_pipelines(CARD))
    assert len(quant) == len(qual) == 3
    assert elapsed < 1.5 * DELAY


def test_a_failing_qualitative_side_does_not_wait_for_the_slow_quantitative_side() -> None:
    async def slow_async_quant(card: Mapping[str, Any]) -> list[dict[str, Any]]:
        await asyncio.sleep(5.0)
        return []

    interface = FusionInterface(slow_async_quant, _SlowProvider(0.05, fail=True))
    start = time.perf_counter()
    with pytest.raises(ProviderError, match="on strike"):
        asyncio.run(interface.predict_race(CARD))
    assert time.perf_counter() - start < 1.0


def test_a_failing_qualitative_side_does_not_wait_for_a_blocking_quantitative_thread() -> None:
    interface = FusionInterface(_sync_quant(2.0), _SlowProvider(0.05, fail=True))
    start = time.perf_counter()
    with pytest.raises(ProviderError, match="on strike"):
        interface.predict_race_sync(CARD)
    assert time.perf_counter() - start < 1.0


def test_a_failing_quantitative_side_cancels_the_slow_qualitative_side() -> None:
    def broken(card: Mapping[str, Any]) -> list[dict[str, Any]]:
        raise FusionMismatchError("no model for this track")

    provider = _SlowProvider(5.0)
    start = time.perf_counter()
    with pytest.raises(FusionMismatchError, match="no model"):
        asyncio.run(FusionInterface(broken, provider).predict_race(CARD))
    assert time.perf_counter() - start < 1.0
    assert provider.cancelled


def test_a_late_qualitative_side_is_cut_at_its_deadline() -> None:
    interface = FusionInterface(_sync_quant(), _SlowProvider(5.0), qualitative_deadline_s=0.1)
    with pytest.raises(ProviderError, match=re.escape("missed its deadline of 0.1s")):
        interface.predict_race_sync(CARD)
    neutral = FusionInterface(
        _sync_quant(), _SlowProvider(5.0), qualitative_deadline_s=0.1, on_qualitative_failure="neutral"
    )
    out, elapsed = _timed(neutral.predict_race(CARD))
    assert elapsed < 1.0
    assert [r["win_prob_final"] for r in out] == pytest.approx([0.5, 0.3, 0.2])
    assert {r["lr_product"] for r in out} == {1.0}


def test_validate_for_fusion_names_a_missing_horse() -> None:
    interface = FusionInterface(_sync_quant(), _SlowProvider(0.0, lrs={"A": 2.0, "B": 1.0}))
    with pytest.raises(
        FusionMismatchError, match=re.escape("race R1, horse C (Horse C): missing from the qualitative")
    ):
        interface.predict_race_sync(CARD)


def test_an_async_quantitative_side_and_the_null_provider() -> None:
    async def quant(card: Mapping[str, Any]) -> list[dict[str, Any]]:
        return quant_records("R1", {"A": 0.5, "B": 0.3, "C": 0.2})

    out = FusionInterface(quant, NullProvider()).predict_race_sync(CARD)
    assert [r["win_prob_final"] for r in out] == pytest.approx([0.5, 0.3, 0.2])


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match=re.escape("The 'mode' parameter of FusionInterface must be one of")):
        FusionInterface(_sync_quant(), mode="average")
    with pytest.raises(ValueError, match="on_qualitative_failure"):
        FusionInterface(_sync_quant(), on_qualitative_failure="ignore")
