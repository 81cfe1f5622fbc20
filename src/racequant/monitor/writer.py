"""The single writer of the prediction log: served predictions are acknowledged once journaled, and committed to
DuckDB in larger batches off the request path.

A request's predictions (``insert_predictions``) are appended to the write-ahead journal beside the log
(``racequant.monitor.journal``: one ``os.write``, no DuckDB) and their Future resolves right then, so an
acknowledged prediction survives a SIGKILL (it is in the kernel's page cache). The append is made by the calling
thread under the writer's lock (no thread hop on the request's path); with ``fsync=True`` a journal thread instead
appends everything queued meanwhile and fsyncs once per batch, so that acknowledged predictions survive a power
loss too. Everything then goes, in submission order, to the drain thread, which inserts all the queued predictions
as one Arrow table in one transaction (group commit) and empties the journal once they are committed. Other
writes (``submit``: outcomes, qualitative records, metrics, alerts) are not journaled: their Future resolves once
the drain thread has committed them, after every prediction queued before them. ``read`` first waits for the
drain thread to commit everything queued before it (a flush barrier), so a read sees every acknowledged
prediction.

DuckDB checkpoints its write-ahead log into the database file when the WAL passes a threshold (16 MB by default),
inside the commit that crosses it: a few hundred milliseconds of compression at 14 rows of features per request
(every ~20 s at 20 requests/s), on every core. The writer's connection therefore runs on one DuckDB thread, its
automatic checkpoint waits for a large WAL (``auto_checkpoint_bytes``), and the drain thread checkpoints itself once
the log has been idle for ``checkpoint_idle_s`` with more than ``checkpoint_wal_bytes`` in the WAL: between
bursts of requests, not in their middle.

Rows are checked against the log's columns before they are journaled (a bad row fails its own request alone).
If a group transaction fails, each write is retried alone so that one bad write cannot sink the others; a
journaled request that DuckDB still refuses alone is kept in ``<log>.journal.rejected`` and logged as an error.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from racequant.errors import RacequantError
from racequant.monitor.journal import Journal
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
    """A request's predictions: checked (as an Arrow table) and encoded (as a journal line) by the caller."""

    __slots__ = ("line", "rows", "seq", "table")

    def __init__(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.rows = rows
        self.table: pa.Table = prediction_log.prediction_table(rows)
        self.line = prediction_log.encode_journal_record(rows)
        self.seq = 0

    def __call__(self, conn: duckdb.DuckDBPyConnection) -> int:
        return prediction_log.insert_predictions(conn, self.table)


def _barrier(conn: duckdb.DuckDBPyConnection) -> None:
    """A write of nothing: its Future resolves once everything queued before it is committed."""


class LogWriter:
    """Owns the prediction log's connection and its journal; every write goes through its drain thread (and, with
    ``fsync``, its journal thread first).

    ``fsync``: fsync the journal after each append (durable across a power loss; costs a disk flush per batch).
    ``max_batch``: most requests journaled by one append; ``drain_batch``: most writes per DuckDB transaction;
    ``drain_interval_s``: how long journaled predictions wait for company before they are committed (fewer, larger
    DuckDB transactions, after their requests are answered: DuckDB holds the GIL in parts of each commit, which
    stalls the event loop); a read or another write queued behind them is committed at once.
    """

    def __init__(
        self,
        path: Path | str,
        max_batch: int = 256,
        *,
        fsync: bool = False,
        drain_batch: int = 4096,
        drain_interval_s: float = 0.25,
        journal_rotate_bytes: int = 16 * 1024 * 1024,
        read_timeout_s: float = 60.0,
        checkpoint_idle_s: float = 1.0,
        checkpoint_wal_bytes: int = 16 * 1024 * 1024,
        auto_checkpoint_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        self.path = Path(path)
        self.max_batch = max_batch
        self.drain_batch = drain_batch
        self.drain_interval_s = drain_interval_s
        self.fsync = fsync
        self.read_timeout_s = read_timeout_s
        self.checkpoint_idle_s = checkpoint_idle_s
        self.checkpoint_wal_bytes = checkpoint_wal_bytes
        self.auto_checkpoint_bytes = auto_checkpoint_bytes
        self.checkpoints = 0
        self._journal = Journal(self.path, fsync=fsync, rotate_bytes=journal_rotate_bytes)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # bounded: if DuckDB falls far behind, the journal thread (and so the acknowledgements) waits for it
        self._drain: queue.Queue[Any] = queue.Queue(maxsize=8 * drain_batch)
        self._urgent = threading.Event()  # something other than predictions waits in the drain queue
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._lock = threading.Lock()
        self._local = threading.local()
        self.batches_journaled = 0
        self.batches_committed = 0
        self.rows_rejected = 0

    @property
    def journal_path(self) -> Path:
        return self._journal.path

    def start(self) -> LogWriter:
        self._conn = prediction_log.connect_log(self.path)  # replays a journal left by a kill
        try:
            # one core at most for the log's work (the model's processes have the others), and checkpoints at
            # idle times (``_run_drain``) rather than inside a request burst's commit
            self._conn.execute("SET threads = 1")
            self._conn.execute(f"SET checkpoint_threshold = '{int(self.auto_checkpoint_bytes)}B'")
            self._journal.open()
        except Exception:
            self._conn.close()
            self._conn = None
            raise
        self._threads = [
            threading.Thread(target=self._run_drain, args=(self._conn,), name="racequant-predlog-drain", daemon=True)
        ]
        if self.fsync:  # one thread appends (and fsyncs) everything queued meanwhile: one disk flush per batch
            self._threads.append(
                threading.Thread(target=self._run_journal, name="racequant-predlog-journal", daemon=True)
            )
        for thread in self._threads:
            thread.start()
        logger.info("prediction log writer started on %s (journal fsync: %s)", self.path, self.fsync)
        return self

    def submit(self, write: Callable[[duckdb.DuckDBPyConnection], T]) -> Future[T]:
        """Queue a write; the Future resolves with its result once committed (or with its error)."""
        return self._put(write)

    def insert_predictions(self, rows: Sequence[Mapping[str, Any]]) -> Future[int]:
        """Queue a request's predictions; the Future resolves with their number once they are in the journal.

        Raises ``WarehouseError`` naming the column when a row does not fit the log (nothing is queued)."""
        return self._put(_Rows(rows))

    def _put(self, write: Callable[[duckdb.DuckDBPyConnection], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed or not self._threads:
                raise LogWriterClosedError("The prediction log writer is closed.")
            if self.fsync:
                self._queue.put((write, future))
            else:  # an append to the page cache is cheap: done here, under the lock, saving a thread hop
                self._journal_batch([(write, future)])
        return future

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued so far (every acknowledged prediction) is committed to DuckDB."""
        try:
            self.submit(_barrier).result(timeout=self.read_timeout_s if timeout is None else timeout)
        except TimeoutError as exc:
            raise RacequantError("The prediction log did not catch up with its journal in time.") from exc

    def read(self, query: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run a read in the calling thread on its own cursor, after a flush: it sees every write queued before."""
        if self._conn is None:
            raise LogWriterClosedError("The prediction log writer is not started.")
        self.flush()
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = prediction_log.reader(self._conn)
            self._local.cursor = cursor
        return query(cursor)

    def close(self, timeout: float = 30.0) -> None:
        """Journal and commit everything queued, stop the threads, empty the journal and close the log."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.fsync:
                self._queue.put(_STOP)  # the journal thread passes it on to the drain thread
            else:
                self._drain.put(_STOP)
                self._urgent.set()
        for thread in self._threads:
            thread.join(timeout)
        if any(t.is_alive() for t in self._threads):
            logger.error("the prediction log writer did not stop in %.0f s; its journal is replayed later", timeout)
        self._journal.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        logger.info(
            "prediction log writer closed after %d journal appends and %d commits",
            self.batches_journaled,
            self.batches_committed,
        )

    # --- the journal thread ---

    def _run_journal(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            batch, stopping = take_queued(self._queue, item, self.max_batch, _STOP)
            self._journal_batch(batch)
        self._drain.put(_STOP)
        self._urgent.set()

    def _journal_batch(self, batch: list[tuple[Callable[..., Any], Future[Any]]]) -> None:
        live = [(w, f) for w, f in batch if f.set_running_or_notify_cancel()]
        rows = [(w, f) for w, f in live if isinstance(w, _Rows)]
        if rows:
            try:
                seq = self._journal.append(b"".join(w.line for w, _ in rows))
            except RacequantError as exc:
                logger.error("prediction journal append failed: %s", exc)
                for _, future in rows:
                    future.set_exception(exc)
                live = [(w, f) for w, f in live if not isinstance(w, _Rows)]
                rows = []
            else:
                self.batches_journaled += 1
                for write, _ in rows:
                    write.seq = seq
        for item in live:  # in submission order: a later write or read barrier commits after these rows
            self._drain.put(item)
            if not isinstance(item[0], _Rows):
                self._urgent.set()
        for write, future in rows:  # acknowledged: in the journal, on its way to DuckDB
            future.set_result(write.table.num_rows)

    # --- the drain thread ---

    def _run_drain(self, conn: duckdb.DuckDBPyConnection) -> None:
        stopping = False
        while not stopping:
            try:
                item = self._drain.get(timeout=self.checkpoint_idle_s)
            except queue.Empty:  # idle: a good moment for DuckDB's checkpoint
                self._checkpoint_if_due(conn)
                continue
            if item is _STOP:
                break
            # predictions (acknowledged already) wait a little for company, and so that their commit, which holds
            # the GIL in parts, comes after their requests are answered; a read or another write does not wait
            if isinstance(item[0], _Rows) and self.drain_interval_s > 0:
                self._urgent.wait(self.drain_interval_s)
            self._urgent.clear()
            batch, stopping = take_queued(self._drain, item, self.drain_batch, _STOP)
            self._commit(conn, batch)

    def _checkpoint_if_due(self, conn: duckdb.DuckDBPyConnection) -> None:
        """CHECKPOINT when the WAL beside the log holds more than ``checkpoint_wal_bytes``."""
        try:
            size = Path(f"{self.path}.wal").stat().st_size
        except OSError:  # no WAL: nothing to checkpoint
            return
        if size < self.checkpoint_wal_bytes:
            return
        started = time.perf_counter()
        try:
            conn.execute("CHECKPOINT")
        except duckdb.Error as exc:  # e.g. a reader's open transaction: tried again at the next idle moment
            logger.info("prediction log checkpoint postponed: %s", exc)
            return
        self.checkpoints += 1
        logger.info(
            "prediction log checkpointed %.1f MB of WAL in %.0f ms while idle",
            size / 1e6,
            (time.perf_counter() - started) * 1000,
        )

    def _commit(self, conn: duckdb.DuckDBPyConnection, batch: list[tuple[Callable[..., Any], Future[Any]]]) -> None:
        rows = [w for w, _ in batch if isinstance(w, _Rows)]
        writes = [(w, f) for w, f in batch if not isinstance(w, _Rows) and w is not _barrier]
        if not rows and not writes:
            for _, future in batch:
                future.set_result(None)
            return
        results: list[Any] = []
        try:
            prediction_log.begin(conn)
            if rows:
                prediction_log.insert_predictions(conn, pa.concat_tables([w.table for w in rows]))
            for write, _ in writes:
                results.append(write(conn))
            prediction_log.commit(conn)
        except Exception:
            prediction_log.rollback(conn)
            logger.warning("a group commit of %d writes failed; committing them one by one", len(batch), exc_info=True)
            for one in batch:  # retry alone: only the faulty write fails
                self._commit_one(conn, one)
            self._committed(rows)
            return
        self.batches_committed += 1
        self._committed(rows)
        done = iter(results)
        for write, future in batch:
            if isinstance(write, _Rows):
                continue  # resolved when journaled
            future.set_result(None if write is _barrier else next(done))

    def _commit_one(self, conn: duckdb.DuckDBPyConnection, item: tuple[Callable[..., Any], Future[Any]]) -> None:
        write, future = item
        if write is _barrier:
            future.set_result(None)
            return
        try:
            prediction_log.begin(conn)
            result = write(conn)
            prediction_log.commit(conn)
        except Exception:
            prediction_log.rollback(conn)
            if isinstance(write, _Rows):
                self._reject(write)
            else:
                self._fail(future)
            return
        self.batches_committed += 1
        if not isinstance(write, _Rows):
            future.set_result(result)

    def _committed(self, rows: list[_Rows]) -> None:
        if rows:
            try:
                self._journal.committed(max(w.seq for w in rows))
            except OSError:
                logger.exception("the prediction journal could not be emptied; its rows are replayed at next start")

    def _reject(self, write: _Rows) -> None:
        """Acknowledged predictions DuckDB refuses even alone: kept beside the log, never silently dropped."""
        self.rows_rejected += write.table.num_rows
        rejected = self._journal.path.with_name(f"{self._journal.path.name}.rejected")
        logger.exception(
            "the prediction log refused %d journaled predictions (request %s); they are kept in %s",
            write.table.num_rows,
            write.rows[0].get("request_id") if write.rows else None,
            rejected,
        )
        try:
            with open(rejected, "ab") as handle:
                handle.write(write.line)
        except OSError:
            logger.exception("the refused predictions could not be kept in %s", rejected)

    @staticmethod
    def _fail(future: Future[Any]) -> None:
        """Hand the current exception to the caller: racequant's own errors as they are, others wrapped."""
        exc = sys.exc_info()[1]
        if isinstance(exc, RacequantError):
            future.set_exception(exc)
        else:
            logger.exception("a prediction-log write failed")
            future.set_exception(RacequantError("The prediction log could not store the write."))
