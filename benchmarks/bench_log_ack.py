"""The prediction log's share of a lone request: one client sends real 14-runner cards one after another.

Starts ``racequant.serve.run_server`` in a child process on the HK artefacts that ``bench_api.py --hk`` builds
under ``--workdir`` (the warehouse and the model; nothing is built here), sends ``--requests`` cards in turn after
20 warm-up cards, and prints the client's latency percentiles beside the server's own wait for the log
(``racequant_prediction_log_commit_seconds`` from ``/metrics``: its mean and its histogram buckets, in ms) and the
load average. Compare two trees back to back by running it with ``PYTHONPATH=<tree>/src`` for each:

    .venv/bin/python benchmarks/bench_log_ack.py [--workdir /tmp/bench-api --requests 150]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench_api import free_port, percentile, serve, warehouse_cards

_METRIC = "racequant_prediction_log_commit_seconds"


def _sample(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def _buckets(text: str) -> dict[str, float]:
    return {
        m.group(1): float(m.group(2)) for m in re.finditer(rf'^{_METRIC}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M)
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench-api")
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--cards", type=int, default=40)
    args = parser.parse_args()
    from racequant.models.registry import latest_version, read_manifest

    db, models = args.workdir / "hk.duckdb", args.workdir / "models"
    if not db.exists() or not models.exists():
        raise SystemExit(f"no HK artefacts under {args.workdir}: run bench_api.py --hk first")
    directory = latest_version(models)
    after = read_manifest(directory).get("calibrated_until") or "1900-01-01"
    cards = warehouse_cards(db, str(after), args.cards)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {
            **os.environ,
            "RACEQUANT_DB": str(db),
            "RACEQUANT_PREDLOG": str(Path(tmp) / "ack.predlog.duckdb"),
            "RACEQUANT_MODELS_DIR": str(models),
            "RACEQUANT_MODEL_VERSION": directory.name,
            "RACEQUANT_LOG_LEVEL": "WARNING",
        }
        server = serve(env, port)
        latencies: list[float] = []
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                for k in range(20):
                    client.post("/api/v1/quantify", json=cards[k % len(cards)])
                before = client.get("/metrics").text
                for k in range(args.requests):
                    started = time.perf_counter()
                    answer = client.post("/api/v1/quantify", json=cards[k % len(cards)])
                    latencies.append(time.perf_counter() - started)
                    if answer.status_code != 200:
                        raise SystemExit(f"quantify answered {answer.status_code}: {answer.text[:200]}")
                after_text = client.get("/metrics").text
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    waited = _sample(after_text, f"{_METRIC}_sum") - _sample(before, f"{_METRIC}_sum")
    count = _sample(after_text, f"{_METRIC}_count") - _sample(before, f"{_METRIC}_count")
    first = _buckets(before)
    result = {
        "model": directory.name,
        "requests": args.requests,
        "client_ms": {
            "p50": round(percentile(latencies, 0.5) * 1000, 1),
            "p90": round(percentile(latencies, 0.9) * 1000, 1),
            "p99": round(percentile(latencies, 0.99) * 1000, 1),
            "max": round(max(latencies) * 1000, 1),
            "mean": round(statistics.mean(latencies) * 1000, 1),
        },
        "log_wait_mean_ms": round(waited / count * 1000, 2) if count else None,
        "log_wait_at_most_ms": {
            f"{float(le) * 1000:g}": int(n - first.get(le, 0)) for le, n in _buckets(after_text).items() if le != "+Inf"
        },
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
