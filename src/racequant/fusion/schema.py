"""The qualitative output schema: likelihood ratios per horse from analysts or a chain of language models.

Each record says, for one runner, how much more (LR > 1) or less (LR < 1) likely the qualitative reading makes
its win than the base probability does, factor by factor: form and fitness, conditions, tactics, context.
Validation collects every problem of a batch, each naming the race, the horse and the field, and accepts the
batch only when there is none, so nothing partial is ever stored.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, ValidationInfo, field_validator

from racequant.fusion.errors import QualitativeValidationError

logger = logging.getLogger(__name__)

LR_MIN, LR_MAX = 0.1, 10.0
LR_PRODUCT_MIN, LR_PRODUCT_MAX = 0.01, 100.0
NARRATIVE_MIN, NARRATIVE_MAX = 150, 300
# lr_product is stated to a few decimals: accept it within 1% (relative) or 0.006 (absolute) of the product
LR_PRODUCT_REL_TOL, LR_PRODUCT_ABS_TOL = 0.01, 0.006
LR_FIELDS = ("lr_form_fitness", "lr_conditions", "lr_tactics", "lr_context")

NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
LikelihoodRatio = Annotated[float, Field(ge=LR_MIN, le=LR_MAX, allow_inf_nan=False, strict=True)]


class QualitativeRecord(BaseModel):
    """One runner's qualitative assessment (see docs/fusion.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    race_id: NonEmpty
    horse_id: NonEmpty
    horse_name: NonEmpty
    lr_form_fitness: LikelihoodRatio
    lr_conditions: LikelihoodRatio
    lr_tactics: LikelihoodRatio
    lr_context: LikelihoodRatio
    lr_product: Annotated[float, Field(ge=LR_PRODUCT_MIN, le=LR_PRODUCT_MAX, allow_inf_nan=False, strict=True)]
    key_strengths: list[NonEmpty]
    key_concerns: list[NonEmpty]
    race_narrative: Annotated[str, StringConstraints(min_length=NARRATIVE_MIN, max_length=NARRATIVE_MAX)]
    qualitative_confidence: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False, strict=True)]
    model_chain: NonEmpty
    prediction_timestamp: datetime

    @field_validator("prediction_timestamp", mode="before")
    @classmethod
    def _iso_8601(cls, value: Any) -> Any:
        if isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise ValueError(f"must be an ISO 8601 date-time string, got {type(value).__name__}")
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"must be an ISO 8601 date-time string, got {value!r}") from None

    @field_validator("lr_product")
    @classmethod
    def _product_matches(cls, value: float, info: ValidationInfo) -> float:
        # the four ratios come first in the schema, so they are validated (and present when valid) by now
        ratios = [info.data.get(f) for f in LR_FIELDS]
        if any(r is None for r in ratios):
            return value
        product = math.prod(ratios)  # type: ignore[arg-type]
        if abs(value - product) > max(LR_PRODUCT_ABS_TOL, LR_PRODUCT_REL_TOL * product):
            raise ValueError(f"{value:g} is not the product of the four likelihood ratios ({product:.4g})")
        return value

    @property
    def exact_lr_product(self) -> float:
        """The product of the four ratios (used by fusion; lr_product is its rounded statement)."""
        return math.prod(getattr(self, f) for f in LR_FIELDS)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def neutral_record(race_id: str, horse_id: str, horse_name: str, timestamp: datetime) -> QualitativeRecord:
    """The record of the null provider: every ratio 1, no information, confidence 0."""
    narrative = (
        "No qualitative assessment was made for this race: every likelihood ratio is 1, so the fused "
        "probabilities equal the base model's probabilities for every runner in the field."
    )
    return QualitativeRecord(
        race_id=race_id,
        horse_id=horse_id,
        horse_name=horse_name or horse_id,
        lr_form_fitness=1.0,
        lr_conditions=1.0,
        lr_tactics=1.0,
        lr_context=1.0,
        lr_product=1.0,
        key_strengths=[],
        key_concerns=[],
        race_narrative=narrative,
        qualitative_confidence=0.0,
        model_chain="none",
        prediction_timestamp=timestamp,
    )


def _where(raw: Any, index: int) -> str:
    if isinstance(raw, Mapping):
        race = raw.get("race_id")
        horse = raw.get("horse_id")
        name = raw.get("horse_name")
        if horse is not None:
            label = f"horse {horse}" + (f" ({name})" if name else "")
            return f"race {race}, {label}" if race is not None else label
    return f"record {index}"


def _field_of(error: Mapping[str, Any]) -> str:
    loc = [str(p) for p in error.get("loc", ())]
    return ".".join(loc) if loc else "record"


def validate_qualitative(
    raw_records: Iterable[Any], source: str = "qualitative input", race_id: str | None = None
) -> list[QualitativeRecord]:
    """Validate a batch of raw records; raise QualitativeValidationError listing every problem, or return all.

    Also refuses a horse listed twice in a race, and (with ``race_id``) records of another race.
    """
    problems: list[str] = []
    records: list[QualitativeRecord] = []
    seen: set[tuple[str, str]] = set()
    for index, raw in enumerate(raw_records):
        where = _where(raw, index)
        if not isinstance(raw, Mapping):
            problems.append(f"{where}: must be a JSON object, got {type(raw).__name__}")
            continue
        try:
            record = QualitativeRecord.model_validate(dict(raw))
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                field = _field_of(err)
                message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
                problems.append(f"{where}, field '{field}': {message}")
            continue
        key = (record.race_id, record.horse_id)
        if key in seen:
            problems.append(f"{where}, field 'horse_id': horse listed twice in race {record.race_id}")
            continue
        if race_id is not None and record.race_id != race_id:
            problems.append(f"{where}, field 'race_id': expected race {race_id}, got {record.race_id}")
            continue
        seen.add(key)
        records.append(record)
    if problems:
        logger.info("%s: %d problem(s), nothing accepted", source, len(problems))
        raise QualitativeValidationError(problems, source=source)
    return records


def records_from_json(
    data: Any, source: str = "qualitative input", race_id: str | None = None
) -> list[QualitativeRecord]:
    """Records from parsed JSON: a list of records, or an object with a ``records`` (or ``runners``) list."""
    if isinstance(data, Mapping):
        for key in ("records", "runners"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            raise QualitativeValidationError(
                ["top level: expected a list of records or an object with a 'records' list"], source=source
            )
    if not isinstance(data, list):
        raise QualitativeValidationError(
            [f"top level: expected a list of records, got {type(data).__name__}"], source=source
        )
    return validate_qualitative(data, source=source, race_id=race_id)


def load_qualitative_file(path: str | Path) -> list[QualitativeRecord]:
    """Read and validate a qualitative JSON file (every record, or none)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise QualitativeValidationError([f"cannot read the file: {exc}"], source=str(path)) from exc
    except json.JSONDecodeError as exc:
        raise QualitativeValidationError([f"not valid JSON: {exc}"], source=str(path)) from exc
    return records_from_json(data, source=str(path))


def qualitative_json_schema() -> dict[str, Any]:
    """The JSON schema of a response holding the records of one race (for structured output requests)."""
    return {
        "type": "object",
        "properties": {"records": {"type": "array", "items": QualitativeRecord.model_json_schema()}},
        "required": ["records"],
        "additionalProperties": False,
    }
