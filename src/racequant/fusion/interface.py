"""FusionInterface: the quantitative and qualitative pipelines of one race, run concurrently, then fused.

The quantitative side is any callable ``predict_race(card) -> list[dict]`` (plain functions run in a worker thread
so they do not hold up the event loop; coroutine functions are awaited); the qualitative side is a
QualitativeProvider. Both start at once in an asyncio TaskGroup, so the race takes as long as the slower of the
two, and a failure of either cancels the other at once instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from racequant.fusion.errors import ProviderError
from racequant.fusion.fusion import (
    DEFAULT_HARVILLE_D,
    DEFAULT_HARVILLE_G,
    MODES,
    FittedFusion,
    fuse_records,
    validate_for_fusion,
)
from racequant.fusion.providers import NullProvider, QualitativeProvider
from racequant.fusion.schema import QualitativeRecord

logger = logging.getLogger(__name__)

_EXECUTOR: ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """Threads for plain quantitative callables, kept apart from asyncio's default executor so that a caller
    using ``asyncio.run`` is not held up by a quantitative thread still running after the qualitative side failed."""
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = ThreadPoolExecutor(max_workers=4, thread_name_prefix="racequant-fusion")
        return _EXECUTOR


QuantitativePredictor = Callable[[Mapping[str, Any]], list[dict[str, Any]] | Awaitable[list[dict[str, Any]]]]


class FusionInterface:
    """Predict one race: base model and qualitative provider concurrently, then fusion (product or fitted).

    ``qualitative_deadline_s`` bounds the wait for the qualitative side; with ``on_qualitative_failure="neutral"``
    a late or failing provider is replaced by the null provider (every ratio 1) and logged, with ``"raise"``
    (the default) its error propagates.
    """

    def __init__(
        self,
        quantitative: QuantitativePredictor,
        provider: QualitativeProvider | None = None,
        mode: str = "product",
        pool: FittedFusion | None = None,
        qualitative_deadline_s: float | None = None,
        on_qualitative_failure: str = "raise",
        harville_g: float = DEFAULT_HARVILLE_G,
        harville_d: float = DEFAULT_HARVILLE_D,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"The 'mode' parameter of FusionInterface must be one of {MODES}. Got {mode!r} instead.")
        if on_qualitative_failure not in ("raise", "neutral"):
            raise ValueError(
                "The 'on_qualitative_failure' parameter of FusionInterface must be one of ('raise', 'neutral'). "
                f"Got {on_qualitative_failure!r} instead."
            )
        self.quantitative = quantitative
        self.provider = provider if provider is not None else NullProvider()
        self.mode = mode
        self.pool = pool
        self.qualitative_deadline_s = qualitative_deadline_s
        self.on_qualitative_failure = on_qualitative_failure
        self.harville_g = harville_g
        self.harville_d = harville_d

    async def _quantitative(self, card: Mapping[str, Any]) -> list[dict[str, Any]]:
        if inspect.iscoroutinefunction(self.quantitative):
            return list(await self.quantitative(card))  # type: ignore[misc]
        result = await asyncio.get_running_loop().run_in_executor(_executor(), self.quantitative, card)
        if inspect.isawaitable(result):
            result = await result
        return list(result)  # type: ignore[arg-type]

    async def _qualitative(self, card: Mapping[str, Any], notes: str | None) -> list[QualitativeRecord]:
        try:
            if self.qualitative_deadline_s is None:
                return await self.provider.assess(card, notes)
            return await asyncio.wait_for(self.provider.assess(card, notes), self.qualitative_deadline_s)
        except (TimeoutError, ProviderError, ValueError) as exc:
            if self.on_qualitative_failure == "raise":
                if isinstance(exc, TimeoutError):
                    raise ProviderError(
                        f"The qualitative provider '{self.provider.name}' missed its deadline of "
                        f"{self.qualitative_deadline_s:g}s."
                    ) from exc
                raise
            logger.warning("qualitative provider '%s' failed (%s); every ratio set to 1", self.provider.name, exc)
            return await NullProvider().assess(card, notes)

    async def run_pipelines(
        self, card: Mapping[str, Any], notes: str | None = None
    ) -> tuple[list[dict[str, Any]], list[QualitativeRecord]]:
        """Both pipelines at once; returns (quantitative records, qualitative records)."""
        try:
            async with asyncio.TaskGroup() as group:
                quant = group.create_task(self._quantitative(card))
                qual = group.create_task(self._qualitative(card, notes))
        except ExceptionGroup as eg:
            # a TaskGroup wraps errors; surface the first one as itself (the other task was cancelled)
            raise eg.exceptions[0] from None
        return quant.result(), qual.result()

    def validate_for_fusion(
        self, quant_records: Sequence[Mapping[str, Any]], qual_records: Sequence[QualitativeRecord]
    ) -> None:
        """Required fields present and exactly the same horses on both sides (a missing or extra one is named)."""
        validate_for_fusion(quant_records, qual_records)

    async def predict_race(self, card: Mapping[str, Any], notes: str | None = None) -> list[dict[str, Any]]:
        """One fused record per runner (the quantitative record plus the ratios and the final probabilities)."""
        quant, qual = await self.run_pipelines(card, notes)
        self.validate_for_fusion(quant, qual)
        return fuse_records(quant, qual, self.mode, self.pool, self.harville_g, self.harville_d)

    def predict_race_sync(self, card: Mapping[str, Any], notes: str | None = None) -> list[dict[str, Any]]:
        """predict_race for callers without an event loop (the CLI)."""
        return asyncio.run(self.predict_race(card, notes))
