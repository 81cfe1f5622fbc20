"""The OpenAI-compatible provider against a small local server that speaks the chat-completions protocol.

The server (http.server in a thread, on a free port) picks its behaviour from the first path segment:
good, fenced, malformed, schema_bad, wrong_horse, slow, error500, flaky (500 once, then good), unauthorised.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from fusion_helpers import race_card, race_records
from racequant.fusion.errors import ProviderError
from racequant.fusion.providers import NullProvider, OpenAICompatibleProvider, SubmittedProvider
from racequant.fusion.schema import validate_qualitative
from racequant.settings import Settings

CARD = race_card("R1", ["A", "B", "C"])
SLOW_S = 0.6


@dataclass
class ServerState:
    requests: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def _completion(content: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": "test-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }
    ).encode()


def _good_content() -> str:
    return json.dumps({"records": race_records("R1", {"A": 2.0, "B": 1.0, "C": 0.5})})


def _make_handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep the test output clean
            pass

        def _send(self, status: int, body: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            behaviour = self.path.strip("/").split("/")[0]
            state.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            state.counts[behaviour] = state.counts.get(behaviour, 0) + 1
            if not self.path.endswith("/v1/chat/completions"):
                self._send(404, b'{"error": "not found"}')
            elif behaviour == "good":
                self._send(200, _completion(_good_content()))
            elif behaviour == "fenced":
                self._send(200, _completion(f"```json\n{_good_content()}\n```"))
            elif behaviour == "malformed":
                self._send(200, _completion("The favourite looks strong; I would back A."))
            elif behaviour == "not_chat":
                self._send(200, b'{"result": "ok"}')
            elif behaviour == "schema_bad":
                records = race_records("R1", {"A": 2.0, "B": 1.0, "C": 0.5})
                records[1]["lr_tactics"] = 40.0
                self._send(200, _completion(json.dumps({"records": records})))
            elif behaviour == "wrong_horse":
                self._send(200, _completion(json.dumps({"records": race_records("R1", {"A": 2.0, "B": 1.0, "Z": 1})})))
            elif behaviour == "slow":
                time.sleep(SLOW_S)
                self._send(200, _completion(_good_content()))
            elif behaviour == "error500":
                self._send(500, b'{"error": "internal"}')
            elif behaviour == "flaky":
                if state.counts[behaviour] == 1:
                    self._send(503, b'{"error": "overloaded"}')
                else:
                    self._send(200, _completion(_good_content()))
            elif behaviour == "unauthorised":
                self._send(401, b'{"error": "invalid api key"}')
            else:
                self._send(404, b'{"error": "unknown behaviour"}')

    return Handler


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _provider(url: str, behaviour: str, **kwargs: Any) -> OpenAICompatibleProvider:
    params = {"model": "test-model", "api_key": "sk-test", "timeout_s": 5.0, "retries": 2, "backoff_s": 0.01}
    params.update(kwargs)
    return OpenAICompatibleProvider(base_url=f"{url}/{behaviour}/v1/", **params)


def test_a_good_answer_gives_validated_records_and_the_request_follows_the_protocol(server) -> None:  # type: ignore[no-untyped-def]
    url, state = server
    records = asyncio.run(_provider(url, "good").assess(CARD, notes="Rail out 3 m."))
    assert [(r.horse_id, r.lr_product) for r in records] == [("A", 2.0), ("B", 1.0), ("C", 0.5)]
    request = state.requests[-1]
    assert request["path"] == "/good/v1/chat/completions"
    assert request["auth"] == "Bearer sk-test"
    body = request["body"]
    assert body["model"] == "test-model"
    assert body["response_format"]["type"] == "json_schema"
    assert "records" in body["response_format"]["json_schema"]["schema"]["properties"]
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    user = json.loads(body["messages"][1]["content"])
    assert user["race_card"]["race_id"] == "R1" and user["notes"] == "Rail out 3 m."


def test_a_fenced_json_answer_is_accepted(server) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    assert len(asyncio.run(_provider(url, "fenced").assess(CARD))) == 3


@pytest.mark.parametrize(
    ("behaviour", "problem"),
    [
        ("malformed", "message content is not valid JSON"),
        ("not_chat", "not a chat-completions answer"),
        ("schema_bad", "horse B (Horse B), field 'lr_tactics'"),
        ("wrong_horse", "horse C (Horse C): missing from the qualitative records"),
        ("error500", "HTTP 500"),
    ],
)
def test_failures_are_retried_then_reported(server, behaviour: str, problem: str) -> None:  # type: ignore[no-untyped-def]
    url, state = server
    before = state.counts.get(behaviour, 0)
    with pytest.raises(ProviderError, match=r"(?s)failed after 3 attempt\(s\); last problem: .*" + re.escape(problem)):
        asyncio.run(_provider(url, behaviour).assess(CARD))
    assert state.counts[behaviour] - before == 3


def test_a_slow_answer_times_out_and_is_retried_within_the_budget(server) -> None:  # type: ignore[no-untyped-def]
    url, state = server
    before = state.counts.get("slow", 0)
    start = time.perf_counter()
    with pytest.raises(ProviderError, match=r"last problem: timed out after 0.2s"):
        asyncio.run(_provider(url, "slow", timeout_s=0.2, retries=1).assess(CARD))
    elapsed = time.perf_counter() - start
    assert state.counts["slow"] - before == 2
    assert elapsed < SLOW_S  # two 0.2 s attempts, never the full slow answer


def test_a_slow_answer_within_the_timeout_is_accepted(server) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    assert len(asyncio.run(_provider(url, "slow", timeout_s=SLOW_S + 2, retries=0).assess(CARD))) == 3


def test_a_transient_503_is_retried_with_success(server) -> None:  # type: ignore[no-untyped-def]
    url, state = server
    assert len(asyncio.run(_provider(url, "flaky").assess(CARD))) == 3
    assert state.counts["flaky"] == 2


def test_an_authorisation_error_is_not_retried(server) -> None:  # type: ignore[no-untyped-def]
    url, state = server
    with pytest.raises(ProviderError, match="answered HTTP 401"):
        asyncio.run(_provider(url, "unauthorised").assess(CARD))
    assert state.counts["unauthorised"] == 1


def test_an_unreachable_endpoint_is_a_provider_error() -> None:
    provider = OpenAICompatibleProvider("http://127.0.0.1:9/v1", "m", timeout_s=0.5, retries=1, backoff_s=0.01)
    with pytest.raises(ProviderError, match="transport error"):
        asyncio.run(provider.assess(CARD))


def test_the_provider_is_built_from_settings_without_exposing_the_key() -> None:
    settings = Settings(
        llm_base_url="http://llm.local/v1", llm_model="m1", llm_api_key=SecretStr("sk-1"), llm_retries=4
    )
    provider = OpenAICompatibleProvider.from_settings(settings)
    assert (provider.base_url, provider.model, provider.api_key, provider.retries) == (
        "http://llm.local/v1",
        "m1",
        "sk-1",
        4,
    )
    assert "sk-1" not in repr(settings)
    with pytest.raises(ProviderError, match="needs a base URL"):
        OpenAICompatibleProvider.from_settings(Settings())


def test_the_null_provider_gives_ratio_one_for_every_runner() -> None:
    card = race_card("R1", ["A", "B", "C"])
    card["runners"].append({"horse_id": "D", "horse_name": "Gone", "status": "withdrawn"})
    records = asyncio.run(NullProvider().assess(card))
    assert [(r.horse_id, r.lr_product, r.lr_tactics) for r in records] == [
        ("A", 1.0, 1.0),
        ("B", 1.0, 1.0),
        ("C", 1.0, 1.0),
    ]


def test_the_submitted_provider_looks_records_up_by_race() -> None:
    provider = SubmittedProvider(validate_qualitative(race_records("R1", {"A": 2.0, "B": 1.0, "C": 0.5})))
    assert len(asyncio.run(provider.assess(CARD))) == 3
    with pytest.raises(ProviderError, match="No submitted qualitative records for race R2"):
        asyncio.run(provider.assess(race_card("R2", ["A"])))
