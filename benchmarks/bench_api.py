"""Load on POST /api/v1/quantify: 14-runner races from concurrent clients against a real uvicorn server.

Starts ``racequant.serve.run_server`` in a child process (the market-baseline stand-in predictor by default, or
a trained registry version with ``--models-dir`` and ``--db``), drives it from ``--clients`` concurrent clients
for ``--seconds``, and prints p50, p99, throughput and errors beside the bare in-process prediction time. Then
it stops the server and checks that every acknowledged prediction is in the prediction log.

    .venv/bin/python benchmarks/bench_api.py [--clients 20 --seconds 30] [--models-dir DIR --db FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def card(race_no: int, n: int = 14, template: dict[str, Any] | None = None) -> dict[str, Any]:
    if template is not None:
        return {**template}
    return {
        "race_id": f"B{race_no}",
        "date": "2024-03-03",
        "track": "ST",
        "distance": 1200,
        "surface": "turf",
        "going": "GOOD",
        "race_class": "4",
        "horses": [
            {
                "horse_id": f"B{race_no}-H{i}",
                "horse_name": f"Horse {i}",
                "draw": i + 1,
                "weight": 120.0,
                "jockey": f"J{i}",
                "trainer": f"T{i % 5}",
                "rating": 40.0 + i,
                "win_odds": 3.0 + i,
            }
            for i in range(n)
        ],
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


_IDS = re.compile(rb'"prediction_ids":\[([^\]]*)\]')


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> tuple[int, bytes]:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    return status, await reader.readexactly(length)


async def drive(url: str, clients: int, seconds: float, template: dict[str, Any] | None) -> dict[str, Any]:
    """Closed-loop clients on keep-alive connections, speaking plain HTTP/1.1 over asyncio streams.

    A minimal client on purpose: the machine's cores are shared with the server, and a full HTTP client
    (httpx) spends more CPU per request than the server does, which would measure the client.
    """
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors: dict[str, int] = {}
    acknowledged: list[bytes] = []
    deadline = time.perf_counter() + seconds
    counter = 0

    async def client(client_id: int) -> None:
        nonlocal counter
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < deadline:
                counter += 1
                body = json.dumps(card(counter, template=template)).encode()
                raw = (
                    b"POST /api/v1/quantify HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                started = time.perf_counter()
                try:
                    status, answer = await _request(reader, writer, raw)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    reader, writer = await asyncio.open_connection(host, int(port))
                    continue
                latencies.append(time.perf_counter() - started)
                if status == 200:
                    ids = _IDS.search(answer)
                    acknowledged.extend(i.strip(b'"') for i in ids.group(1).split(b",")) if ids else None
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "latencies": latencies,
        "errors": errors,
        "acknowledged": [i.decode() for i in acknowledged],
        "elapsed": elapsed,
    }


def bare_prediction_ms(args: argparse.Namespace, template: dict[str, Any] | None) -> float:
    """Median in-process time of one predict(card) call, no HTTP, no log."""
    from racequant.serve.schemas import RaceRequest

    resources = ExitStack()
    if args.models_dir:
        from racequant.serve.components import load_predictor
        from racequant.settings import Settings

        predictor: Any = load_predictor(Settings(db=args.db, models_dir=args.models_dir), resources)
    else:
        from racequant.serve.predictor import MarketPredictor

        predictor = MarketPredictor()
    request = RaceRequest.model_validate(card(0, template=template))
    times = []
    for _ in range(30 if args.models_dir else 300):
        t = time.perf_counter()
        predictor.predict(request, None)
        times.append(time.perf_counter() - t)
    resources.close()
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--card", type=Path, default=None, help="a race card JSON to send (real-model runs)")
    args = parser.parse_args()
    template = json.loads(args.card.read_text()) if args.card else None

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        db = args.db or Path(tmp) / "bench.duckdb"
        predlog = Path(tmp) / "bench.predlog.duckdb"
        env = {
            **os.environ,
            "RACEQUANT_DB": str(db),
            "RACEQUANT_PREDLOG": str(predlog),
            "RACEQUANT_LOG_LEVEL": "WARNING",
        }
        if args.models_dir:
            env["RACEQUANT_MODELS_DIR"] = str(args.models_dir)
        else:
            env["RACEQUANT_MODEL_VERSION"] = "market-baseline"
        code = (
            "from racequant.serve import run_server; from racequant.settings import Settings; "
            f"run_server(Settings(), '127.0.0.1', {port})"
        )
        server = subprocess.Popen([sys.executable, "-c", code], env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            asyncio.run(drive(url, args.clients, 2.0, template))  # warm-up, not counted
            result = asyncio.run(drive(url, args.clients, args.seconds, template))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)

        from racequant.warehouse import prediction_log

        with prediction_log.open_log(predlog, read_only=True) as conn:
            logged = prediction_log.prediction_ids(conn)
    lat = result["latencies"]
    missing = len(set(result["acknowledged"]) - logged)
    bare = bare_prediction_ms(args, template)
    figures = {
        "clients": args.clients,
        "seconds": round(result["elapsed"], 1),
        "requests": len(lat),
        "throughput_rps": round(len(lat) / result["elapsed"], 1),
        "p50_ms": round(percentile(lat, 0.50) * 1000, 1),
        "p99_ms": round(percentile(lat, 0.99) * 1000, 1),
        "max_ms": round(max(lat) * 1000, 1),
        "errors": result["errors"],
        "acknowledged_predictions": len(result["acknowledged"]),
        "missing_from_log": missing,
        "bare_predict_ms": round(bare, 2),
        "predictor": "registry" if args.models_dir else "market-baseline",
    }
    print(json.dumps(figures, indent=2))
    return 0 if not result["errors"] and missing == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
