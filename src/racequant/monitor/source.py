"""Where the monitor reads and writes the prediction log: the server's writer, or the log file itself."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import duckdb

from racequant.monitor.writer import LogWriter
from racequant.warehouse import prediction_log

logger = logging.getLogger(__name__)

T = TypeVar("T")
LogSource = LogWriter | Path | str


class LogAccess(Protocol):
    def read(self, query: Callable[[duckdb.DuckDBPyConnection], T]) -> T: ...

    def write(self, change: Callable[[duckdb.DuckDBPyConnection], T]) -> T: ...


class _WriterAccess:
    def __init__(self, writer: LogWriter) -> None:
        self.writer = writer

    def read(self, query: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        return self.writer.read(query)

    def write(self, change: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        return self.writer.submit(change).result(timeout=60)


class _ConnectionAccess:
    def __init__(self, conn: duckdb.DuckDBPyConnection, writable: bool) -> None:
        self.conn = conn
        self.writable = writable

    def read(self, query: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        return query(self.conn)

    def write(self, change: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        if not self.writable:
            raise RuntimeError("this log was opened read-only")
        prediction_log.begin(self.conn)
        try:
            out = change(self.conn)
            prediction_log.commit(self.conn)
        except Exception:
            prediction_log.rollback(self.conn)
            raise
        return out


def resolve_log_path(path: Path | str) -> Path:
    """A prediction log path as given, or the default log beside a warehouse path (``x.duckdb``)."""
    path = Path(path)
    if path.name.endswith(".predlog.duckdb"):
        return path
    return prediction_log.default_log_path(path)


@contextmanager
def log_access(source: LogSource, write: bool = False) -> Iterator[Any]:
    """Read (and with ``write`` change) the log through a running writer or by opening its file."""
    if isinstance(source, LogWriter):
        yield _WriterAccess(source)
        return
    with prediction_log.open_log(resolve_log_path(source), read_only=not write) as conn:
        yield _ConnectionAccess(conn, writable=write)
