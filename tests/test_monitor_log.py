"""The prediction log and its single writer: group commits, isolation of a bad write, outcomes by race."""

from __future__ import annotations

import concurrent.futures
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from racequant.errors import RacequantError, WarehouseError
from racequant.monitor.writer import LogWriter, LogWriterClosedError
from racequant.warehouse import prediction_log


def rows(race_id: str, n: int, at: datetime | None = None) -> list[dict[str, Any]]:
    at = at or datetime.now(UTC)
    return [
        {
            "prediction_id": uuid.uuid4().hex,
            "request_id": race_id,
            "race_id": race_id,
            "horse_id": f"H{i}",
            "timestamp": at,
            "race_date": at.date(),
            "win_prob": 1 / n,
            "place_prob": min(1.0, 3 / n),
            "win_prob_lower": 0.5 / n,
            "win_prob_upper": 1.5 / n,
            "place_prob_lower": None,
            "place_prob_upper": None,
            "model_version": "m1",
            "feature_version": "f1",
            "calibration_group": "ST",
            "latency_ms": 3.0,
            "features_json": None,
        }
        for i in range(n)
    ]


def test_the_log_lives_in_its_own_file_beside_the_warehouse(tmp_path: Path) -> None:
    assert prediction_log.default_log_path(tmp_path / "race.duckdb") == tmp_path / "race.predlog.duckdb"


def test_concurrent_submissions_are_all_committed_in_fewer_transactions(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path / "x.predlog.duckdb").start()
    try:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            futures = [f for f in pool.map(lambda i: writer.insert_predictions(rows(f"R{i}", 14)), range(200))]
        assert sum(f.result(10) for f in futures) == 200 * 14
        assert writer.read(prediction_log.prediction_count) == 200 * 14
        assert writer.batches_committed <= 200
    finally:
        writer.close()
    with prediction_log.open_log(tmp_path / "x.predlog.duckdb", read_only=True) as conn:
        assert prediction_log.prediction_count(conn) == 200 * 14


def test_a_failing_write_fails_alone(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path / "x.predlog.duckdb").start()

    def bad(conn: Any) -> None:
        raise RacequantError("this write is refused")

    try:
        good = [writer.insert_predictions(rows(f"G{i}", 3)) for i in range(5)]
        failing = writer.submit(bad)
        with pytest.raises(RacequantError, match="refused"):
            failing.result(10)
        assert [f.result(10) for f in good] == [3] * 5
        assert writer.read(prediction_log.prediction_count) == 15
    finally:
        writer.close()
    with pytest.raises(LogWriterClosedError):
        writer.insert_predictions(rows("late", 1))


def test_outcomes_mark_win_and_hong_kong_place_terms(tmp_path: Path) -> None:
    with prediction_log.open_log(tmp_path / "l.predlog.duckdb") as conn:
        prediction_log.insert_predictions(conn, rows("BIG", 8) + rows("SMALL", 5))
        now = datetime.now(UTC)
        assert prediction_log.record_outcomes(conn, "BIG", [(f"H{i}", i + 1, "finished") for i in range(8)], now) == 8
        prediction_log.record_outcomes(
            conn, "SMALL", [(f"H{i}", i + 1, "finished") for i in range(4)] + [("H4", None, "withdrawn")], now
        )
        frame = prediction_log.predictions_frame(conn).set_index(["race_id", "horse_id"])
    assert frame.loc[("BIG", "H0"), "won"] and not frame.loc[("BIG", "H1"), "won"]
    assert frame.loc[("BIG", "H2"), "placed"] and not frame.loc[("BIG", "H3"), "placed"]  # 7+ runners: 3 places
    assert frame.loc[("SMALL", "H1"), "placed"] and not frame.loc[("SMALL", "H2"), "placed"]  # 4 starters: 2 places
    assert frame.loc[("SMALL", "H4"), ["won", "placed"]].isna().all()  # withdrawn


def test_a_missing_log_cannot_be_read(tmp_path: Path) -> None:
    with (
        pytest.raises(WarehouseError, match="no prediction log"),
        prediction_log.open_log(tmp_path / "none.predlog.duckdb", read_only=True),
    ):
        pass


def test_predictions_frame_keeps_the_last_prediction_of_a_runner(tmp_path: Path) -> None:
    with prediction_log.open_log(tmp_path / "l.predlog.duckdb") as conn:
        prediction_log.insert_predictions(conn, rows("R", 2, datetime(2024, 1, 1, 10, tzinfo=UTC)))
        later = rows("R", 2, datetime(2024, 1, 1, 11, tzinfo=UTC))
        later[0]["win_prob"] = 0.9
        prediction_log.insert_predictions(conn, later)
        frame = prediction_log.predictions_frame(conn, date(2024, 1, 1), date(2024, 1, 1))
    assert len(frame) == 2 and frame.set_index("horse_id").loc["H0", "win_prob"] == 0.9
