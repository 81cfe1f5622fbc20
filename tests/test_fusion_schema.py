"""The qualitative schema: every violation is rejected with the horse and the field named; nothing partial passes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fusion_helpers import NARRATIVE, raw_record
from racequant.errors import RacequantError
from racequant.fusion.errors import QualitativeValidationError
from racequant.fusion.schema import (
    QualitativeRecord,
    load_qualitative_file,
    qualitative_json_schema,
    records_from_json,
    validate_qualitative,
)


def test_a_valid_record_is_accepted_with_its_timestamp_parsed() -> None:
    (record,) = validate_qualitative([raw_record()])
    assert isinstance(record, QualitativeRecord)
    assert record.lr_product == pytest.approx(1.188)
    assert record.prediction_timestamp.utcoffset() is not None
    assert record.to_json_dict()["prediction_timestamp"] == "2024-05-01T12:30:00+08:00"


VIOLATIONS: list[tuple[str, dict[str, Any], str]] = [
    ("lr_form_fitness", {"lr_form_fitness": 0.05}, "greater than or equal to 0.1"),
    ("lr_conditions", {"lr_conditions": 10.5}, "less than or equal to 10"),
    ("lr_tactics", {"lr_tactics": "1.0"}, "valid number"),
    ("lr_context", {"lr_context": float("nan")}, "finite number"),
    ("lr_form_fitness", {"lr_form_fitness": True}, "valid number"),
    ("lr_product", {"lr_product": 2.5}, "not the product of the four likelihood ratios"),
    ("lr_product", {"lr_product": 150.0}, "less than or equal to 100"),
    ("lr_product", {"lr_product": 0.001}, "greater than or equal to 0.01"),
    ("key_strengths", {"key_strengths": "fast"}, "valid list"),
    ("key_concerns.0", {"key_concerns": [1]}, "valid string"),
    ("key_concerns.0", {"key_concerns": [""]}, "at least 1 character"),
    ("race_narrative", {"race_narrative": "Too short."}, "at least 150 characters"),
    ("race_narrative", {"race_narrative": NARRATIVE + NARRATIVE}, "at most 300 characters"),
    ("qualitative_confidence", {"qualitative_confidence": 1.2}, "less than or equal to 1"),
    ("qualitative_confidence", {"qualitative_confidence": -0.1}, "greater than or equal to 0"),
    ("model_chain", {"model_chain": ""}, "at least 1 character"),
    ("prediction_timestamp", {"prediction_timestamp": "yesterday"}, "ISO 8601"),
    ("prediction_timestamp", {"prediction_timestamp": 1714537800}, "ISO 8601"),
    ("race_narrative", {"race_narrative": None}, "valid string"),
    ("unexpected", {"unexpected": 1}, "Extra inputs are not permitted"),
]


@pytest.mark.parametrize(
    ("field", "change", "message"), VIOLATIONS, ids=[f"{v[0]}-{i}" for i, v in enumerate(VIOLATIONS)]
)
def test_every_schema_violation_is_rejected_naming_horse_and_field(field: str, change: dict, message: str) -> None:
    with pytest.raises(QualitativeValidationError) as info:
        validate_qualitative([raw_record(horse_id="H7", horse_name="Golden Arrow", **change)])
    (problem,) = info.value.problems
    assert problem.startswith(f"race R1, horse H7 (Golden Arrow), field '{field}':")
    assert message in problem


@pytest.mark.parametrize(
    "field", ["race_id", "horse_id", "lr_form_fitness", "lr_product", "race_narrative", "prediction_timestamp"]
)
def test_a_missing_field_is_named(field: str) -> None:
    raw = raw_record()
    del raw[field]
    with pytest.raises(QualitativeValidationError, match=rf"field '{field}': Field required"):
        validate_qualitative([raw])


def test_a_horse_without_a_name_is_named_by_its_id() -> None:
    with pytest.raises(QualitativeValidationError, match=r"race R1, horse H7, field 'horse_name': Input should be"):
        validate_qualitative([raw_record(horse_id="H7", horse_name=None)])


def test_lr_product_equal_within_rounding_is_accepted() -> None:
    # 1.2 * 1.0 * 0.9 * 1.1 = 1.188, stated to two decimals
    assert validate_qualitative([raw_record(lr_product=1.19)])[0].lr_product == 1.19
    assert validate_qualitative([raw_record(lr_product=1.18)])[0].exact_lr_product == pytest.approx(1.188)


def test_one_bad_record_rejects_the_whole_batch_and_lists_every_problem() -> None:
    batch = [
        raw_record(horse_id="H1"),
        raw_record(horse_id="H2", lr_tactics=20),
        raw_record(horse_id="H3", lr_context=0),
    ]
    with pytest.raises(QualitativeValidationError) as info:
        validate_qualitative(batch)
    assert len(info.value.problems) == 2
    assert "nothing was stored" in str(info.value)
    assert isinstance(info.value, RacequantError)


def test_a_horse_listed_twice_in_a_race_is_rejected() -> None:
    with pytest.raises(QualitativeValidationError, match=r"horse H1 \(Alpha\), field 'horse_id': horse listed twice"):
        validate_qualitative([raw_record(), raw_record()])


def test_a_record_that_is_not_an_object_is_named_by_position() -> None:
    with pytest.raises(QualitativeValidationError, match=r"record 1: must be a JSON object"):
        validate_qualitative([raw_record(), "H2"])


def test_records_from_json_accepts_a_list_or_an_object_with_records() -> None:
    assert len(records_from_json([raw_record()])) == 1
    assert len(records_from_json({"records": [raw_record()]})) == 1
    with pytest.raises(QualitativeValidationError, match="top level"):
        records_from_json({"horses": []})


def test_records_of_another_race_are_refused_when_a_race_is_expected() -> None:
    with pytest.raises(QualitativeValidationError, match="expected race R2, got R1"):
        records_from_json([raw_record()], race_id="R2")


def test_load_qualitative_file_reads_and_validates(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps([raw_record(horse_id="H1"), raw_record(horse_id="H2")]))
    assert [r.horse_id for r in load_qualitative_file(good)] == ["H1", "H2"]
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(QualitativeValidationError, match="not valid JSON"):
        load_qualitative_file(broken)
    with pytest.raises(QualitativeValidationError, match="cannot read the file"):
        load_qualitative_file(tmp_path / "absent.json")


def test_the_example_file_is_valid() -> None:
    path = Path(__file__).resolve().parents[1] / "examples" / "qual_example.json"
    records = load_qualitative_file(path)
    assert len({r.race_id for r in records}) == 1
    assert len(records) >= 7


def test_the_structured_output_schema_lists_every_field() -> None:
    schema = qualitative_json_schema()
    item = schema["properties"]["records"]["items"]
    assert set(item["required"]) == set(QualitativeRecord.model_fields)
