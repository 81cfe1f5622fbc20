"""Submitted qualitative records in the warehouse: all or nothing, idempotent re-imports, read back validated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusion_helpers import race_records, raw_record
from racequant.fusion.api import import_qualitative, qualitative_from_warehouse, store_submitted
from racequant.fusion.errors import QualitativeValidationError
from racequant.warehouse import connect
from racequant.warehouse.qualitative_store import load_qualitative, qualitative_summary


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records))
    return path


def test_import_stores_every_record_and_reads_them_back(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    f = _write(tmp_path / "q.json", race_records("R1", {"A": 2.0, "B": 1.0, "C": 0.5}))
    summary = import_qualitative(db, f)
    assert summary == {"records": 3, "races": 1, "replaced": 0, "source": "file:q.json"}
    records = qualitative_from_warehouse(db, ["R1"])
    assert [(r.horse_id, r.lr_form_fitness) for r in records] == [("A", 2.0), ("B", 1.0), ("C", 0.5)]
    assert records[0].key_strengths == ["won last start", "suits the distance"]
    assert records[0].prediction_timestamp.isoformat() == "2024-05-01T12:30:00+08:00"


def test_reimporting_replaces_the_race_of_the_same_chain(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    import_qualitative(db, _write(tmp_path / "a.json", race_records("R1", {"A": 2.0, "B": 1.0})))
    summary = import_qualitative(db, _write(tmp_path / "b.json", race_records("R1", {"A": 3.0, "B": 1.0})))
    assert summary["replaced"] == 2
    assert [r.lr_form_fitness for r in qualitative_from_warehouse(db)] == [3.0, 1.0]


def test_an_invalid_file_stores_nothing(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    records = [*race_records("R1", {"A": 2.0}), raw_record("R1", "B", lr_tactics=0.01)]
    with pytest.raises(QualitativeValidationError, match=r"horse B \(Alpha\), field 'lr_tactics'"):
        import_qualitative(db, _write(tmp_path / "bad.json", records))
    with connect(db) as conn:
        assert load_qualitative(conn) == []


def test_api_submission_is_validated_then_stored(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    assert store_submitted(db, {"records": race_records("R9", {"A": 1.5})})["records"] == 1
    with connect(db) as conn:
        assert qualitative_summary(conn)[0]["model_chain"] == "analyst-team"
    with pytest.raises(QualitativeValidationError):
        store_submitted(db, [{"race_id": "R9"}])
