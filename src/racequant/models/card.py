"""The race card a prediction is asked for: the race, its declared horses and, optionally, their past runs.

This is the request side of the one prediction path (``racequant predict``, the API, fusion); it is kept apart
from the feature builder's own card dict, which ``RaceCard.to_feature_card()`` produces. Field names follow the
seed's request (``distance`` in metres, ``weight`` carried in lbs, ``jockey`` and ``trainer`` ids); the
warehouse's names (``distance_m``, ``carried_weight_lbs``, ``jockey_id``, ``trainer_id``) are accepted too.

A horse is known to the warehouse by its ``horse_id``, or brings its ``past_runs`` inline (at most
``MAX_PAST_RUNS``): they become extra history rows visible only to this card's features. The market
(``win_odds``) is carried for comparison and never reaches a model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from racequant.errors import RacequantError
from racequant.ingest.schema import GOINGS, RACE_CLASSES, SEXES

logger = logging.getLogger(__name__)

MAX_RUNNERS = 24
MAX_PAST_RUNS = 50

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$"
Identifier = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=_ID_PATTERN)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
Going = Literal[GOINGS]  # type: ignore[valid-type]
RaceClass = Literal[RACE_CLASSES]  # type: ignore[valid-type]
Sex = Literal[SEXES]  # type: ignore[valid-type]
Surface = Literal["turf", "dirt", "all_weather"]
Distance = Annotated[int, Field(ge=800, le=5000)]
Weight = Annotated[float, Field(ge=80, le=200)]
Odds = Annotated[float, Field(gt=1, le=10000)]
Position = Annotated[int, Field(ge=1, le=MAX_RUNNERS)]


class CardValidationError(RacequantError):
    """A race card that does not fit the schema; every problem names its field (``horses[3].draw: ...``)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        listed = "\n".join(f"  - {p}" for p in self.problems[:20])
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(f"The race card is invalid ({len(self.problems)} problem(s)):\n{listed}{more}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _alias(*names: str) -> Any:
    return Field(validation_alias=AliasChoices(*names))


class PastRun(_Strict):
    """One earlier run of a horse, as the caller knows it; missing race fields default to the card's race."""

    date: date
    race_id: Identifier | None = None
    track: Name | None = None
    distance: Distance | None = Field(default=None, validation_alias=AliasChoices("distance", "distance_m"))
    going: Going | None = None
    surface: Surface | None = None
    race_class: RaceClass | None = None
    field_size: Position | None = None
    finish_position: Position | None = None
    margin_lengths: Annotated[float, Field(ge=0, le=200)] | None = None
    finish_time_s: Annotated[float, Field(gt=0, le=600)] | None = None
    win_odds: Odds | None = None
    weight: Weight | None = Field(default=None, validation_alias=AliasChoices("weight", "carried_weight_lbs"))
    draw: Position | None = None
    jockey: Identifier | None = Field(default=None, validation_alias=AliasChoices("jockey", "jockey_id"))
    trainer: Identifier | None = Field(default=None, validation_alias=AliasChoices("trainer", "trainer_id"))
    rating: Annotated[float, Field(ge=0, le=200)] | None = None

    @model_validator(mode="after")
    def _position_within_field(self) -> PastRun:
        if self.finish_position is not None and self.field_size is not None and self.finish_position > self.field_size:
            raise ValueError(f"finish_position {self.finish_position} is beyond the field size {self.field_size}")
        return self


class CardHorse(_Strict):
    """One declared runner."""

    horse_id: Identifier
    horse_name: Name
    draw: Position
    weight: Weight = Field(validation_alias=AliasChoices("weight", "carried_weight_lbs"))
    jockey: Identifier = Field(validation_alias=AliasChoices("jockey", "jockey_id"))
    trainer: Identifier = Field(validation_alias=AliasChoices("trainer", "trainer_id"))
    rating: Annotated[float, Field(ge=0, le=200)] | None = None
    horse_weight_lbs: Annotated[float, Field(ge=600, le=2000)] | None = None
    age: Annotated[int, Field(ge=1, le=20)] | None = None
    sex: Sex | None = None
    sire: Name | None = None
    dam: Name | None = None
    damsire: Name | None = None
    gear: Annotated[str, StringConstraints(max_length=40)] | None = None
    saddle_no: Position | None = None
    win_odds: Odds | None = None
    place_odds: Odds | None = None
    status: Literal["declared", "withdrawn"] = "declared"
    past_runs: Annotated[list[PastRun], Field(max_length=MAX_PAST_RUNS)] = []


class RaceCard(_Strict):
    """A race to predict: the race's conditions and its horses (at most 24)."""

    race_id: Identifier
    date: date
    track: Name
    distance: Distance = Field(validation_alias=AliasChoices("distance", "distance_m"))
    going: Going | None = None
    race_class: RaceClass | None = None
    race_no: Annotated[int, Field(ge=1, le=20)] | None = None
    off_time: Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")] | None = None
    surface: Surface = "turf"
    country: Annotated[str, StringConstraints(min_length=2, max_length=3)] = "HK"
    course_config: Annotated[str, StringConstraints(max_length=20)] | None = None
    rating_band: Annotated[str, StringConstraints(max_length=20)] | None = None
    prize: Annotated[float, Field(ge=0, le=1e9)] | None = None
    horses: Annotated[list[CardHorse], Field(min_length=1, max_length=MAX_RUNNERS)] = Field(
        validation_alias=AliasChoices("horses", "runners")
    )

    @model_validator(mode="after")
    def _consistent(self) -> RaceCard:
        problems: list[str] = []
        ids: dict[str, int] = {}
        draws: dict[int, int] = {}
        for i, horse in enumerate(self.horses):
            if horse.horse_id in ids:
                problems.append(f"horses[{i}].horse_id: horse {horse.horse_id!r} is also horses[{ids[horse.horse_id]}]")
            ids.setdefault(horse.horse_id, i)
            if horse.status == "declared":
                if horse.draw in draws:
                    problems.append(f"horses[{i}].draw: draw {horse.draw} is also given to horses[{draws[horse.draw]}]")
                draws.setdefault(horse.draw, i)
            for j, run in enumerate(horse.past_runs):
                if run.date >= self.date:
                    problems.append(
                        f"horses[{i}].past_runs[{j}].date: {run.date.isoformat()} is not before the race date "
                        f"{self.date.isoformat()}"
                    )
        if all(h.status == "withdrawn" for h in self.horses):
            problems.append("horses: every horse is withdrawn")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- conversions ---------------------------------------------------------------------------------
    @property
    def off(self) -> datetime:
        """The race's start: its date at ``off_time`` (midnight when the time is unknown)."""
        if self.off_time is None:
            return datetime.combine(self.date, time())
        hours, minutes = (int(x) for x in self.off_time.split(":"))
        return datetime.combine(self.date, time(hours, minutes))

    def declared(self) -> list[CardHorse]:
        return [h for h in self.horses if h.status == "declared"]

    def to_feature_card(self) -> dict[str, Any]:
        """The feature builder's card: {"race": {...}, "runners": [... with "past_runs"], "horses": [...]}."""
        race = {
            "race_id": self.race_id,
            "date": self.date.isoformat(),
            "track": self.track,
            "country": self.country,
            "race_no": self.race_no,
            "off_time": self.off_time,
            "distance_m": self.distance,
            "surface": self.surface,
            "going": self.going,
            "race_class": self.race_class,
            "rating_band": self.rating_band,
            "prize": self.prize,
            "course_config": self.course_config,
        }
        runners = []
        horses = []
        for h in self.horses:
            runners.append(
                {
                    "horse_id": h.horse_id,
                    "horse_name": h.horse_name,
                    "saddle_no": h.saddle_no,
                    "draw": h.draw,
                    "jockey_id": h.jockey,
                    "trainer_id": h.trainer,
                    "age": h.age,
                    "sex": h.sex,
                    "carried_weight_lbs": h.weight,
                    "horse_weight_lbs": h.horse_weight_lbs,
                    "rating": h.rating,
                    "gear": h.gear,
                    "win_odds": h.win_odds,
                    "place_odds": h.place_odds,
                    "status": h.status,
                    "past_runs": [past_run_row(r) for r in h.past_runs],
                }
            )
            if h.sire or h.dam or h.damsire or h.sex:
                horses.append(
                    {
                        "horse_id": h.horse_id,
                        "sire": h.sire,
                        "dam": h.dam,
                        "damsire": h.damsire,
                        "sex": h.sex,
                        "foaled_year": None if h.age is None else self.date.year - h.age,
                    }
                )
        return {"race": race, "runners": runners, "horses": horses}


def _present(value: Any) -> Any:
    """None for missing values (NaN, NA, NaT), plain Python scalars otherwise."""
    if value is None:
        return None
    try:
        if value != value:  # NaN and NaT
            return None
    except (TypeError, ValueError):  # pd.NA cannot be compared
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def card_from_results(
    race: Mapping[str, Any],
    runners: list[Mapping[str, Any]],
    horses: Mapping[str, Mapping[str, Any]] | None = None,
    odds: bool = True,
) -> RaceCard:
    """The card of a race given in the results vocabulary (a races row, its runners rows, horses by id).

    Results (positions, times, margins) are dropped: the card is the race as declared. Withdrawn runners are
    left out. ``odds`` keeps the win and place odds (the market, for comparison only).
    """
    horses = horses or {}
    when = _present(race.get("date"))
    entries = []
    for r in runners:
        if str(_present(r.get("status")) or "").lower() == "withdrawn":
            continue
        pedigree = horses.get(str(r["horse_id"]), {})
        entry = {
            "horse_id": r["horse_id"],
            "horse_name": r.get("horse_name"),
            "draw": r.get("draw"),
            "weight": r.get("carried_weight_lbs"),
            "jockey": r.get("jockey_id"),
            "trainer": r.get("trainer_id"),
            "rating": r.get("rating"),
            "horse_weight_lbs": r.get("horse_weight_lbs"),
            "age": r.get("age"),
            "sex": r.get("sex"),
            "gear": r.get("gear"),
            "saddle_no": r.get("saddle_no"),
            "sire": pedigree.get("sire"),
            "dam": pedigree.get("dam"),
            "damsire": pedigree.get("damsire"),
        }
        if odds:
            entry.update(win_odds=r.get("win_odds"), place_odds=r.get("place_odds"))
        entries.append({k: _present(v) for k, v in entry.items() if _present(v) is not None})
    fields = {
        "race_id": race.get("race_id"),
        "date": when.date() if isinstance(when, datetime) else when,
        "track": race.get("track"),
        "distance": race.get("distance_m"),
        "going": race.get("going"),
        "race_class": race.get("race_class"),
        "race_no": race.get("race_no"),
        "off_time": race.get("off_time"),
        "surface": race.get("surface"),
        "country": race.get("country"),
        "course_config": race.get("course_config"),
        "rating_band": race.get("rating_band"),
        "prize": race.get("prize"),
    }
    card = {k: _present(v) for k, v in fields.items() if _present(v) is not None}
    return parse_card({**card, "horses": entries})


def past_run_row(run: PastRun) -> dict[str, Any]:
    """A past run in the warehouse's vocabulary (missing race fields stay None: the card's race fills them)."""
    return {
        "date": run.date.isoformat(),
        "race_id": run.race_id,
        "track": run.track,
        "distance_m": run.distance,
        "going": run.going,
        "surface": run.surface,
        "race_class": run.race_class,
        "field_size": run.field_size,
        "finish_position": run.finish_position,
        "margin_lengths": run.margin_lengths,
        "finish_time_s": run.finish_time_s,
        "win_odds": run.win_odds,
        "carried_weight_lbs": run.weight,
        "draw": run.draw,
        "jockey_id": run.jockey,
        "trainer_id": run.trainer,
        "rating": run.rating,
    }


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "card"


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        message = str(err["msg"]).removeprefix("Value error, ")
        loc = tuple(err["loc"])
        if err["type"] == "value_error" and not loc:
            problems.extend(message.split("; "))  # the card-level checks name their own fields
            continue
        problems.append(f"{_where(loc)}: {message}")
    return problems


def parse_card(data: RaceCard | Mapping[str, Any]) -> RaceCard:
    """A validated RaceCard from a mapping: the flat seed form, or {"race": {...}, "runners": [...]}.

    Raises CardValidationError listing every problem with its field (``horses[3].draw: ...``).
    """
    if isinstance(data, RaceCard):
        return data
    if not isinstance(data, Mapping):
        raise CardValidationError([f"card: expected a JSON object, got {type(data).__name__}"])
    flat = dict(data)
    if isinstance(flat.get("race"), Mapping):
        # the nested form the feature builder and the API use: race fields beside the runners
        race = dict(flat.pop("race"))
        pedigree = {h.get("horse_id"): h for h in flat.pop("horses", None) or [] if isinstance(h, Mapping)}
        runners = flat.pop("runners", None)
        if isinstance(runners, list):
            merged = []
            for r in runners:
                if isinstance(r, Mapping):
                    extra = {
                        k: v
                        for k, v in pedigree.get(r.get("horse_id"), {}).items()
                        if k in ("sire", "dam", "damsire") and v is not None
                    }
                    merged.append({**extra, **r})
                else:
                    merged.append(r)
            runners = merged
        flat = {**race, **flat, "horses": runners}
        for key in ("section_distances_m", "source", "going_raw", "import_id"):
            flat.pop(key, None)
    try:
        return RaceCard.model_validate(flat)
    except ValidationError as exc:
        raise CardValidationError(_problems(exc)) from None


__all__ = [
    "MAX_PAST_RUNS",
    "MAX_RUNNERS",
    "CardHorse",
    "CardValidationError",
    "PastRun",
    "RaceCard",
    "card_from_results",
    "parse_card",
    "past_run_row",
]
