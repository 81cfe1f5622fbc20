"""The model's worker processes: each child loads the model once and predicts the cards the server sends it.

Threads of one process share the GIL, so the Python half of a prediction (features, explanations, pandas) ran
on one core however many threads ran the model. Each child here is a process of its own (spawned: nothing of
the server's threads or open files is inherited) that builds its predictor from a picklable ``source`` (the
registry version on the warehouse opened read-only: DuckDB admits several read-only processes), then answers
lists of (card, as_of) with lists of records. The server keeps HTTP, the single log writer and monitoring; one
dispatcher thread per child takes the cards queued when its child is free, up to a batch (the same
micro-batching as the threads of ``batching.PredictionPool``), sends them, and runs each request's ``finish``
on the records that come back.

A child that dies (killed, out of memory, a crash in native code) fails the cards it was predicting with
``PredictionWorkerLostError`` (answered 503, no trace) and is replaced. A child also exits when its pipe closes,
so children never outlive the server, even one killed with SIGKILL.
"""

from __future__ import annotations

import functools
import gc
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from racequant.errors import RacequantError
from racequant.serve.batching import JobQueue, _Job, predict_each
from racequant.serve.errors import ServiceUnavailableError
from racequant.serve.predictor import Predictor

logger = logging.getLogger(__name__)

# builds the child's predictor; resources it opens (the warehouse connection) go on the ExitStack
PredictorSource = Callable[[ExitStack], Predictor]

_RESTART_DELAY_S = 1.0


class PredictionWorkerLostError(ServiceUnavailableError):
    """The model's worker process stopped while predicting the card (answered 503)."""


class PredictionWorkerStartError(RacequantError):
    """A model worker process could not load the model."""


def given_predictor(predictor: Predictor, resources: ExitStack) -> Predictor:
    """A ``PredictorSource`` of an already built, picklable predictor (tests)."""
    return predictor


# --- the child --------------------------------------------------------------------------------------------


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (the server gets the same error as from a thread), else a plain error."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RacequantError(f"{type(exc).__name__}: {exc}")
    return exc


def _predict_cards(predictor: Predictor, cards: list[tuple[Any, datetime | None]]) -> list[tuple[bool, Any]]:
    """``predict_each``, with each error made safe to send back to the server."""
    return [(ok, value if ok else _portable(value)) for ok, value in predict_each(predictor, cards)]


def _child_main(conn: Connection, source: PredictorSource, log_level: str) -> None:
    """A worker process: load the model, say ready, then answer each list of cards until told to stop or the
    server's end of the pipe closes."""
    from racequant.logging import configure_logging

    configure_logging(log_level)
    # Ctrl+C reaches the whole process group: the server decides when its children stop (it closes the pipe)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with ExitStack() as resources:
        try:
            predictor = source(resources)
        except BaseException as exc:
            logger.error("the model worker could not load the model", exc_info=True)
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
            return
        # the model's objects live as long as the process: keep them out of the collector's generations
        gc.collect()
        gc.freeze()
        conn.send(("ready", os.getpid()))
        while True:
            try:
                cards = conn.recv()
            except (EOFError, OSError):  # the server is gone
                return
            if cards is None:
                return
            try:
                conn.send(_predict_cards(predictor, cards))
            except (BrokenPipeError, OSError):
                return


# --- the server's side -----------------------------------------------------------------------------------


class _Child:
    """One worker process and the server's end of its pipe."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.pid: int | None = None

    def wait_ready(self, timeout: float) -> None:
        if not self.conn.poll(timeout):
            raise PredictionWorkerStartError(f"A model worker did not load the model within {timeout:.0f} s.")
        try:
            status, detail = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise PredictionWorkerStartError(
                f"A model worker exited while loading the model (exit code {self.process.exitcode})."
            ) from exc
        if status != "ready":
            raise PredictionWorkerStartError(f"A model worker could not load the model: {detail}")
        self.pid = int(detail)

    def stop(self, timeout: float) -> None:
        with suppress(OSError):  # a dead child's pipe
            self.conn.send(None)
        self.conn.close()
        self.process.join(timeout)
        if self.process.is_alive():
            logger.warning("model worker %s did not stop; terminating it", self.process.pid)
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


class ProcessPredictionPool(JobQueue):
    """``processes`` children running the predictor built by ``source``; ``submit`` queues one card and returns the
    Future of ``finish(records)`` (run on the server, in the dispatcher thread of the child that predicted it)."""

    _what = "The model's worker processes are"

    def __init__(
        self,
        source: PredictorSource,
        processes: int,
        max_batch: int = 8,
        *,
        log_level: str = "INFO",
        start_timeout: float = 300.0,
    ) -> None:
        if processes < 1 or max_batch < 1:
            raise ValueError(
                f"ProcessPredictionPool needs processes >= 1 and max_batch >= 1. Got {processes}, {max_batch}."
            )
        super().__init__()
        self.source = source
        self.max_batch = max_batch
        self.log_level = log_level
        self.start_timeout = start_timeout
        self._context = multiprocessing.get_context("spawn")
        self.replaced = 0
        started = time.perf_counter()
        self._children: list[_Child] = [self._spawn() for _ in range(processes)]
        try:
            for child in self._children:
                child.wait_ready(start_timeout)
        except BaseException:
            for child in self._children:
                child.stop(5)
            raise
        logger.info(
            "%d model worker processes ready in %.1f s (pids %s)",
            processes,
            time.perf_counter() - started,
            ", ".join(str(c.pid) for c in self._children),
        )
        self._start_threads(
            [
                threading.Thread(
                    target=self._serve_queue,
                    args=(functools.partial(self._serve, k), self.max_batch),
                    name=f"racequant-predict-process-{k}",
                    daemon=True,
                )
                for k in range(processes)
            ]
        )

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (a replaced child's successor included)."""
        return [c.process.pid for c in self._children if c.process.pid is not None]

    def close(self, timeout: float = 30.0) -> None:
        """Finish the queued cards, then stop the dispatchers and the children."""
        if not self._stop_threads(timeout):
            return
        for child in self._children:
            child.stop(timeout)
        logger.info(
            "model worker processes stopped: %d cards in %d model calls, %d workers replaced",
            self.cards,
            self.batches,
            self.replaced,
        )

    # --- the dispatcher threads ---
    def _spawn(self) -> _Child:
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_child_main, args=(theirs, self.source, self.log_level), name="racequant-model-worker", daemon=True
        )
        process.start()
        theirs.close()  # only the child holds its end: the pipe reads EOF as soon as the child is gone
        return _Child(process, ours)

    def _serve(self, k: int, jobs: list[_Job]) -> None:
        child = self._children[k]
        try:
            child.conn.send([(j.card, j.as_of) for j in jobs])
        except (BrokenPipeError, ConnectionResetError, EOFError) as exc:
            self._lost(k, jobs, exc)
            return
        except Exception as exc:  # a card that cannot be sent (not picklable): its requests fail, the child is fine
            for job in jobs:
                job.future.set_exception(exc)
            return
        try:
            answers = child.conn.recv()
        except (EOFError, OSError) as exc:
            self._lost(k, jobs, exc)
            return
        for job, (ok, value) in zip(jobs, answers, strict=True):
            try:
                if not ok:
                    raise value
                job.future.set_result(job.finish(value))
            except BaseException as exc:  # handed to the request, which answers it
                job.future.set_exception(exc)

    def _lost(self, k: int, jobs: list[_Job], exc: BaseException) -> None:
        """The child died: its cards get a 503, and a new child takes its place."""
        old = self._children[k]
        old.process.join(5)
        logger.error(
            "model worker %s stopped (exit code %s) while predicting %d cards; starting another",
            old.process.pid,
            old.process.exitcode,
            len(jobs),
        )
        for job in jobs:
            job.future.set_exception(
                PredictionWorkerLostError(
                    "The model worker stopped while predicting this race; nothing was served. Please retry."
                )
            )
        old.stop(1)
        while not self._closed:
            child = self._children[k] = self._spawn()  # in the list at once: ``close`` stops it even while it loads
            try:
                child.wait_ready(self.start_timeout)
            except (PredictionWorkerStartError, OSError):
                if self._closed:  # ``close`` stopped it
                    return
                logger.exception("a replacement model worker failed to start; trying again")
                child.stop(1)
                time.sleep(_RESTART_DELAY_S)
                continue
            with self._lock:
                self.replaced += 1
            logger.info("model worker %s replaces %s", child.pid, old.process.pid)
            return
