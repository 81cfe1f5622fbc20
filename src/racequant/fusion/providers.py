"""Sources of qualitative output behind one small interface: ``await provider.assess(card, notes)``.

- SubmittedProvider: records submitted as JSON (a file, the API, or the warehouse), looked up by race.
- OpenAICompatibleProvider: asks any OpenAI-compatible chat-completions endpoint for the schema as structured
  output, validates the answer, retries timeouts, 429/5xx answers and malformed answers with backoff.
- NullProvider: no qualitative reading; every ratio is 1.

A race card is a mapping with ``race_id`` (or ``race: {race_id}``) and ``runners``: a list of mappings with
``horse_id`` and ``horse_name``; anything else on the card is passed to the language model as context.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import httpx

from racequant.fusion.errors import ProviderError, QualitativeValidationError
from racequant.fusion.schema import (
    LR_MAX,
    LR_MIN,
    NARRATIVE_MAX,
    NARRATIVE_MIN,
    QualitativeRecord,
    neutral_record,
    qualitative_json_schema,
    records_from_json,
)

logger = logging.getLogger(__name__)


def card_race_id(card: Mapping[str, Any]) -> str:
    """The race id of a race card (top-level ``race_id`` or ``race.race_id``)."""
    race_id = card.get("race_id")
    if race_id is None and isinstance(card.get("race"), Mapping):
        race_id = card["race"].get("race_id")
    if race_id is None:
        raise ProviderError("The race card has no race_id (neither 'race_id' nor 'race.race_id').")
    return str(race_id)


def card_runners(card: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(horse_id, horse_name) of each declared runner of a race card; withdrawn runners are not in the race."""
    runners = card.get("runners")
    if not isinstance(runners, list) or not runners:
        raise ProviderError("The race card has no 'runners' list.")
    out = []
    for i, r in enumerate(runners):
        if not isinstance(r, Mapping) or r.get("horse_id") is None:
            raise ProviderError(f"Runner {i} of the race card has no horse_id.")
        if str(r.get("status", "")).lower() == "withdrawn":
            continue
        out.append((str(r["horse_id"]), str(r.get("horse_name") or r["horse_id"])))
    return out


def check_runners(records: Sequence[QualitativeRecord], card: Mapping[str, Any], source: str) -> None:
    """The records cover exactly the card's runners, no missing and no extra horse."""
    race_id = card_race_id(card)
    expected = dict(card_runners(card))
    got = {r.horse_id for r in records}
    problems = [
        f"race {race_id}, horse {h} ({expected[h]}): missing from the qualitative records"
        for h in expected
        if h not in got
    ]
    problems += [
        f"race {race_id}, horse {r.horse_id} ({r.horse_name}): extra, not a runner on the card"
        for r in records
        if r.horse_id not in expected
    ]
    if problems:
        raise QualitativeValidationError(problems, source=source)


@runtime_checkable
class QualitativeProvider(Protocol):
    """Anything that turns a race card (and optional notes) into validated qualitative records."""

    name: str

    async def assess(self, card: Mapping[str, Any], notes: str | None = None) -> list[QualitativeRecord]: ...


class NullProvider:
    """No qualitative reading: every likelihood ratio is 1, so fusion returns the base probabilities."""

    name = "none"

    def __init__(self, clock: Any = None) -> None:
        self.clock = clock

    async def assess(self, card: Mapping[str, Any], notes: str | None = None) -> list[QualitativeRecord]:
        now = self.clock() if self.clock is not None else datetime.now(UTC)
        race_id = card_race_id(card)
        return [neutral_record(race_id, h, name, now) for h, name in card_runners(card)]


class SubmittedProvider:
    """Qualitative records submitted beforehand (a JSON file, the API or the warehouse), looked up by race."""

    name = "submitted"

    def __init__(self, records: Sequence[QualitativeRecord]) -> None:
        self.records = list(records)
        self._by_race: dict[str, list[QualitativeRecord]] = {}
        for r in self.records:
            self._by_race.setdefault(r.race_id, []).append(r)

    async def assess(self, card: Mapping[str, Any], notes: str | None = None) -> list[QualitativeRecord]:
        race_id = card_race_id(card)
        records = self._by_race.get(race_id)
        if not records:
            raise ProviderError(f"No submitted qualitative records for race {race_id}.")
        return list(records)


SYSTEM_PROMPT = f"""You are a horse-racing analyst. For every runner of the race card, read its form, fitness,
the conditions (distance, going, surface, draw), the likely tactics (pace, run style) and the context (class,
connections, weight) and state four likelihood ratios: how much more (>1) or less (<1) likely the runner is to
win than a good statistical model that already knows its ratings and recent results. Ratios must lie in
[{LR_MIN}, {LR_MAX}]; 1 means no extra information, so most ratios should be near 1. lr_product is the product of
the four. Give key_strengths and key_concerns as short phrases, a race_narrative of {NARRATIVE_MIN}-{NARRATIVE_MAX}
characters (the same for every runner), a qualitative_confidence in [0, 1], model_chain as given, and
prediction_timestamp as given (ISO 8601). Answer with JSON only: {{"records": [one object per runner]}}."""


class OpenAICompatibleProvider:
    """Qualitative records from an OpenAI-compatible chat-completions endpoint, validated before use.

    Timeouts, transport errors, HTTP 429 and 5xx answers, and answers that are not valid JSON or break the
    schema are retried ``retries`` times with exponential backoff (``backoff_s``, doubled each time); other
    HTTP errors (401, 404, ...) are not. When every attempt fails a ProviderError names the last problem.
    """

    name = "llm"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        temperature: float = 0.0,
        client: httpx.AsyncClient | None = None,
        clock: Any = None,
    ) -> None:
        if not base_url:
            raise ProviderError("The OpenAI-compatible provider needs a base URL (setting llm_base_url).")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.temperature = temperature
        self.client = client
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> OpenAICompatibleProvider:
        """Build from racequant Settings (llm_base_url, llm_model, llm_api_key, llm_timeout_s, llm_retries)."""
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key is not None else None
        return cls(
            base_url=settings.llm_base_url or "",
            model=settings.llm_model,
            api_key=key,
            timeout_s=settings.llm_timeout_s,
            retries=settings.llm_retries,
            **kwargs,
        )

    def request_body(self, card: Mapping[str, Any], notes: str | None, timestamp: str) -> dict[str, Any]:
        user = {
            "race_card": card,
            "notes": notes or "",
            "model_chain": f"{self.name}:{self.model}",
            "prediction_timestamp": timestamp,
        }
        return {
            "model": self.model,
            "temperature": self.temperature,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": json.dumps(user, default=str)},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "qualitative_assessment", "schema": qualitative_json_schema()},
            },
        }

    def _parse(self, response: httpx.Response, card: Mapping[str, Any]) -> list[QualitativeRecord]:
        """Records from one 200 answer; raises QualitativeValidationError (retryable) when malformed."""
        source = f"answer of {self.base_url} ({self.model})"
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise QualitativeValidationError([f"not a chat-completions answer: {exc!r}"], source=source) from None
        if not isinstance(content, str):
            raise QualitativeValidationError(["message content is not a string"], source=source)
        text = content.strip()
        if text.startswith("```"):  # some models fence their JSON despite being asked not to
            text = text.strip("`").removeprefix("json").strip()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QualitativeValidationError([f"message content is not valid JSON: {exc}"], source=source) from None
        records = records_from_json(data, source=source, race_id=card_race_id(card))
        check_runners(records, card, source)
        return records

    async def assess(self, card: Mapping[str, Any], notes: str | None = None) -> list[QualitativeRecord]:
        now = self.clock() if self.clock is not None else datetime.now(UTC)
        body = self.request_body(card, notes, now.isoformat())
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = f"{self.base_url}/chat/completions"
        client = self.client or httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s))
        last = "no attempt made"
        try:
            for attempt in range(self.retries + 1):
                if attempt:
                    delay = self.backoff_s * 2 ** (attempt - 1)
                    logger.info("LLM provider: retry %d of %d in %.2fs (%s)", attempt, self.retries, delay, last)
                    await asyncio.sleep(delay)
                try:
                    response = await client.post(url, json=body, headers=headers, timeout=self.timeout_s)
                except httpx.TimeoutException:
                    last = f"timed out after {self.timeout_s:g}s"
                    continue
                except httpx.TransportError as exc:
                    last = f"transport error: {exc!r}"
                    continue
                if response.status_code == 429 or response.status_code >= 500:
                    last = f"HTTP {response.status_code}"
                    continue
                if response.status_code != 200:
                    raise ProviderError(
                        f"The LLM endpoint {url} answered HTTP {response.status_code}: {response.text[:200]}"
                    )
                try:
                    records = self._parse(response, card)
                except QualitativeValidationError as exc:
                    last = f"malformed answer: {exc}"
                    continue
                logger.info("LLM provider: %d records for race %s", len(records), card_race_id(card))
                return records
        finally:
            if self.client is None:
                await client.aclose()
        raise ProviderError(f"The LLM provider failed after {self.retries + 1} attempt(s); last problem: {last}")
