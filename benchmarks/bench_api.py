"""Load on POST /api/v1/quantify: 14-runner races from concurrent clients against a real uvicorn server.

Starts ``racequant.serve.run_server`` in a child process and drives it from ``--clients`` clients for
``--seconds`` in two ways (``--modes``):

- ``closed``: each client sends its next card as soon as the previous one is answered: the saturation
  throughput, and the latency when every client always waits (Little's law: clients / throughput);
- ``open``: each client sends at ``--rate-per-client`` requests per second (each rate of a comma-separated
  list in turn) with exponential (Poisson) gaps, whether or not its earlier requests were answered: the
  latency at a stated offered load (clients x rate). A latency is measured from the request's scheduled time,
  so a late send counts against the server.

It prints p50, p90, p99, max, throughput and errors per mode, the load average sampled during each run, and the
bare in-process time of one card split into features / pipeline / explanations / log commit; then it stops the
server and checks that every acknowledged prediction is in the prediction log.

The real model on the HK 1997-2005 data (artefacts built once under ``--workdir``: the warehouse with its
features, and a model trained on races before ``--until``; reused while the feature version matches), sending
real 14-runner races after the model's calibration window in turn:

    .venv/bin/python benchmarks/bench_api.py --hk ../shared/data/hkjc-1997-2005 [--workdir /tmp/bench-api]

The stand-in predictor built from the card's odds (no model, no warehouse):

    .venv/bin/python benchmarks/bench_api.py [--clients 20 --seconds 30 --modes closed,open --rate-per-client 0.5,1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchcommon import LoadSampler


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_card(race_no: int, n: int = 14) -> dict[str, Any]:
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


# -- the HK artefacts: warehouse, features, model ---------------------------------------------------------
def _cli(*args: str) -> None:
    racequant = Path(sys.executable).parent / "racequant"
    command = [str(racequant), *args] if racequant.exists() else [sys.executable, "-m", "racequant.cli", *args]
    print("$ racequant " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def prepare_hk(data: Path, workdir: Path, until: str) -> tuple[Path, Path, str]:
    """The HK warehouse (features built) and a model trained before ``until``, built when missing or stale."""
    from racequant.features.manifest import feature_version

    workdir.mkdir(parents=True, exist_ok=True)
    db, models = workdir / "hk.duckdb", workdir / "models"
    version = f"hk-until-{until}-{feature_version()}"
    if not db.exists():
        _cli("ingest", str(data), "--format", "hkjc-kaggle", "--db", str(db))
    if not (models / version / "manifest.json").exists():
        _cli("features", "build", "--db", str(db))
        _cli("train", "--until", until, "--version", version, "--models-dir", str(models), "--db", str(db))
    return db, models, version


def warehouse_cards(db: Path, after: str, n: int, runners: int = 14) -> list[dict[str, Any]]:
    """Cards of the first ``n`` stored races after ``after`` with exactly ``runners`` declared runners."""
    from racequant.models.card import card_from_results
    from racequant.warehouse import connect_read_only
    from racequant.warehouse.dashboard_queries import stored_race

    with connect_read_only(db) as conn:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT race_id FROM races JOIN runners USING (race_id) WHERE date > CAST(? AS DATE) "
                "AND coalesce(status, '') <> 'withdrawn' GROUP BY race_id, date, race_no HAVING count(*) = ? "
                "ORDER BY date, race_no, race_id LIMIT ?",
                [after, runners, n],
            ).fetchall()
        ]
        cards = []
        for race_id in ids:
            stored = stored_race(conn, race_id)
            named = [{**r, "horse_name": r.get("horse_name") or str(r["horse_id"])} for r in stored["runners"]]
            card = card_from_results(stored["race"], named, stored["horses"])
            cards.append(json.loads(card.model_dump_json(exclude_none=True)))
    if not cards:
        raise SystemExit(f"no {runners}-runner race after {after} in {db}")
    return cards


# -- the clients ------------------------------------------------------------------------------------------
_IDS = re.compile(rb'"prediction_ids":\[([^\]]*)\]')


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol for the benchmark.

    A minimal client on purpose: the machine's cores are shared with the server, and a full HTTP client
    (httpx) spends more CPU per request than the server does, which would measure the client.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.used = time.perf_counter()

    @property
    def stale(self) -> bool:
        """Idle long enough that the server may be closing it (uvicorn's keep-alive timeout is 5 s)."""
        return time.perf_counter() - self.used > 3.0

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def post(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        body = await self.reader.readexactly(length)
        self.used = time.perf_counter()
        return status, body

    def close(self) -> None:
        self.writer.close()


def _request(body: bytes) -> bytes:
    return (
        b"POST /api/v1/quantify HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.acknowledged: list[bytes] = []

    def answer(self, latency: float, status: int, answer: bytes) -> None:
        self.latencies.append(latency)
        if status == 200:
            ids = _IDS.search(answer)
            if ids:
                self.acknowledged.extend(i.strip(b'"') for i in ids.group(1).split(b","))
        else:
            self.errors[str(status)] = self.errors.get(str(status), 0) + 1

    def error(self, exc: BaseException) -> None:
        self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1


async def closed_loop(host: str, port: int, clients: int, seconds: float, bodies: list[bytes]) -> Tally:
    """Each client sends its next card as soon as the previous one is answered."""
    tally = Tally()
    deadline = time.perf_counter() + seconds
    counter = 0

    async def client() -> None:
        nonlocal counter
        conn = await Connection.open(host, port)
        try:
            while time.perf_counter() < deadline:
                counter += 1
                raw = bodies[counter % len(bodies)]
                started = time.perf_counter()
                try:
                    status, answer = await conn.post(raw)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    tally.error(exc)
                    conn = await Connection.open(host, port)
                    continue
                tally.answer(time.perf_counter() - started, status, answer)
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return tally


async def open_loop(
    host: str, port: int, clients: int, seconds: float, rate: float, bodies: list[bytes], seed: int = 0
) -> Tally:
    """Each client sends at ``rate`` requests per second (exponential gaps), not waiting for its answers; a
    request still in flight when the next is due gets another connection of the client's pool."""
    tally = Tally()
    rng = random.Random(seed)
    start = time.perf_counter()
    counter = 0

    async def send(pool: list[Connection], scheduled: float, raw: bytes) -> None:
        while pool and pool[-1].stale:
            pool.pop().close()
        conn = pool.pop() if pool else await Connection.open(host, port)
        try:
            status, answer = await conn.post(raw)
        except (OSError, asyncio.IncompleteReadError) as exc:
            tally.error(exc)
            conn.close()
            return
        tally.answer(time.perf_counter() - scheduled, status, answer)
        pool.append(conn)

    async def client() -> None:
        nonlocal counter
        pool = [await Connection.open(host, port)]
        tasks = []
        scheduled = start + rng.expovariate(rate)
        while scheduled < start + seconds:
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            counter += 1
            tasks.append(asyncio.ensure_future(send(pool, scheduled, bodies[counter % len(bodies)])))
            scheduled += rng.expovariate(rate)
        await asyncio.gather(*tasks)
        for conn in pool:
            conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return tally


def figures(tally: Tally, elapsed: float) -> dict[str, Any]:
    lat = tally.latencies or [float("nan")]
    return {
        "requests": len(tally.latencies),
        "seconds": round(elapsed, 1),
        "throughput_rps": round(len(tally.latencies) / elapsed, 1),
        "p50_ms": round(percentile(lat, 0.50) * 1000, 1),
        "p90_ms": round(percentile(lat, 0.90) * 1000, 1),
        "p99_ms": round(percentile(lat, 0.99) * 1000, 1),
        "max_ms": round(max(lat) * 1000, 1),
        "errors": tally.errors,
        "acknowledged_predictions": len(tally.acknowledged),
    }


# -- the bare prediction, in process ----------------------------------------------------------------------
def bare_split(db: Path | None, models_dir: Path | None, cards: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """Median ms per card: features, pipeline (no explanations), explanations, the whole predict, log commit."""
    from racequant.monitor.writer import LogWriter
    from racequant.serve.schemas import RaceRequest

    resources = ExitStack()
    times: dict[str, list[float]] = {}

    def timed(name: str, work: Any) -> Any:
        started, cpu = time.perf_counter(), time.thread_time()
        result = work()
        times.setdefault(name, []).append((time.perf_counter() - started) * 1000)
        # CPU time of this thread: less disturbed than wall time by other jobs on the cores (the log commit's
        # work runs on the writer thread, so only its wall time is meaningful)
        times.setdefault(f"{name}_cpu", []).append((time.thread_time() - cpu) * 1000)
        return result

    requests = [RaceRequest.model_validate(c) for c in cards]
    with resources, tempfile.TemporaryDirectory() as tmp:
        if models_dir is not None:
            from racequant.models.card import parse_card
            from racequant.models.predictor import card_features
            from racequant.serve.components import load_predictor
            from racequant.settings import Settings

            predictor: Any = load_predictor(Settings(db=db, models_dir=models_dir), resources)
            cursor = getattr(predictor, "_cursor", None)  # a thread's cursor (a shared connection before)
            conn = cursor() if cursor else predictor._conn
            pipeline = predictor.pipeline
            predictor.predict(requests[0], None)  # the card engine loads on the first card
            for _ in range(rounds):
                for card, request in zip(cards, requests, strict=True):
                    race = parse_card(card)
                    frame = timed("features", lambda race=race: card_features(conn, race, race.off))
                    frame = frame.copy()
                    frame[pipeline.calibration_group] = race.track
                    timed("pipeline_without_explanations", lambda frame=frame: pipeline.predict(frame, explain=False))
                    timed("explanations", lambda frame=frame: pipeline.top_features(frame))
                    timed("predict_card", lambda request=request: predictor.predict(request, None))
        else:
            from racequant.serve.predictor import MarketPredictor

            predictor = MarketPredictor()
            for _ in range(rounds * 10):
                for request in requests:
                    timed("predict_card", lambda request=request: predictor.predict(request, None))
        writer = LogWriter(Path(tmp) / "split.predlog.duckdb").start()
        now = datetime.now(UTC)
        row = {
            "request_id": "bench",
            "race_id": "R",
            "horse_id": "H",
            "timestamp": now,
            "race_date": now.date(),
            "win_prob": 0.1,
            "place_prob": 0.3,
            "win_prob_lower": 0.05,
            "win_prob_upper": 0.15,
            "place_prob_lower": 0.2,
            "place_prob_upper": 0.4,
            "model_version": "bench",
            "feature_version": "bench",
            "calibration_group": "ST",
            "latency_ms": 1.0,
            "features_json": json.dumps({f"f{i}": 0.5 for i in range(143)}),
        }
        for k in range(60):
            rows = [{**row, "prediction_id": f"{k}-{i}"} for i in range(14)]
            timed("log_commit_14_rows", lambda rows=rows: writer.insert_predictions(rows).result())
        writer.close()
    return {k: round(statistics.median(v), 2) for k, v in times.items()}


# -- the run ----------------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), or NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    code = (
        "from racequant.serve import run_server; from racequant.settings import Settings; "
        f"run_server(Settings(), '127.0.0.1', {port})"
    )
    server = subprocess.Popen([sys.executable, "-c", code], env=env)
    for _ in range(1200):
        if server.poll() is not None:
            raise SystemExit("the server exited during start-up")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("the server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--modes", default="closed,open", help="closed, open or both (comma-separated)")
    parser.add_argument(
        "--rate-per-client", default="0.5,1", help="open loop: requests/s per client; a comma-separated list runs each"
    )
    parser.add_argument("--hk", type=Path, default=None, help="the HK 1997-2005 data folder: real model and races")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench-api")
    parser.add_argument("--until", default="2005-06-01", help="--hk: train on races before this day")
    parser.add_argument("--models-dir", type=Path, default=None, help="a registry (latest version) instead of --hk")
    parser.add_argument("--db", type=Path, default=None, help="its warehouse")
    parser.add_argument("--cards", type=int, default=40, help="real-model runs: distinct races sent in turn")
    parser.add_argument("--bare-rounds", type=int, default=3, help="rounds over the cards in process (0: none)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    rates = [float(r) for r in str(args.rate_per_client).split(",") if r.strip()]
    modes = []
    for mode in (m.strip() for m in args.modes.split(",") if m.strip()):
        modes.extend([("open", r) for r in rates] if mode == "open" else [(mode, None)])

    models_dir, db, version = args.models_dir, args.db, None
    if args.hk is not None:
        db, models_dir, version = prepare_hk(args.hk, args.workdir, args.until)
    if models_dir is not None:
        if db is None:
            raise SystemExit("--models-dir needs --db")
        from racequant.models.registry import latest_version, read_manifest

        directory = models_dir / version if version else latest_version(models_dir)
        version = directory.name
        after = read_manifest(directory).get("calibrated_until") or "1900-01-01"
        cards = warehouse_cards(db, str(after), args.cards)
    else:
        cards = [synthetic_card(k) for k in range(args.cards)]
    bodies = [_request(json.dumps(c).encode()) for c in cards]

    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.processor()},
        "predictor": f"registry {version}" if models_dir else "market-baseline",
        "cards": len(cards),
        "runners_per_card": sorted({len(c["horses"]) for c in cards}),
        "clients": args.clients,
    }
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        predlog = Path(tmp) / "bench.predlog.duckdb"
        env = {
            **os.environ,
            "RACEQUANT_DB": str(db or Path(tmp) / "bench.duckdb"),
            "RACEQUANT_PREDLOG": str(predlog),
            "RACEQUANT_LOG_LEVEL": "WARNING",
        }
        if models_dir is not None:
            env["RACEQUANT_MODELS_DIR"] = str(models_dir)
            env["RACEQUANT_MODEL_VERSION"] = str(version)
        else:
            env["RACEQUANT_MODEL_VERSION"] = "market-baseline"
        server = serve(env, port)
        acknowledged: list[bytes] = []
        by_mode: dict[str, set[str]] = {}
        try:
            asyncio.run(closed_loop("127.0.0.1", port, args.clients, 3.0, bodies))  # warm-up, not counted
            for mode, rate in modes:
                with LoadSampler(every=5.0) as load:
                    cpu = cpu_seconds(server.pid)
                    started = time.perf_counter()
                    if mode == "closed":
                        tally = asyncio.run(closed_loop("127.0.0.1", port, args.clients, args.seconds, bodies))
                    elif mode == "open" and rate is not None:
                        tally = asyncio.run(open_loop("127.0.0.1", port, args.clients, args.seconds, rate, bodies))
                    else:
                        raise SystemExit(f"unknown mode {mode!r}: closed or open")
                    elapsed = time.perf_counter() - started
                run = figures(tally, elapsed)
                # the server's CPU per request (every thread: event loop, model workers, log writer)
                run["server_cpu_ms_per_request"] = round(
                    (cpu_seconds(server.pid) - cpu) * 1000 / max(1, len(tally.latencies)), 1
                )
                name = mode
                if rate is not None:
                    run["offered_rps"] = round(args.clients * rate, 1)
                    run["rate_per_client"] = rate
                    name = f"open_{rate:g}_per_client"
                run["load_average_1min"] = load.summary()
                result[name] = run
                acknowledged.extend(tally.acknowledged)
                by_mode[name] = {i.decode() for i in tally.acknowledged}
                print(json.dumps({name: run}), file=sys.stderr, flush=True)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)

        from racequant.warehouse import prediction_log

        with prediction_log.open_log(predlog, read_only=True) as conn:
            logged = prediction_log.prediction_ids(conn)
            latency = {
                pid: (request, ms)
                for pid, request, ms in conn.execute(
                    "SELECT prediction_id, request_id, latency_ms FROM predictions"
                ).fetchall()
            }
    # the server's own part of each request (the log's latency_ms: from the route's start to the shaped records,
    # model worker queue included), beside the client's: the rest is HTTP, the event loop and the log ack
    for name, ids in by_mode.items():
        server_ms = list(dict(latency[i] for i in ids if i in latency).values())  # one per request
        if server_ms:
            result[name]["server_p50_ms"] = round(percentile(server_ms, 0.5), 1)
            result[name]["server_p99_ms"] = round(percentile(server_ms, 0.99), 1)
    missing = len({i.decode() for i in acknowledged} - logged)
    result["missing_from_log"] = missing
    if args.bare_rounds > 0:
        with LoadSampler(every=5.0) as load:
            result["bare_ms_per_card"] = bare_split(db, models_dir, cards, args.bare_rounds)
        result["bare_load_average_1min"] = load.summary()
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    errors = any(run["errors"] for run in result.values() if isinstance(run, dict) and "errors" in run)
    return 0 if not errors and missing == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
