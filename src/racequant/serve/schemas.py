"""Request and response models of the API (requests strict and bounded; responses describe what is sent)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from racequant.fusion.schema import QualitativeRecord
from racequant.ingest.schema import GOINGS, RACE_CLASSES
from racequant.models.card import MAX_RUNNERS, RaceCard

MAX_RESULTS = 40  # a result may list withdrawn runners beside the starters

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")]
# no leading or trailing blanks, so that what the schema admits is what the API accepts
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=80, pattern=r"^\S(?:.*\S)?$")]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
RacingDate = Annotated[date, Field(ge=date(1900, 1, 1), le=date(2199, 12, 31))]
Going = Literal[GOINGS]  # type: ignore[valid-type]
RaceClass = Literal[RACE_CLASSES]  # type: ignore[valid-type]
Surface = Literal["turf", "dirt", "all_weather"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------------------- requests


def _unique_horses(runners: list[Any], what: str) -> None:
    seen: set[str] = set()
    for i, runner in enumerate(runners):
        if runner.horse_id in seen:
            raise ValueError(f"{what}.{i}.horse_id: horse {runner.horse_id!r} is listed twice")
        seen.add(runner.horse_id)


class RaceRequest(RaceCard):
    """The seed's race request: a race card (race fields, ``horses`` with their declarations and optional
    ``past_runs``; see ``racequant.models.card``) and the moment the prediction is made."""

    date: RacingDate  # type: ignore[assignment]
    as_of: datetime | None = Field(
        default=None, description="Only history known at this moment is used (default: the race's off time)."
    )


def _check_qualitative(card: RaceRequest, qualitative: list[QualitativeRecord]) -> None:
    runners = {h.horse_id for h in card.horses}
    seen: set[str] = set()
    for i, record in enumerate(qualitative):
        if record.race_id != card.race_id:
            raise ValueError(f"qualitative.{i}.race_id: expected race {card.race_id}, got {record.race_id}")
        if record.horse_id not in runners:
            raise ValueError(f"qualitative.{i}.horse_id: horse {record.horse_id!r} is not a runner of the race")
        if record.horse_id in seen:
            raise ValueError(f"qualitative.{i}.horse_id: horse {record.horse_id!r} is listed twice")
        seen.add(record.horse_id)


class FuseRequest(RaceRequest):
    """A race card and the qualitative records (likelihood ratios) of its declared runners."""

    qualitative: Annotated[list[QualitativeRecord], Field(min_length=1, max_length=MAX_RUNNERS)]

    @model_validator(mode="after")
    def _qualitative_fits_the_card(self) -> FuseRequest:
        _check_qualitative(self, self.qualitative)
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
