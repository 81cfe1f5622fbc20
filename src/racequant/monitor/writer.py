"""The single writer of the prediction log: one thread drains a queue of writes and commits them in batches.

Every write is a function of the log connection submitted with ``submit``; its Future resolves only after the
transaction holding it has committed, so a caller that waits for it before answering never acknowledges a
prediction the log could lose. Writes queued together share one transaction (group commit); if that
transaction fails, each write is retried alone so that one bad write cannot sink the others.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from racequant.errors import RacequantError
from racequant.warehouse import prediction_log

logger = logging.getLogger(__name__)

T = TypeVar("T")
_STOP = object()


def take_queued(q: queue.Queue[Any], first: Any, limit: int, stop: object) -> tuple[list[Any], bool]:
    """``first`` and whatever else is queued now, up to ``limit`` items, never waiting for more.

    Returns (the items, whether ``stop`` was taken from the queue: the caller ends after serving them).
    """
    items = [first]
    while len(items) < limit:
        try:
            nxt = q.get_nowait()
        except queue.Empty:
            break
        if nxt is stop:
            return items, True
        items.append(nxt)
    return items, False


class LogWriterClosedError(RacequantError):
    """The prediction-log writer is closed: nothing more can be written."""


class _Rows:
    """A queued insert of predictions (merged with the others of its batch into one statement)."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[Mapping[str, Any]]) -> None:
        self.rows = rows

    def __call__(self, conn: duckdb.DuckDBPyConnection) -> int:
        return prediction_log.insert_predictions(conn, self.rows)


class LogWriter:
    """Owns the prediction log's connection; every write goes through its one thread."""

    def __init__(self, path: Path | str, max_batch: int = 256) -> None:
        self.path = Path(path)
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._local = threading.local()
        self.batches_committed = 0

    def start(self) -> LogWriter:
        self._conn = prediction_log.connect_log(self.path)
        self._thread = threading.Thread(target=self._run, name="racequant-predlog-writer", daemon=True)
        self._thread.start()
        logger.info("prediction log writer started on %s", self.path)
        return self

    def submit(self, write: Callable[[duckdb.DuckDBPyConnection], T]) -> Future[T]:
        """Queue a write; the Future resolves with its result once committed (or with its error)."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed or self._thread is None:
                raise LogWriterClosedError("The prediction log writer is closed.")
            self._queue.put((write, future))
        return future

    def insert_predictions(self, rows: list[Mapping[str, Any]]) -> Future[int]:
        """Queue predictions; the writer inserts those of every queued request as one table (one statement)."""
        return self.submit(_Rows(rows))

    def read(self, query: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run a read in the calling thread on its own cursor (sees every committed write)."""
        if self._conn is None:
            raise LogWriterClosedError("The prediction log writer is not started.")
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = prediction_log.reader(self._conn)
            self._local.cursor = cursor
        return query(cursor)

    def close(self, timeout: float = 30.0) -> None:
        """Commit everything queued, stop the thread and close the log."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        logger.info("prediction log writer closed after %d batches", self.batches_committed)

    # --- the writer thread ---

    def _run(self) -> None:
        assert self._conn is not None
        conn = self._conn
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            batch, stopping = take_queued(self._queue, item, self.max_batch, _STOP)
            self._commit(conn, batch)

    def _commit(self, conn: duckdb.DuckDBPyConnection, batch: list[tuple[Callable[..., Any], Future[Any]]]) -> None:
        live = [(w, f) for w, f in batch if f.set_running_or_notify_cancel()]
        if not live:
            return
        results: list[Any] = []
        try:
            prediction_log.begin(conn)
            merged = [row for write, _ in live if isinstance(write, _Rows) for row in write.rows]
            prediction_log.insert_predictions(conn, merged)
            for write, _ in live:
                results.append(len(write.rows) if isinstance(write, _Rows) else write(conn))
            prediction_log.commit(conn)
        except Exception:
            prediction_log.rollback(conn)
            if len(live) == 1:
                self._fail(live[0][1])
                return
            for one in live:  # retry alone: only the faulty write fails
                self._commit_one(conn, one)
            return
        self.batches_committed += 1
        for (_, future), result in zip(live, results, strict=True):
            future.set_result(result)

    def _commit_one(self, conn: duckdb.DuckDBPyConnection, item: tuple[Callable[..., Any], Future[Any]]) -> None:
        write, future = item
        try:
            prediction_log.begin(conn)
            result = write(conn)
            prediction_log.commit(conn)
        except Exception:
            prediction_log.rollback(conn)
            self._fail(future)
            return
        self.batches_committed += 1
        future.set_result(result)

    @staticmethod
    def _fail(future: Future[Any]) -> None:
        """Hand the current exception to the caller: racequant's own errors as they are, others wrapped."""
        exc = sys.exc_info()[1]
        if isinstance(exc, RacequantError):
            future.set_exception(exc)
        else:
            logger.exception("a prediction-log write failed")
            future.set_exception(RacequantError("The prediction log could not store the write."))
