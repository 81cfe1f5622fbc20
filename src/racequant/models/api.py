"""The functions ``racequant train`` and ``racequant predict`` (and the backtest) call: no CLI logic here."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from racequant.models.pipeline import RacePipeline, market_columns
from racequant.models.registry import latest_version, load_model, save_model

logger = logging.getLogger(__name__)


def fundamental_columns(frame: pd.DataFrame) -> list[str]:
    """The frame's fundamental feature columns per the feature manifest (never the market)."""
    from racequant.features.manifest import fundamental_specs

    names = [s.name for s in fundamental_specs() if s.name in frame.columns]
    return [c for c in names if c not in set(market_columns(names))]


def train_model(
    frame: pd.DataFrame,
    feature_columns: Sequence[str] | None = None,
    *,
    until: str | pd.Timestamp | None = None,
    models_dir: Path | str = "models",
    version: str | None = None,
    progress: Callable[[str], None] | None = None,
    **params: Any,
) -> tuple[Path, RacePipeline]:
    """Fit a RacePipeline on the runners of races before ``until`` and save it; returns (directory, pipeline).

    ``frame`` is the feature frame (race_id, horse_id, race_date, features...) joined with finish_position and
    the calibration group column (track). ``params`` go to RacePipeline.
    """
    from racequant.features.manifest import feature_version

    if until is not None:
        frame = frame[pd.to_datetime(frame["race_date"]) < pd.Timestamp(until)]
    columns = list(feature_columns) if feature_columns is not None else fundamental_columns(frame)
    params.setdefault("feature_manifest_hash", feature_version())
    pipeline = RacePipeline(**params).fit(frame, columns, progress=progress)
    directory = save_model(pipeline, models_dir, version)
    return directory, pipeline


def predict_runners(
    frame: pd.DataFrame, model: Path | str | RacePipeline | None = None, *, models_dir: Path | str = "models"
) -> pd.DataFrame:
    """Per-runner predictions of the given (latest by default) model for races after its calibration window."""
    if isinstance(model, RacePipeline):
        pipeline = model
    else:
        from racequant.features.manifest import feature_version

        directory = Path(model) if model is not None else latest_version(models_dir)
        pipeline = load_model(directory, feature_version(), list(frame.columns))
    return pipeline.predict(frame)
