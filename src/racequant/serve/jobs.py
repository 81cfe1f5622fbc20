"""Background backtest jobs: one worker thread, states queued -> running -> done | failed, kept in memory."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from racequant.errors import RacequantError
from racequant.serve.errors import NotFoundError, public_message

logger = logging.getLogger(__name__)

BacktestRunner = Callable[[dict[str, Any]], dict[str, Any]]


class BacktestJobs:
    """Runs backtests one at a time beside the API; remembers the last ``keep`` jobs."""

    def __init__(self, runner: BacktestRunner | None, keep: int = 100) -> None:
        self.runner = runner
        self.keep = keep
        self._jobs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="racequant-backtest")

    def submit(self, params: dict[str, Any]) -> dict[str, Any]:
        job_id = uuid.uuid4().hex
        job = {
            "job_id": job_id,
            "state": "queued",
            "params": params,
            "submitted_at": datetime.now(UTC),
            "started_at": None,
            "finished_at": None,
            "metrics": None,
            "error": None,
        }
        snapshot = dict(job)
        with self._lock:
            self._jobs[job_id] = job
            while len(self._jobs) > self.keep:
                oldest = next(iter(self._jobs))
                if self._jobs[oldest]["state"] in ("queued", "running"):
                    break
                self._jobs.popitem(last=False)
        self._pool.submit(self._run, job_id)
        return snapshot

    def get(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFoundError(f"job_id: there is no backtest job {job_id!r}.")
            return dict(job)

    def _update(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            self._jobs[job_id].update(changes)

    def _run(self, job_id: str) -> None:
        self._update(job_id, state="running", started_at=datetime.now(UTC))
        params = self.get(job_id)["params"]
        try:
            if self.runner is None:
                raise RacequantError("The backtest engine is not available in this installation.")
            metrics = self.runner(params)
        except RacequantError as exc:
            self._update(job_id, state="failed", error=public_message(str(exc)), finished_at=datetime.now(UTC))
            logger.info("backtest job %s failed: %s", job_id, exc)
            return
        except Exception:
            logger.exception("backtest job %s failed", job_id)
            self._update(
                job_id,
                state="failed",
                error="The backtest failed; the server log has the details.",
                finished_at=datetime.now(UTC),
            )
            return
        self._update(job_id, state="done", metrics=metrics, finished_at=datetime.now(UTC))
        logger.info("backtest job %s done", job_id)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
