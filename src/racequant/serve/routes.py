"""The API's endpoints. No modelling here: the predictor, fusion, the backtest and the monitor do the work."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import pydantic_core
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from racequant.errors import RacequantError
from racequant.fusion.errors import FusionMismatchError, QualitativeValidationError
from racequant.monitor.drift import drift as drift_of_log
from racequant.monitor.drift import drift_thresholds
from racequant.monitor.metrics import daily_metrics
from racequant.serve.auth import ApiKey
from racequant.serve.errors import NotFoundError, ServiceUnavailableError, public_message
from racequant.serve.schemas import (
    BacktestJob,
    BacktestRequest,
    ErrorMessage,
    FeatureResponse,
    FusedRunner,
    FuseRequest,
    FuseResponse,
    Going,
    Health,
    Identifier,
    LoggedPrediction,
    ModelStatus,
    PredictionMetadata,
    PredictionRecord,
    PredictionResponse,
    RaceClass,
    RaceRequest,
    RacingDate,
    ResultsRequest,
    ResultsResponse,
    ShortText,
    Surface,
)
from racequant.serve.service import Service, get_service
from racequant.warehouse import prediction_log

logger = logging.getLogger(__name__)

T = TypeVar("T")
router = APIRouter()
ServiceDep = Annotated[Service, Depends(get_service)]

_ERR = {"model": ErrorMessage}
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {401: _ERR, 403: _ERR}
BODY_RESPONSES: dict[int | str, dict[str, Any]] = {413: _ERR}
LOG_TIMEOUT_S = 30.0


class _Unprocessable(RacequantError):
    """Input that passed the schema but not a later check (answered 422 naming the field)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _check_limits(body: RaceRequest, service: Service) -> None:
    settings = service.settings
    if len(body.horses) > settings.max_runners:
        raise _Unprocessable("horses", f"at most {settings.max_runners} runners per race, got {len(body.horses)}")
    for i, runner in enumerate(body.horses):
        if len(runner.past_runs) > settings.max_past_runs:
            raise _Unprocessable(
                f"horses.{i}.past_runs",
                f"at most {settings.max_past_runs} past runs per horse, got {len(runner.past_runs)}",
            )


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


async def _predict_then(body: RaceRequest, service: Service, finish: Callable[[list[dict[str, Any]]], T]) -> T:
    """``finish(records)`` of the card's raw records: the model and ``finish`` run on the model's worker threads
    (cards queued together share one model call), or inline for a predictor that says it is cheap."""
    if not getattr(service.predictor, "blocking", True):
        return finish(service.predictor.predict(body, body.as_of))
    if service.predict_pool is None:
        raw = await run_in_threadpool(service.predictor.predict, body, body.as_of)
        return finish(raw)
    return await asyncio.wrap_future(service.predict_pool.submit(body, body.as_of, finish))


def _shape(raw: list[dict[str, Any]], service: Service) -> tuple[list[PredictionRecord], list[Mapping[str, Any] | str]]:
    """The predictor's records as the output schema, and each runner's feature values (a mapping or its JSON)."""
    records, features = [], []
    for row in raw:
        row = dict(row)
        features.append(row.pop("_features", None) or {})
        row = {k: _finite_or_none(v) for k, v in row.items()}
        row.setdefault("model_version", service.predictor.model_version)
        row.setdefault("feature_version", service.predictor.feature_version)
        row.setdefault("prediction_timestamp", datetime.now(UTC))
        try:
            records.append(PredictionRecord.model_validate(row))
        except ValidationError:
            logger.exception("the predictor returned a record outside the output schema")
            raise
    return records, features


async def _predict(body: RaceRequest, service: Service) -> tuple[list[PredictionRecord], list[Mapping[str, Any] | str]]:
    """The card's records and feature values."""
    _check_limits(body, service)
    return await _predict_then(body, service, functools.partial(_shape, service=service))


@dataclass
class _Served:
    records: list[PredictionRecord]
    ids: list[str]
    latency_ms: float
    logged: Future[int]  # resolves once the log's journal holds the rows (DuckDB commits them later)
    queued_at: float


def _features_text(features: Mapping[str, Any] | str | None) -> str | None:
    """A runner's feature values as the log's JSON text (the model's predictor sends it encoded already)."""
    if isinstance(features, str):
        return features
    # pydantic's Rust encoder: the same JSON as json.dumps (NaN kept, dates ISO), ~8x faster on 140 features
    return pydantic_core.to_json(features, fallback=_json_default).decode() if features else None


def _log(body: RaceRequest, service: Service, started: float, raw: list[dict[str, Any]]) -> _Served:
    """On a worker thread, after the model: shape the records and queue their rows for the log (the caller
    waits until they are journaled)."""
    records, features = _shape(raw, service)
    latency_ms = (time.perf_counter() - started) * 1000.0
    now = datetime.now(UTC)
    request_id = uuid.uuid4().hex
    ids = [uuid.uuid4().hex for _ in records]
    rows = [
        {
            "prediction_id": pid,
            "request_id": request_id,
            "race_id": r.race_id,
            "horse_id": r.horse_id,
            "timestamp": now,
            "race_date": body.date,
            "win_prob": r.win_prob_base,
            "place_prob": r.place_prob_base,
            "win_prob_lower": r.win_prob_lower,
            "win_prob_upper": r.win_prob_upper,
            "place_prob_lower": r.place_prob_lower,
            "place_prob_upper": r.place_prob_upper,
            "model_version": r.model_version,
            "feature_version": r.feature_version,
            "calibration_group": r.calibration_group,
            "latency_ms": latency_ms,
            "features_json": _features_text(f),
        }
        for pid, r, f in zip(ids, records, features, strict=True)
    ]
    queued_at = time.perf_counter()
    try:
        logged = service.writer.insert_predictions(rows)
    except RacequantError as exc:  # a closed writer: answered 503 below, like a failed commit
        logged = Future()
        logged.set_exception(exc)
    return _Served(records, ids, latency_ms, logged, queued_at)


@router.post(
    "/api/v1/quantify", response_model=PredictionResponse, tags=["predictions"], responses={**BODY_RESPONSES, 503: _ERR}
)
async def quantify(body: RaceRequest, service: ServiceDep) -> Response:
    """Win and place probabilities of every declared runner, logged before they are sent."""
    started = time.perf_counter()
    _check_limits(body, service)
    served = await _predict_then(body, service, functools.partial(_log, body, service, started))
    records, ids, latency_ms = served.records, served.ids, served.latency_ms
    try:
        # acknowledged only once journaled: a prediction the client sees is a prediction the log keeps (the journal
        # survives a kill of the server and is replayed into the log at restart; DuckDB commits it off this path)
        if not served.logged.done():  # usually done already: the worker journaled the rows (no loop round trip)
            await asyncio.wait_for(asyncio.wrap_future(served.logged), LOG_TIMEOUT_S)
        served.logged.result()
    except (TimeoutError, RacequantError) as exc:
        logger.error("prediction log write failed: %s", exc)
        raise ServiceUnavailableError("The prediction log cannot store predictions now; nothing was served.") from exc
    service.metrics.log_write.observe(time.perf_counter() - served.queued_at)
    service.metrics.predictions.labels(service.predictor.model_version).inc(len(records))
    answer = PredictionResponse(
        race_id=body.race_id,
        predictions=records,
        metadata=PredictionMetadata(
            model_version=service.predictor.model_version,
            feature_version=service.predictor.feature_version,
            n_horses=len(records),
            latency_ms=round(latency_ms, 3),
            prediction_ids=ids,
        ),
    )
    # serialised once here (the records are validated already), not validated again by FastAPI
    return Response(answer.model_dump_json(), media_type="application/json")  # type: ignore[return-value]


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


@router.post(
    "/api/v1/fuse",
    response_model=FuseResponse,
    tags=["predictions"],
    responses={**AUTH_RESPONSES, **BODY_RESPONSES, 503: _ERR},
)
async def fuse(body: FuseRequest, service: ServiceDep, api_key: ApiKey) -> FuseResponse:
    """Submit qualitative records for a race card and get its fused probabilities (product fusion)."""
    records, _ = await _predict(body, service)
    quant = [r.model_dump() for r in records]
    try:
        fused = await run_in_threadpool(service.fuser, quant, list(body.qualitative))
    except (FusionMismatchError, QualitativeValidationError) as exc:
        raise _Unprocessable("qualitative", public_message(str(exc))) from exc
    submitted = [(q.race_id, q.horse_id, json.dumps(q.to_json_dict())) for q in body.qualitative]
    at = datetime.now(UTC)
    try:
        await asyncio.wait_for(
            asyncio.wrap_future(service.writer.submit(lambda c: prediction_log.insert_qualitative(c, submitted, at))),
            LOG_TIMEOUT_S,
        )
    except (TimeoutError, RacequantError) as exc:
        raise ServiceUnavailableError("The qualitative submission could not be stored; nothing was fused.") from exc
    keep = set(FusedRunner.model_fields)
    return FuseResponse(
        race_id=body.race_id,
        fused=[{k: v for k, v in row.items() if k in keep} for row in fused],  # type: ignore[misc]
        metadata={"model_version": service.predictor.model_version, "fusion_mode": "product", "n_horses": len(fused)},
    )


@router.get(
    "/api/v1/features/{horse_id}", response_model=FeatureResponse, tags=["features"], responses={404: _ERR, 503: _ERR}
)
async def features(
    horse_id: Identifier,
    service: ServiceDep,
    race_id: Annotated[Identifier | None, Query(description="A race in the warehouse.")] = None,
    date_: Annotated[RacingDate | None, Query(alias="date", description="Race context: the race date.")] = None,
    track: Annotated[ShortText | None, Query()] = None,
    distance_m: Annotated[int | None, Query(ge=800, le=5000)] = None,
    surface: Annotated[Surface | None, Query()] = None,
    going: Annotated[Going | None, Query()] = None,
    race_class: Annotated[RaceClass | None, Query()] = None,
    country: Annotated[str, Query(min_length=2, max_length=3)] = "HK",
) -> FeatureResponse:
    """The features of a horse in a stored race (race_id) or in a race described by its context."""
    if service.feature_lookup is None:
        raise ServiceUnavailableError("Feature lookup is not available: the server has no warehouse.")
    race: dict[str, Any] | None = None
    if race_id is None:
        context = {"date": date_, "track": track, "distance_m": distance_m, "surface": surface}
        missing = [k for k, v in context.items() if v is None]
        if missing:
            raise _Unprocessable(
                missing[0],
                "required when race_id is not given (give race_id or the race context: "
                "date, track, distance_m, surface)",
            )
        race = {**context, "going": going, "race_class": race_class, "country": country}
    found = await run_in_threadpool(service.feature_lookup, horse_id, race_id, race)
    return FeatureResponse.model_validate(found)


@router.get("/api/v1/model/status", response_model=ModelStatus, tags=["model"])
async def model_status(service: ServiceDep) -> ModelStatus:
    """The loaded model version: which of the six models are loaded, versions, feature count."""
    p = service.predictor
    loaded = dict(p.models_loaded)
    return ModelStatus(
        status="ok" if loaded and all(loaded.values()) else "degraded",
        model_version=p.model_version,
        feature_version=p.feature_version,
        feature_count=p.feature_count,
        models_loaded=loaded,
        loaded_at=service.loaded_at,
    )


@router.post(
    "/api/v1/backtest",
    response_model=BacktestJob,
    status_code=202,
    tags=["backtest"],
    responses={**AUTH_RESPONSES, **BODY_RESPONSES},
)
async def start_backtest(body: BacktestRequest, service: ServiceDep, api_key: ApiKey) -> BacktestJob:
    """Start a walk-forward backtest in the background; poll GET /api/v1/backtest/{job_id}."""
    return BacktestJob.model_validate(service.jobs.submit(body.model_dump(mode="json")))


@router.get("/api/v1/backtest/{job_id}", response_model=BacktestJob, tags=["backtest"], responses={404: _ERR})
async def backtest_job(job_id: Annotated[str, Path(max_length=64)], service: ServiceDep) -> BacktestJob:
    """A backtest job's state and, when done, its metrics."""
    return BacktestJob.model_validate(service.jobs.get(job_id))


@router.post(
    "/api/v1/results",
    response_model=ResultsResponse,
    tags=["monitoring"],
    responses={**AUTH_RESPONSES, **BODY_RESPONSES, 404: _ERR, 503: _ERR},
)
async def record_results(body: ResultsRequest, service: ServiceDep, api_key: ApiKey) -> ResultsResponse:
    """Record a race's outcome (every runner, so that the place terms are right); updates the logged predictions."""
    logged = await run_in_threadpool(service.writer.read, lambda c: prediction_log.logged_horses(c, body.race_id))
    if not logged:
        raise NotFoundError(f"race_id: no prediction was logged for race {body.race_id!r}.")
    for i, result in enumerate(body.results):
        if result.horse_id not in logged and result.status != "withdrawn":
            raise NotFoundError(
                f"results.{i}.horse_id: horse {result.horse_id!r} has no logged prediction in race {body.race_id!r}."
            )
    outcomes = [(r.horse_id, r.finish_position, r.status) for r in body.results]
    at = datetime.now(UTC)
    try:
        updated = await asyncio.wait_for(
            asyncio.wrap_future(
                service.writer.submit(lambda c: prediction_log.record_outcomes(c, body.race_id, outcomes, at))
            ),
            LOG_TIMEOUT_S,
        )
    except (TimeoutError, RacequantError) as exc:
        raise ServiceUnavailableError("The prediction log cannot store results now.") from exc
    return ResultsResponse(race_id=body.race_id, n_results=len(outcomes), predictions_updated=updated)


@router.get("/api/v1/monitoring/metrics", tags=["monitoring"])
async def monitoring_metrics(
    service: ServiceDep,
    day: Annotated[RacingDate | None, Query(alias="date", description="UTC day (default today).")] = None,
) -> dict[str, Any]:
    """The day's metrics of the served predictions: n, win and place AUC, Brier, ECE, mean latency."""
    day = day or datetime.now(UTC).date()
    return await run_in_threadpool(daily_metrics, service.writer, day, False)


@router.get("/api/v1/monitoring/drift", tags=["monitoring"])
async def monitoring_drift(
    service: ServiceDep,
    as_of: Annotated[RacingDate | None, Query(description="Last day of the recent window (default today).")] = None,
    recent_days: Annotated[int | None, Query(ge=1, le=365)] = None,
) -> dict[str, Any]:
    """Performance, feature (PSI) and interval-coverage drift of the served predictions."""
    s = service.settings
    return await run_in_threadpool(
        lambda: drift_of_log(
            service.writer,
            as_of=as_of,
            recent_days=recent_days or s.drift_recent_days,
            reference_features=service.reference_features,
            **drift_thresholds(s),
        )
    )


@router.get("/api/v1/monitoring/predictions", tags=["monitoring"], response_model=list[LoggedPrediction])
async def logged_predictions(
    service: ServiceDep,
    race_id: Annotated[Identifier | None, Query()] = None,
    day: Annotated[RacingDate | None, Query(alias="date", description="UTC day the predictions were served.")] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[dict[str, Any]]:
    """The prediction log (newest first), for the dashboard and audits."""
    return await run_in_threadpool(
        service.writer.read, lambda c: prediction_log.list_predictions(c, race_id, day, limit)
    )


@router.get("/healthz", response_model=Health, tags=["service"])
async def healthz(service: ServiceDep) -> Health:
    return Health(status="ok", model_version=service.predictor.model_version)


@router.get(
    "/metrics",
    tags=["service"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def prometheus_metrics(request: Request, service: ServiceDep) -> Response:
    return Response(service.metrics.render(), media_type=service.metrics.content_type)


def unprocessable_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, _Unprocessable)
    return JSONResponse(
        status_code=422,
        content={
            "detail": [
                {
                    "loc": ["body", *exc.field.split(".")],
                    "msg": f"{exc.field}: {exc.message}",
                    "type": "value_error",
                    "field": exc.field,
                }
            ]
        },
    )
