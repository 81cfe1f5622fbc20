"""The model's worker threads: each takes the race cards queued when it is free, up to a batch, in one call.

Requests arriving together (20 clients at once) then share one pipeline call (``predict_many``), whose fixed
costs (pandas, the libraries' call overheads) no longer repeat per card; a lone request is taken alone at once,
never held back to wait for company. Each request's ``finish`` (shaping its records, queueing its log rows) runs
on the worker too, off the event loop. A failure in a shared call is retried card by card, so that each request
gets its own answer or its own error.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from racequant.errors import RacequantError
from racequant.monitor.writer import take_queued
from racequant.serve.predictor import Predictor

logger = logging.getLogger(__name__)

_STOP = object()


class PredictionPoolClosedError(RacequantError):
    """The model's worker threads are stopped: nothing more can be predicted."""


@dataclass
class _Job:
    card: Any
    as_of: datetime | None
    finish: Callable[[list[dict[str, Any]]], Any]
    future: Future[Any] = field(default_factory=Future)


class JobQueue:
    """What both pools share: the queue of cards, ``submit``, and stopping the threads that serve it.

    A subclass sets ``_what`` (named in the error once stopped), creates its threads with ``_start_threads`` and
    stops them with ``_stop_threads`` in its ``close``."""

    _what = "The model's workers are"

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self.batches = 0
        self.cards = 0

    def _start_threads(self, threads: list[threading.Thread]) -> None:
        self._threads = threads
        for thread in threads:
            thread.start()

    def submit(self, card: Any, as_of: datetime | None, finish: Callable[[list[dict[str, Any]]], Any]) -> Future[Any]:
        """Queue one card; the Future resolves with ``finish(records)`` (or the error)."""
        job = _Job(card, as_of, finish)
        with self._lock:
            if self._closed:
                raise PredictionPoolClosedError(f"{self._what} stopped.")
            self._queue.put(job)
        return job.future

    def _serve_queue(self, serve: Callable[[list[_Job]], None], max_batch: int) -> None:
        """A worker thread's loop: take the cards queued when it is free (up to ``max_batch``, never waiting for
        more), claim those not cancelled, count them and hand them to ``serve``; end at the stop mark."""
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch, stop = take_queued(self._queue, item, max_batch, _STOP)
            jobs = [j for j in batch if j.future.set_running_or_notify_cancel()]
            if jobs:
                with self._lock:
                    self.batches += 1
                    self.cards += len(jobs)
                serve(jobs)
            if stop:
                return

    def _stop_threads(self, timeout: float) -> bool:
        """Let the threads finish the queued cards and stop; False when the pool was closed already."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            for _ in self._threads:
                self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout)
        return True


class PredictionPool(JobQueue):
    """``workers`` threads running ``predictor``; ``submit`` queues one card and returns the Future of
    ``finish(records)``. Predictors with ``predict_many([(card, as_of), ...])`` get up to ``max_batch`` cards per
    call; others one card per ``predict`` call."""

    _what = "The model's worker threads are"

    def __init__(self, predictor: Predictor, workers: int, max_batch: int = 8) -> None:
        if workers < 1 or max_batch < 1:
            raise ValueError(f"PredictionPool needs workers >= 1 and max_batch >= 1. Got {workers}, {max_batch}.")
        super().__init__()
        self.predictor = predictor
        self.max_batch = max_batch if callable(getattr(predictor, "predict_many", None)) else 1
        self._start_threads(
            [
                threading.Thread(
                    target=self._serve_queue,
                    args=(self._serve, self.max_batch),
                    name=f"racequant-predict-{k}",
                    daemon=True,
                )
                for k in range(workers)
            ]
        )

    def close(self, timeout: float = 30.0) -> None:
        """Finish the queued cards, then stop the threads."""
        if not self._stop_threads(timeout):
            return
        logger.info("prediction pool closed: %d cards in %d model calls", self.cards, self.batches)

    # --- the worker threads ---
    def _serve(self, jobs: list[_Job]) -> None:
        try:
            answers = predict_each(self.predictor, [(j.card, j.as_of) for j in jobs])
        except BaseException as exc:  # not an Exception (predict_each answers those): no request waits forever
            for job in jobs:
                job.future.set_exception(exc)
            raise
        for job, (ok, value) in zip(jobs, answers, strict=True):
            try:
                if not ok:
                    raise value
                job.future.set_result(job.finish(value))
            except BaseException as exc:  # handed to the request, which answers it
                job.future.set_exception(exc)


def predict_each(predictor: Any, cards: list[tuple[Any, datetime | None]]) -> list[tuple[bool, Any]]:
    """(True, records) or (False, error) per card: a batch in one ``predict_many`` call when the predictor has one,
    card by card if that call fails (one bad card must not fail its companions). Used by the worker threads and
    by the model's worker processes alike."""
    if len(cards) > 1 and callable(getattr(predictor, "predict_many", None)):
        try:
            return [(True, records) for records in predictor.predict_many(cards)]
        except Exception:
            logger.info("a batch of %d cards failed; predicting them one by one", len(cards), exc_info=True)
    answers: list[tuple[bool, Any]] = []
    for card, as_of in cards:
        try:
            answers.append((True, predictor.predict(card, as_of)))
        except Exception as exc:
            if isinstance(exc, RacequantError):
                logger.info("a card failed in the model worker: %s", exc)
            else:
                logger.error("a card failed in the model worker", exc_info=True)
            answers.append((False, exc))
    return answers
