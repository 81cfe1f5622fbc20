"""The API application: ``create_app(settings)`` builds it; its lifespan loads one model version and opens the log.

Nothing is loaded at import. Tests and the benchmark pass a small ``predictor``; ``racequant serve`` calls
``run_server(settings)``, which loads the registry version named by ``settings.model_version`` (default: latest).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from fastapi import FastAPI

from racequant.monitor.writer import LogWriter
from racequant.serve.batching import PredictionPool
from racequant.serve.errors import install_error_handlers
from racequant.serve.jobs import BacktestJobs, BacktestRunner
from racequant.serve.limits import BodySizeLimit
from racequant.serve.metrics import MetricsMiddleware, ServiceMetrics
from racequant.serve.predictor import Predictor
from racequant.serve.processes import ProcessPredictionPool, given_predictor
from racequant.serve.routes import _Unprocessable, router, unprocessable_handler
from racequant.serve.service import FeatureLookup, Fuser, Service
from racequant.settings import Settings

logger = logging.getLogger(__name__)

API_VERSION = "1.0.0"
_DEFAULT: Any = object()


def _default_fuser() -> Fuser:
    from racequant.fusion.fusion import fuse_records

    return functools.partial(fuse_records, mode="product")


def create_app(
    settings: Settings | None = None,
    predictor: Predictor | None = None,
    *,
    feature_lookup: FeatureLookup | None = _DEFAULT,
    backtest_runner: BacktestRunner | None = _DEFAULT,
    fuser: Fuser | None = None,
    reference_features: pd.DataFrame | None = _DEFAULT,
    predict_workers: int | None = None,
    predict_processes: int | None = None,
) -> FastAPI:
    """The racequant API. Without ``predictor`` the lifespan loads one from the registry (see ``load_predictor``);
    the other components default to the warehouse at ``settings.db`` (``None`` switches one off).

    ``predict_processes`` child processes run the model (default ``settings.predict_processes``; unset: see
    ``default_predict_processes`` for the registry model, none for a ``predictor`` passed in, which must then be
    picklable); with none, ``predict_workers`` threads do (default ``settings.predict_workers``, else the cores,
    at least 2). Either takes up to ``settings.predict_max_batch`` queued cards per model call."""
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from racequant.serve import components

        resources = ExitStack()
        loaded = predictor if predictor is not None else components.load_predictor(settings, resources)
        writer = LogWriter(settings.predlog_path(), fsync=settings.predlog_fsync).start()
        resources.callback(writer.close)
        runner = components.default_backtest_runner(settings) if backtest_runner is _DEFAULT else backtest_runner
        jobs = BacktestJobs(runner)
        resources.callback(jobs.close)
        lookup = components.default_feature_lookup(settings, loaded) if feature_lookup is _DEFAULT else feature_lookup
        reference = (
            components.reference_features(loaded, settings) if reference_features is _DEFAULT else reference_features
        )
        processes = predict_processes if predict_processes is not None else settings.predict_processes
        if processes is None:
            processes = default_predict_processes() if predictor is None else 0
        pool: PredictionPool | ProcessPredictionPool
        if processes > 0 and getattr(loaded, "blocking", True):
            source = (
                functools.partial(components.load_predictor, settings)
                if predictor is None
                else functools.partial(given_predictor, predictor)
            )
            # the children log like this process: at the level its racequant loggers were set to (the CLI's)
            level = logging.getLevelName(logging.getLogger("racequant").getEffectiveLevel())
            pool = ProcessPredictionPool(source, processes, settings.predict_max_batch, log_level=level)
        else:
            pool = PredictionPool(
                loaded,
                predict_workers or settings.predict_workers or default_predict_workers(),
                settings.predict_max_batch,
            )
        resources.callback(pool.close)
        metrics.model_info.labels(loaded.model_version, loaded.feature_version).set(1)
        app.state.service = Service(
            settings=settings,
            predictor=loaded,
            writer=writer,
            metrics=metrics,
            jobs=jobs,
            fuser=fuser or _default_fuser(),
            feature_lookup=lookup,
            reference_features=reference,
            loaded_at=datetime.now(UTC),
            predict_pool=pool,
        )
        logger.info("API ready: model %s, prediction log %s", loaded.model_version, settings.predlog_path())
        with resources:  # closes the jobs, then the log writer, then the warehouse connection
            yield

    app = FastAPI(
        title="racequant",
        version=API_VERSION,
        lifespan=lifespan,
        description="Calibrated win and place probabilities of horse races, beside the market.",
    )
    install_error_handlers(app)
    app.add_exception_handler(_Unprocessable, unprocessable_handler)
    app.include_router(router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def default_predict_workers() -> int:
    """Threads for the model: one per core (at least 2, so one card's I/O or native call overlaps another's)."""
    return max(2, os.cpu_count() or 1)


def default_predict_processes() -> int:
    """Model worker processes of the registry model when ``RACEQUANT_PREDICT_PROCESSES`` is unset: two on a machine
    with two cores or more, else none (the threads).

    Measured on 2 quiet cores (BENCHMARKS.md, 2026-11-27 10:55-11:04 UTC, HK model, 20 clients): two processes
    served 55.3 cards/s at saturation against 35.2 for the threads of one process (the GIL kept it on one core),
    and cut the open-loop p99 at 10 and 20 requests/s from 229 / 502 ms to 105 / 171 ms. More than two gave
    nothing more on two cores in the helper's runs; a bigger machine can set the variable."""
    return 2 if (os.cpu_count() or 1) >= 2 else 0


def run_server(settings: Settings | None = None, host: str | None = None, port: int | None = None) -> None:
    """Serve the API with uvicorn until interrupted (``racequant serve``)."""
    import uvicorn

    settings = settings or Settings()
    # the log writer thread hands each commit back to waiting requests; with the default 5 ms GIL switch
    # interval it waits that long for the event loop at every step, which dominated the latency under load
    sys.setswitchinterval(0.0005)
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
        loop="auto",
        http="auto",
    )  # uvloop and httptools when installed
