"""The prediction log's write-ahead journal: acknowledged predictions survive a kill before DuckDB commits them,
replay is idempotent, a torn last record is dropped, and reads wait for what was acknowledged."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pytest

from racequant.errors import WarehouseError
from racequant.monitor import daily_metrics
from racequant.monitor.journal import Journal, JournalError
from racequant.monitor.writer import LogWriter
from racequant.settings import Settings
from racequant.warehouse import prediction_log
from test_monitor_log import rows


def _count(path: Path) -> tuple[int, int]:
    """(rows, distinct prediction ids) in the log file, read without replaying its journal."""
    with duckdb.connect(str(path), read_only=True) as conn:
        n, distinct = conn.execute("SELECT count(*), count(DISTINCT prediction_id) FROM predictions").fetchall()[0]
    return int(n), int(distinct)


def _journal_bytes(log: Path) -> int:
    return sum(p.stat().st_size for p in prediction_log.journal_segments(log))


_KILLED_WRITER = textwrap.dedent(
    """
    import json, os, signal, sys, threading
    sys.path.insert(0, sys.argv[2])
    from racequant.monitor.writer import LogWriter
    from test_monitor_log import rows

    writer = LogWriter(sys.argv[1]).start()
    gate = threading.Event()
    writer.submit(lambda conn: gate.wait())  # holds the drain thread: nothing reaches DuckDB from here on
    batches = [rows(f"K{i}", 14) for i in range(30)]
    futures = [writer.insert_predictions(batch) for batch in batches]
    for future in futures:
        future.result(10)  # acknowledged
    print(json.dumps([row["prediction_id"] for batch in batches for row in batch]), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_acknowledged_predictions_survive_a_sigkill_before_duckdb_commits_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "k.predlog.duckdb"
    script = _KILLED_WRITER
    proc = subprocess.run(
        [sys.executable, "-c", script, str(log), str(Path(__file__).parent)], capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    acknowledged = set(json.loads(proc.stdout.decode().splitlines()[-1]))
    assert len(acknowledged) == 30 * 14
    assert _count(log) == (0, 0)  # DuckDB never saw them: they are only in the journal
    assert _journal_bytes(log) > 0
    # the kill also cut a record while it was being written: never acknowledged, so dropped
    torn = prediction_log.encode_journal_record(rows("TORN", 14))
    with prediction_log.journal_path(log).open("ab") as journal:
        journal.write(torn[: len(torn) // 2])

    with caplog.at_level(logging.WARNING, logger="racequant.warehouse.prediction_log"):
        writer = LogWriter(log).start()
    try:
        logged = writer.read(prediction_log.prediction_ids)
        assert acknowledged <= logged and len(logged) == len(acknowledged)
        assert "torn last record" in caplog.text
        assert _journal_bytes(log) == 0  # replayed, then emptied
    finally:
        writer.close()


def test_replay_skips_predictions_already_in_the_log_and_can_run_twice(tmp_path: Path) -> None:
    log = tmp_path / "r.predlog.duckdb"
    committed, journaled_only = rows("C", 5), rows("J", 7)
    with prediction_log.open_log(log) as conn:
        prediction_log.insert_predictions(conn, committed)
    line = prediction_log.encode_journal_record(committed) + prediction_log.encode_journal_record(journaled_only)
    journal = prediction_log.journal_path(log)
    journal.write_bytes(line)
    with prediction_log.open_log(log) as conn:  # a writing opening replays (and empties) the journal
        assert prediction_log.prediction_count(conn) == 12
    assert journal.stat().st_size == 0
    journal.write_bytes(line)  # a kill between the commit and the emptying: the same records again
    with prediction_log.open_log(log) as conn:
        assert prediction_log.replay_journal(conn, log) == 0
    assert _count(log) == (12, 12)
    frame_ids = {r["prediction_id"] for r in committed + journaled_only}
    with prediction_log.open_log(log, read_only=True) as conn:
        assert prediction_log.prediction_ids(conn) == frame_ids


def test_replayed_rows_keep_their_values(tmp_path: Path) -> None:
    log = tmp_path / "v.predlog.duckdb"
    original = rows("V", 3, datetime(2024, 3, 3, 12, 30, 15, 123456, tzinfo=UTC))
    original[0]["features_json"] = json.dumps({"rating": 52.0, "draw": 3})
    with prediction_log.open_log(log):
        pass
    prediction_log.journal_path(log).write_bytes(prediction_log.encode_journal_record(original))
    with prediction_log.open_log(log, read_only=True) as conn:  # a reader replays a journal a kill left
        stored = conn.execute(
            "SELECT timestamp, race_date, win_prob, place_prob_lower, features_json FROM predictions ORDER BY horse_id"
        ).fetchall()
    assert stored[0] == (
        datetime(2024, 3, 3, 12, 30, 15, 123456),
        date(2024, 3, 3),
        pytest.approx(1 / 3),
        None,
        original[0]["features_json"],
    )
    assert len(stored) == 3


@pytest.mark.parametrize("fsync", [False, True], ids=["page-cache", "fsync"])
def test_a_read_waits_until_acknowledged_predictions_are_committed(tmp_path: Path, fsync: bool) -> None:
    writer = LogWriter(tmp_path / "w.predlog.duckdb", fsync=fsync).start()
    gate = threading.Event()
    try:
        writer.submit(lambda conn: gate.wait(30))  # DuckDB is busy (a checkpoint, a slow commit)
        acknowledged = [writer.insert_predictions(rows(f"A{i}", 14)) for i in range(5)]
        assert [f.result(10) for f in acknowledged] == [14] * 5  # acknowledged without waiting for DuckDB
        seen: list[int] = []
        reader = threading.Thread(target=lambda: seen.append(writer.read(prediction_log.prediction_count)))
        reader.start()
        reader.join(0.3)
        assert reader.is_alive() and not seen  # the read waits behind the journaled rows ...
        gate.set()
        reader.join(10)
        assert seen == [5 * 14]  # ... and then sees every one of them
    finally:
        gate.set()
        writer.close()
    assert _journal_bytes(tmp_path / "w.predlog.duckdb") == 0


def test_outcomes_queued_after_predictions_score_them(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path / "o.predlog.duckdb").start()
    try:
        writer.insert_predictions(rows("O", 8)).result(10)
        outcomes = [(f"H{i}", i + 1, "finished") for i in range(8)]
        at = datetime.now(UTC)
        assert writer.submit(lambda c: prediction_log.record_outcomes(c, "O", outcomes, at)).result(10) == 8
    finally:
        writer.close()


def test_a_row_that_does_not_fit_the_log_is_refused_before_it_is_journaled(tmp_path: Path) -> None:
    log = tmp_path / "b.predlog.duckdb"
    writer = LogWriter(log).start()
    try:
        bad = rows("BAD", 3)
        bad[1]["win_prob"] = None
        with pytest.raises(WarehouseError, match="win_prob: a value is required"):
            writer.insert_predictions(bad)
        wrong = rows("WRONG", 2)
        wrong[0]["timestamp"] = "yesterday"
        with pytest.raises(WarehouseError, match="timestamp"):
            writer.insert_predictions(wrong)
        assert writer.insert_predictions(rows("GOOD", 4)).result(10) == 4
        assert writer.read(prediction_log.prediction_count) == 4
    finally:
        writer.close()


def test_the_journal_seals_a_segment_it_cannot_empty_and_replays_segments_in_order(tmp_path: Path) -> None:
    log = tmp_path / "s.predlog.duckdb"
    first, second, third = rows("S1", 2), rows("S2", 2), rows("S3", 2)
    journal = Journal(log, rotate_bytes=100).open()
    seq1 = journal.append(prediction_log.encode_journal_record(first))
    journal.append(prediction_log.encode_journal_record(second))
    journal.committed(seq1)  # the log lags behind: the active segment is sealed instead of emptied
    sealed = prediction_log.journal_segments(log)
    assert [p.name for p in sealed] == ["s.predlog.duckdb.journal.1", "s.predlog.duckdb.journal"]
    seq3 = journal.append(prediction_log.encode_journal_record(third))
    journal.close()  # killed here
    replayed = prediction_log.read_journal(prediction_log.journal_segments(log))
    assert [r["race_id"] for r in replayed] == ["S1", "S1", "S2", "S2", "S3", "S3"]

    journal = Journal(log, rotate_bytes=100)
    with pytest.raises(JournalError, match="not replayed"):
        journal.open()
    with prediction_log.open_log(log) as conn:
        assert prediction_log.prediction_count(conn) == 6
    assert prediction_log.journal_segments(log) == [prediction_log.journal_path(log)]
    journal.open()
    journal.append(b"{}\n")
    journal.committed(seq3)
    assert _journal_bytes(log) == 0
    journal.close()


def test_the_writer_can_fsync_each_journal_append(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path / "f.predlog.duckdb", fsync=True).start()
    try:
        assert writer.insert_predictions(rows("F", 3)).result(10) == 3
        assert writer.read(prediction_log.prediction_count) == 3
    finally:
        writer.close()


def test_daily_metrics_of_a_killed_server_count_its_journaled_predictions(tmp_path: Path) -> None:
    log = tmp_path / "m.predlog.duckdb"
    with prediction_log.open_log(log):
        pass
    day = datetime(2024, 3, 3, 10, tzinfo=UTC)
    prediction_log.journal_path(log).write_bytes(prediction_log.encode_journal_record(rows("M", 9, day)))
    assert daily_metrics(log, "2024-03-03", store=True)["n_predictions"] == 9


def test_journal_fsync_is_the_predlog_fsync_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().predlog_fsync is False
    monkeypatch.setenv("RACEQUANT_PREDLOG_FSYNC", "true")
    assert Settings().predlog_fsync is True


def test_a_journal_its_own_process_is_writing_is_not_replayed_under_the_writer(tmp_path: Path) -> None:
    log = tmp_path / "own.predlog.duckdb"
    writer = LogWriter(log).start()
    gate = threading.Event()
    try:
        writer.submit(lambda conn: gate.wait(30))
        writer.insert_predictions(rows("OWN", 6)).result(10)
        with duckdb.connect(str(log)) as other:  # the same database instance, as another opening in-process gets
            assert prediction_log.replay_journal(other, log) == 0
        gate.set()
        assert writer.read(prediction_log.prediction_count) == 6
    finally:
        gate.set()
        writer.close()
    assert _count(log) == (6, 6)


def test_a_second_writer_of_the_same_log_in_one_process_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "two.predlog.duckdb"
    first = LogWriter(log).start()
    try:
        with pytest.raises(WarehouseError, match="already has a writer"):
            LogWriter(log).start()
        assert first.insert_predictions(rows("T", 2)).result(10) == 2
    finally:
        first.close()
    second = LogWriter(log).start()  # the first one is closed: now it may
    try:
        assert second.read(prediction_log.prediction_count) == 2
    finally:
        second.close()


def test_duckdb_checkpoints_wait_for_an_idle_moment_and_a_large_enough_wal(tmp_path: Path) -> None:
    log = tmp_path / "c.predlog.duckdb"
    wal = Path(f"{log}.wal")
    # a WAL threshold no test reaches: the commits below leave their WAL alone, busy or idle
    writer = LogWriter(log, checkpoint_idle_s=0.05, checkpoint_wal_bytes=1 << 40).start()
    try:
        for i in range(20):
            writer.insert_predictions(rows(f"C{i}", 14)).result(10)
        writer.flush()
        threading.Event().wait(0.3)  # idle for six idle periods
        assert wal.stat().st_size > 0 and writer.checkpoints == 0
    finally:
        writer.close()

    writer = LogWriter(log, checkpoint_idle_s=0.05, checkpoint_wal_bytes=1).start()
    try:
        writer.insert_predictions(rows("D", 14)).result(10)
        writer.flush()
        assert wal.exists() and wal.stat().st_size > 0  # committed, not yet checkpointed
        for _ in range(200):  # the drain thread checkpoints once the log is idle
            if writer.checkpoints:
                break
            threading.Event().wait(0.05)
        assert writer.checkpoints >= 1
        assert not wal.exists() or wal.stat().st_size == 0
        assert writer.read(prediction_log.prediction_count) == 21 * 14
    finally:
        writer.close()
