"""Request and response models of the API (requests strict and bounded; responses describe what is sent)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from racequant.fusion.schema import QualitativeRecord
from racequant.ingest.schema import GOINGS, RACE_CLASSES, SEXES

MAX_RUNNERS = 24
MAX_PAST_RUNS = 50
MAX_RESULTS = 40  # a result may list withdrawn runners beside the starters

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")]
# no leading or trailing blanks, so that what the schema admits is what the API accepts
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=80, pattern=r"^\S(?:.*\S)?$")]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
RacingDate = Annotated[date, Field(ge=date(1900, 1, 1), le=date(2199, 12, 31))]
Going = Literal[GOINGS]  # type: ignore[valid-type]
RaceClass = Literal[RACE_CLASSES]  # type: ignore[valid-type]
Sex = Literal[SEXES]  # type: ignore[valid-type]
Surface = Literal["turf", "dirt", "all_weather"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------------------- requests


class RaceInfo(_Strict):
    """The race being quantified."""

    race_id: Identifier
    date: RacingDate
    track: ShortText
    country: Annotated[str, StringConstraints(min_length=2, max_length=3)] = "HK"
    race_no: Annotated[int, Field(ge=1, le=20)] | None = None
    off_time: Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")] | None = None
    distance_m: Annotated[int, Field(ge=800, le=5000)]
    surface: Surface
    going: Going | None = None
    race_class: RaceClass | None = None
    rating_band: Annotated[str, StringConstraints(max_length=20)] | None = None
    prize: Annotated[float, Field(ge=0, le=1e9)] | None = None
    course_config: Annotated[str, StringConstraints(max_length=20)] | None = None


class PastRun(_Strict):
    """One earlier run of a horse, as the client knows it (the warehouse's own history is used first)."""

    race_id: Identifier | None = None
    date: RacingDate
    track: ShortText | None = None
    distance_m: Annotated[int, Field(ge=800, le=5000)] | None = None
    surface: Surface | None = None
    going: Going | None = None
    finish_position: Annotated[int, Field(ge=1, le=MAX_RUNNERS)] | None = None
    field_size: Annotated[int, Field(ge=1, le=MAX_RUNNERS)] | None = None
    margin_lengths: Annotated[float, Field(ge=0, le=200)] | None = None
    finish_time_s: Annotated[float, Field(gt=0, le=600)] | None = None
    win_odds: Annotated[float, Field(gt=1, le=10000)] | None = None


class Runner(_Strict):
    """One declared runner of the race card."""

    horse_id: Identifier
    horse_name: ShortText | None = None
    saddle_no: Annotated[int, Field(ge=1, le=MAX_RUNNERS)] | None = None
    draw: Annotated[int, Field(ge=1, le=MAX_RUNNERS)] | None = None
    jockey_id: Identifier | None = None
    trainer_id: Identifier | None = None
    age: Annotated[int, Field(ge=1, le=20)] | None = None
    sex: Sex | None = None
    carried_weight_lbs: Annotated[float, Field(ge=80, le=200)] | None = None
    horse_weight_lbs: Annotated[float, Field(ge=600, le=2000)] | None = None
    rating: Annotated[float, Field(ge=0, le=200)] | None = None
    gear: Annotated[str, StringConstraints(max_length=40)] | None = None
    win_odds: Annotated[float, Field(gt=1, le=10000)] | None = None
    place_odds: Annotated[float, Field(gt=1, le=10000)] | None = None
    status: Literal["declared", "withdrawn"] = "declared"
    sire: ShortText | None = None
    dam: ShortText | None = None
    damsire: ShortText | None = None
    past_runs: Annotated[list[PastRun], Field(max_length=MAX_PAST_RUNS)] = []


def _unique_horses(runners: list[Any], what: str) -> None:
    seen: set[str] = set()
    for i, runner in enumerate(runners):
        if runner.horse_id in seen:
            raise ValueError(f"{what}.{i}.horse_id: horse {runner.horse_id!r} is listed twice")
        seen.add(runner.horse_id)


class RaceRequest(_Strict):
    """A race card to quantify: the race, its runners (at most 24) and the moment the prediction is made."""

    race: RaceInfo
    runners: Annotated[list[Runner], Field(min_length=1, max_length=MAX_RUNNERS)]
    as_of: datetime | None = Field(
        default=None, description="Only history known at this moment is used (default: the race date)."
    )

    @model_validator(mode="after")
    def _check_runners(self) -> RaceRequest:
        _unique_horses(self.runners, "runners")
        if all(r.status == "withdrawn" for r in self.runners):
            raise ValueError("runners: every runner is withdrawn")
        return self

    def card(self) -> dict[str, Any]:
        """The race card the predictor takes: {race, runners, horses}."""
        race = self.race.model_dump()
        runners = [r.model_dump(exclude={"sire", "dam", "damsire"}) for r in self.runners]
        horses = [{"horse_id": r.horse_id, "sire": r.sire, "dam": r.dam, "damsire": r.damsire}
                  for r in self.runners if r.sire or r.dam or r.damsire]
        return {"race": race, "runners": runners, "horses": horses}


class FuseRequest(RaceRequest):
    """A race card and the qualitative records (likelihood ratios) of its runners."""

    qualitative: Annotated[list[QualitativeRecord], Field(min_length=1, max_length=MAX_RUNNERS)]

    @model_validator(mode="after")
    def _check_qualitative(self) -> FuseRequest:
        runners = {r.horse_id for r in self.runners}
        seen: set[str] = set()
        for i, record in enumerate(self.qualitative):
            if record.race_id != self.race.race_id:
                raise ValueError(f"qualitative.{i}.race_id: expected race {self.race.race_id}, got {record.race_id}")
            if record.horse_id not in runners:
                raise ValueError(f"qualitative.{i}.horse_id: horse {record.horse_id!r} is not a runner of the race")
            if record.horse_id in seen:
                raise ValueError(f"qualitative.{i}.horse_id: horse {record.horse_id!r} is listed twice")
            seen.add(record.horse_id)
        return self


class RaceResult(_Strict):
    horse_id: Identifier
    finish_position: Annotated[int, Field(ge=1, le=MAX_RESULTS)] | None = None
    status: Literal["finished", "withdrawn", "did_not_finish", "disqualified"] = "finished"

    @model_validator(mode="after")
    def _position_when_finished(self) -> RaceResult:
        if self.status == "finished" and self.finish_position is None:
            raise ValueError("finish_position: a finished runner needs its finish_position")
        if self.status != "finished" and self.finish_position is not None:
            raise ValueError(f"finish_position: a runner with status {self.status!r} has no finish_position")
        return self


class ResultsRequest(_Strict):
    """The outcome of one race, one record per runner."""

    race_id: Identifier
    results: Annotated[list[RaceResult], Field(min_length=1, max_length=MAX_RESULTS)]

    @model_validator(mode="after")
    def _unique(self) -> ResultsRequest:
        _unique_horses(self.results, "results")
        return self


class BacktestRequest(_Strict):
    """A walk-forward backtest between two dates."""

    start: RacingDate
    end: RacingDate
    train_window_days: Annotated[int, Field(ge=1, le=7300)] = 365
    test_window_days: Annotated[int, Field(ge=1, le=3650)] = 30
    retrain_every_days: Annotated[int, Field(ge=1, le=3650)] = 30

    @model_validator(mode="after")
    def _ordered(self) -> BacktestRequest:
        if self.end <= self.start:
            raise ValueError(f"end: must be after start ({self.start.isoformat()}), got {self.end.isoformat()}")
        return self


# ------------------------------------------------------------------------------------------------ responses


class TopFeature(BaseModel):
    feature: str
    importance: float


class PredictionRecord(BaseModel):
    """One runner in the quantitative output schema."""

    race_id: str
    horse_id: str
    horse_name: str | None = None
    win_prob_base: Probability
    place_prob_base: Probability | None = None
    win_prob_lower: Probability | None = None
    win_prob_upper: Probability | None = None
    place_prob_lower: Probability | None = None
    place_prob_upper: Probability | None = None
    catboost_win: Probability | None = None
    lightgbm_win: Probability | None = None
    xgboost_win: Probability | None = None
    top_features: list[TopFeature] = []
    speed_rating: float | None = None
    class_rating: float | None = None
    sectional_l200: float | None = None
    quant_triple_scenario: str | None = None
    model_version: str
    feature_version: str
    calibration_group: str | None = None
    prediction_timestamp: datetime


class PredictionMetadata(BaseModel):
    model_version: str
    feature_version: str
    n_horses: int
    latency_ms: float
    prediction_ids: list[str]


class PredictionResponse(BaseModel):
    race_id: str
    predictions: list[PredictionRecord]
    metadata: PredictionMetadata


class FusedRunner(BaseModel):
    """One runner's base and fused probabilities (product fusion: P_i proportional to P_base_i * LR_i)."""

    race_id: str
    horse_id: str
    horse_name: str | None = None
    win_prob_base: Probability
    place_prob_base: Probability | None = None
    lr_form_fitness: float
    lr_conditions: float
    lr_tactics: float
    lr_context: float
    lr_product: float
    win_prob_final: Probability
    place_prob_final: Probability
    win_prob_final_lower: Probability | None = None
    win_prob_final_upper: Probability | None = None
    place_prob_final_lower: Probability | None = None
    place_prob_final_upper: Probability | None = None
    fusion_mode: str


class FuseResponse(BaseModel):
    race_id: str
    fused: list[FusedRunner]
    metadata: dict[str, Any]


class FeatureResponse(BaseModel):
    horse_id: str
    race_id: str | None
    feature_version: str | None
    features: dict[str, Any]


class ModelStatus(BaseModel):
    status: Literal["ok", "degraded"]
    model_version: str
    feature_version: str
    feature_count: int
    models_loaded: dict[str, bool]
    loaded_at: datetime


class BacktestJob(BaseModel):
    job_id: str
    state: Literal["queued", "running", "done", "failed"]
    params: dict[str, Any]
    submitted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None


class ResultsResponse(BaseModel):
    race_id: str
    n_results: int
    predictions_updated: int


class LoggedPrediction(BaseModel):
    prediction_id: str
    request_id: str
    race_id: str
    horse_id: str
    timestamp: datetime
    race_date: date | None = None
    win_prob: float
    place_prob: float | None = None
    win_prob_lower: float | None = None
    win_prob_upper: float | None = None
    place_prob_lower: float | None = None
    place_prob_upper: float | None = None
    model_version: str
    feature_version: str | None = None
    calibration_group: str | None = None
    latency_ms: float
    finish_position: int | None = None
    won: bool | None = None
    placed: bool | None = None
    outcome_at: datetime | None = None


class Health(BaseModel):
    status: Literal["ok"]
    model_version: str


class ErrorMessage(BaseModel):
    detail: str
