"""What a running API holds: settings, the loaded predictor, the log writer, metrics, jobs and helpers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from fastapi import Request

from racequant.monitor.writer import LogWriter
from racequant.serve.batching import PredictionPool
from racequant.serve.jobs import BacktestJobs
from racequant.serve.metrics import ServiceMetrics
from racequant.serve.predictor import Predictor
from racequant.serve.processes import ProcessPredictionPool
from racequant.settings import Settings

logger = logging.getLogger(__name__)

# (horse_id, race_id or None, race context or None) -> {horse_id, race_id, feature_version, features}
FeatureLookup = Callable[[str, str | None, dict[str, Any] | None], dict[str, Any]]
# (quantitative records, qualitative records) -> fused records
Fuser = Callable[[Sequence[dict[str, Any]], Sequence[Any]], list[dict[str, Any]]]


@dataclass
class Service:
    settings: Settings
    predictor: Predictor
    writer: LogWriter
    metrics: ServiceMetrics
    jobs: BacktestJobs
    fuser: Fuser
    feature_lookup: FeatureLookup | None
    reference_features: pd.DataFrame | None
    loaded_at: datetime
    # the model's worker processes, or threads: bounded near the cores (threads beyond them only queue on the
    # GIL, and a FIFO queue in front of them keeps the tail shorter than 40 threads time-slicing every request)
    predict_pool: PredictionPool | ProcessPredictionPool | None = None


async def get_service(request: Request) -> Service:
    # async: FastAPI runs a plain ``def`` dependency on its thread pool, a thread hop on every request
    return request.app.state.service
