"""The prediction log's write-ahead journal: appended by the log writer, emptied once DuckDB holds its rows.

Each append is one ``os.write`` on an ``O_APPEND`` descriptor: once it returns, the bytes are in the kernel's page
cache and survive a SIGKILL of the process (not a power loss or a kernel crash: ``fsync=True`` adds an fsync per
append for those, at the cost of a disk flush each). Appends get increasing sequence numbers; ``committed(seq)``
says DuckDB holds everything up to ``seq``, and the journal is then emptied (truncated) when nothing newer is in
it, or, when the writer never catches up completely, the active segment is sealed (renamed ``<journal>.<n>``) once
it grows past ``rotate_bytes`` and deleted once committed. The file format and the replay are
``racequant.warehouse.prediction_log``'s (``encode_journal_record``, ``replay_journal``).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from racequant.errors import RacequantError
from racequant.warehouse import prediction_log

logger = logging.getLogger(__name__)


class JournalError(RacequantError):
    """The prediction journal could not take a write (nothing of it was acknowledged)."""


class Journal:
    """Appends to ``<log>.journal``; call ``open`` after the log has replayed (and so emptied) the journal."""

    def __init__(self, log_path: Path | str, fsync: bool = False, rotate_bytes: int = 16 * 1024 * 1024) -> None:
        if rotate_bytes < 1:
            raise ValueError(f"The 'rotate_bytes' parameter of Journal must be a positive int. Got {rotate_bytes}.")
        self.log_path = Path(log_path)
        self.path = prediction_log.journal_path(self.log_path)
        self.fsync = fsync
        self.rotate_bytes = rotate_bytes
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._size = 0
        self.appended_seq = 0
        self.committed_seq = 0
        self._sealed: list[tuple[Path, int]] = []  # (segment, last seq in it), oldest first
        self._next_segment = 1

    def open(self) -> Journal:
        prediction_log.own_journal(self.log_path)  # refused if another writer of this process has it
        try:
            if any(p.stat().st_size for p in prediction_log.journal_segments(self.log_path)):
                raise JournalError(f"The prediction journal {self.path} was not replayed before it was opened.")
            self._fd = self._open_active()
        except BaseException:
            prediction_log.own_journal(self.log_path, owned=False)
            raise
        self._size = 0
        return self

    def _open_active(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def append(self, data: bytes) -> int:
        """Write ``data`` (whole journal lines) at the end; returns its sequence number. On failure nothing of it
        stays in the journal (a partial write is cut off) and ``JournalError`` is raised."""
        with self._lock:
            if self._fd is None:
                raise JournalError("The prediction journal is closed.")
            fd, start = self._fd, self._size
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self.fsync:
                    os.fsync(fd)
            except OSError as exc:
                try:  # a torn line followed by later appends would hide them: cut it off
                    os.ftruncate(fd, start)
                except OSError:
                    logger.exception("the prediction journal could not cut off a failed write")
                raise JournalError(f"The prediction journal could not be written: {exc.strerror or exc}.") from exc
            self._size = start + len(data)
            self.appended_seq += 1
            return self.appended_seq

    def committed(self, seq: int) -> None:
        """The log holds everything appended up to ``seq``: drop what the journal no longer needs."""
        with self._lock:
            self.committed_seq = max(self.committed_seq, seq)
            while self._sealed and self._sealed[0][1] <= self.committed_seq:
                self._sealed.pop(0)[0].unlink(missing_ok=True)
            if self._fd is None:
                return
            if self.committed_seq >= self.appended_seq:
                if self._size:
                    os.ftruncate(self._fd, 0)
                    self._size = 0
            elif self._size >= self.rotate_bytes:
                sealed = self.path.with_name(f"{self.path.name}.{self._next_segment}")
                self._next_segment += 1
                os.rename(self.path, sealed)
                os.close(self._fd)
                self._fd = self._open_active()
                self._sealed.append((sealed, self.appended_seq))
                self._size = 0

    @property
    def size(self) -> int:
        """Bytes in the active segment."""
        return self._size

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
                prediction_log.own_journal(self.log_path, owned=False)
