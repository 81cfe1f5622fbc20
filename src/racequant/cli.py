"""The racequant command line: parses options, calls the library, prints results. No modelling logic."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from racequant.errors import RacequantError
from racequant.logging import configure_logging
from racequant.settings import Settings

app = typer.Typer(
    name="racequant",
    help="Calibrated win and place probabilities for horse races, always beside the market.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Inspect the warehouse.", no_args_is_help=True)
app.add_typer(db_app, name="db")
features_app = typer.Typer(help="Point-in-time features per runner.", no_args_is_help=True)
app.add_typer(features_app, name="features")
qual_app = typer.Typer(help="Qualitative likelihood ratios (analysts, LLM chains).", no_args_is_help=True)
app.add_typer(qual_app, name="qual")
monitor_app = typer.Typer(help="Monitoring of served predictions: daily metrics, drift, alerts.", no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
logger = logging.getLogger("racequant.cli")

DbOption = Annotated[
    Path | None,
    typer.Option("--db", help="DuckDB warehouse file [default: $RACEQUANT_DB or ./racequant.duckdb]."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
NEstimatorsOption = Annotated[
    int | None, typer.Option("--n-estimators", help="Most boosting rounds per booster [default: the tuned 1000].")
]
LearningRateOption = Annotated[
    float | None, typer.Option("--learning-rate", help="Boosting learning rate [default: the tuned 0.05].")
]
NJobsOption = Annotated[int | None, typer.Option("--n-jobs", help="Threads per booster [default: 2].")]
ModelsDirOption = Annotated[
    Path | None,
    typer.Option("--models-dir", help="Model registry folder [default: $RACEQUANT_MODELS_DIR or ./models]."),
]
ModelOption = Annotated[
    str | None, typer.Option("--model", help="Model version (a name under --models-dir, or a path) [default: latest].")
]
AsOfOption = Annotated[
    str | None,
    typer.Option("--as-of", help="Use only history known at this moment, YYYY-MM-DD[THH:MM] [default: the off time]."),
]
# modest boosters for the demo: the whole demo stays well under a few minutes on two cores
DEMO_PIPELINE_PARAMS: dict[str, Any] = {
    "n_estimators": 150,
    "learning_rate": 0.08,
    "max_depth": 5,
    "early_stopping_rounds": 30,
    "n_bootstrap": 40,
    "n_jobs": 1,
}
DEMO_HELD_OUT_DAYS = 60
DEMO_BACKTEST_DAYS = 60


def _booster_params(n_estimators: int | None, learning_rate: float | None, n_jobs: int | None) -> dict[str, Any]:
    """The booster options the user gave; the pipeline's tuned defaults stand for the rest."""
    given = {"n_estimators": n_estimators, "learning_rate": learning_rate, "n_jobs": n_jobs}
    return {name: value for name, value in given.items() if value is not None}


def _settings(db: Path | None) -> Settings:
    settings = Settings()
    if db is not None:
        settings = settings.model_copy(update={"db": db})
    return settings


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


def _command_name() -> str:
    """How the user can call racequant again: bare if it is on PATH, else the path they used."""
    return "racequant" if shutil.which("racequant") else sys.argv[0]


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


@app.callback()
def _root(
    log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")] = "WARNING",
) -> None:
    configure_logging(log_level)


@app.command()
def simulate(
    races: Annotated[int, typer.Option("--races", help="Number of races to simulate.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same files.")] = 0,
    out: Annotated[Path, typer.Option("--out", help="Folder to write races/runners/horses files into.")] = Path(
        "simulated"
    ),
    file_format: Annotated[str, typer.Option("--file-format", help="csv or parquet.")] = "csv",
    start_date: Annotated[str, typer.Option("--start-date", help="First race day, YYYY-MM-DD.")] = "2015-09-01",
) -> None:
    """Write a realistic synthetic race history in the racequant results format."""
    from racequant.ingest.simulator import simulate as run_simulation
    from racequant.ingest.simulator import write_results

    try:
        start = date.fromisoformat(start_date)
    except ValueError:
        raise typer.BadParameter(f"expected YYYY-MM-DD, got {start_date!r}", param_hint="--start-date") from None
    with _progress() as progress:
        task = progress.add_task("Simulating races", total=races)
        results = run_simulation(
            races, seed, start_date=start, progress=lambda done, total: progress.update(task, completed=done)
        )
        progress.update(task, completed=races)
    paths = write_results(results, out, file_format=file_format)  # type: ignore[arg-type]
    console.print(
        f"Simulated {len(results.races):,} races, {len(results.runners):,} runners, "
        f"{len(results.horses):,} horses (seed {seed}) into {out}: " + ", ".join(p.name for p in paths)
    )


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="Folder (or file) of results to import.")],
    fmt: Annotated[str, typer.Option("--format", help="hkjc-kaggle or racequant.")] = "racequant",
    source: Annotated[
        str | None, typer.Option("--source", help="Label of the data set [default: folder name].")
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Import the valid races and reject the invalid ones.")
    ] = False,
    rejects: Annotated[
        Path | None, typer.Option("--rejects", help="CSV file for the rejected rows and their reasons.")
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import race results into the warehouse, in one transaction."""
    from racequant.ingest import parse
    from racequant.ingest.validate import write_rejects
    from racequant.warehouse import connect
    from racequant.warehouse.load import load_results

    settings = _settings(db)
    if rejects is not None and not skip_invalid:
        raise typer.BadParameter("--rejects needs --skip-invalid", param_hint="--rejects")
    with err_console.status(f"Parsing {path} ({fmt})"):
        parsed = parse(path, fmt, source=source, skip_invalid=skip_invalid)
    for warning in parsed.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}")
    if skip_invalid and parsed.rejected_rows:
        if rejects is not None:
            write_rejects(parsed, rejects)
            err_console.print(f"{len(parsed.rejected_rows):,} rejected rows written to {rejects}")
        else:
            err_console.print(
                f"[yellow]{len(parsed.rejected_rows):,} rows rejected[/] (use --rejects FILE to keep them)"
            )
    with err_console.status(f"Loading into {settings.db}"), connect(settings.db) as conn:
        summary = load_results(conn, parsed, str(path))
    if as_json:
        _print_json(summary.as_dict())
    else:
        console.print(
            f"Imported {path} into {settings.db}: {summary.races_added:,} races added, "
            f"{summary.races_replaced:,} replaced, {summary.races_unchanged:,} unchanged, "
            f"{summary.runners_written:,} runners written, "
            f"{summary.horses_written:,} horses, {summary.rows_rejected:,} rows rejected."
        )


@db_app.command("info")
def db_info(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Counts of races, runners and horses, and the date range of each source."""
    from racequant.warehouse import connect_read_only
    from racequant.warehouse.queries import db_info as query_db_info

    settings = _settings(db)
    with connect_read_only(settings.db) as conn:
        info = query_db_info(conn)
    if as_json:
        _print_json(info)
        return
    console.print(
        f"Warehouse {settings.db} (schema v{info['schema_version']}, {info['imports']} imports): "
        f"{info['races']:,} races, {info['runners']:,} runners, {info['horses']:,} horses"
    )
    table = Table("source", "races", "runners", "horses", "first date", "last date")
    for row in info["sources"]:  # type: ignore[attr-defined]
        table.add_row(
            row["source"],
            f"{row['races']:,}",
            f"{row['runners']:,}",
            f"{row['horses']:,}",
            str(row["first_date"]),
            str(row["last_date"]),
        )
    console.print(table)


@features_app.command("build")
def features_build(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Build the point-in-time features of every race in the warehouse and store them."""
    from racequant.features.api import build_and_store
    from racequant.warehouse import connect

    settings = _settings(db)
    with err_console.status("Building features") as status, connect(settings.db) as conn:
        summary = build_and_store(
            conn,
            progress=lambda step: status.update(f"Building features: {step}"),
            memory_limit=settings.features_memory_limit,
        )
    if as_json:
        _print_json(summary)
    else:
        console.print(
            f"Built {summary['features']} features for {summary['rows']:,} runners in {summary['races']:,} "
            f"races (feature_version {summary['feature_version']}, mean coverage {summary['coverage_mean']:.1%}) "
            f"in {summary['seconds']:.1f} s."
        )


@features_app.command("list")
def features_list(as_json: JsonOption = False) -> None:
    """Every feature: name, category, description and the columns it reads."""
    from racequant.features.api import list_features

    specs = list_features()
    if as_json:
        _print_json(specs)
        return
    table = Table("name", "category", "description", "reads")
    for spec in specs:
        table.add_row(spec["name"], spec["category"], spec["description"], ", ".join(spec["columns_read"]))
    console.print(table)
    console.print(f"{len(specs)} features ({sum(s['fundamental'] for s in specs)} fundamental).")


@features_app.command("show")
def features_show(
    horse_id: Annotated[str, typer.Argument(help="Horse key as stored in the warehouse.")],
    race: Annotated[str, typer.Option("--race", help="Race key.")],
    db: DbOption = None,
) -> None:
    """The stored features of one runner in one race, as JSON."""
    from racequant.features.api import show
    from racequant.warehouse import connect_read_only

    with connect_read_only(_settings(db).db) as conn:
        _print_json(show(conn, horse_id, race))


@features_app.command("export")
def features_export(
    out: Annotated[Path, typer.Option("--out", help="File to write: .parquet (default) or .csv.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Export the stored features to Parquet (or CSV)."""
    from racequant.features.api import export
    from racequant.warehouse import connect_read_only

    with connect_read_only(_settings(db).db) as conn:
        summary = export(conn, out)
    if as_json:
        _print_json(summary)
    else:
        console.print(f"Wrote {summary['rows']:,} rows (feature_version {summary['feature_version']}) to {out}.")


def _parse_date(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"expected YYYY-MM-DD, got {value!r}", param_hint=option) from None


def _parse_as_of(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"expected YYYY-MM-DD or YYYY-MM-DDTHH:MM, got {value!r}", param_hint="--as-of"
        ) from None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise typer.BadParameter(f"no such file: {path}", param_hint=what) from None
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{path} is not valid JSON: {exc}", param_hint=what) from None


def _train_with_progress(frame: Any, until: date | None, models_dir: Path, version: str | None, **params: Any) -> Any:
    """train_model with a rich progress bar advancing per booster and per later stage."""
    from racequant.models.api import train_model
    from racequant.models.pipeline import RacePipeline

    steps = RacePipeline(**params).fit_steps()
    with _progress() as progress:
        task = progress.add_task("Training", total=steps)

        def step(message: str) -> None:
            progress.update(task, advance=1 if message != "done" else 0, description=message)
            if message == "done":
                progress.update(task, completed=steps, description="trained")

        return train_model(frame, until=until, models_dir=models_dir, version=version, progress=step, **params)


def _metrics_table(pipeline: Any) -> Table:
    metrics = pipeline.validation_metrics_
    table = Table("calibration races (held back from the boosters)", "value", title="Validation")
    for name, value in metrics["calibration_races_uncalibrated"].items():
        table.add_row(str(name), f"{value:.4f}" if isinstance(value, float) else str(value))
    for name, value in metrics["per_model_pseudo_r2"].items():
        table.add_row(f"pseudo R2 {name}", f"{value:.4f}")
    table.add_row("place method", str(metrics["place_method"]))
    table.add_row("blend weights", ", ".join(f"{k} {v:.2f}" for k, v in metrics["blend_weights"].items()))
    return table


@app.command()
def train(
    until: Annotated[
        str | None, typer.Option("--until", help="Train on races dated before this day, YYYY-MM-DD [default: all].")
    ] = None,
    version: Annotated[str | None, typer.Option("--version", help="Version name [default: a UTC timestamp].")] = None,
    models_dir: ModelsDirOption = None,
    n_estimators: NEstimatorsOption = None,
    learning_rate: LearningRateOption = None,
    n_jobs: NJobsOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train the six boosters, the blend, calibration and intervals on the stored features; save a version."""
    from racequant.features.api import build_and_store
    from racequant.models.training import stored_features_problem, training_frame
    from racequant.warehouse import connect

    settings = _settings(db)
    cutoff = _parse_date(until, "--until")
    directory = models_dir or settings.models_dir
    with connect(settings.db) as conn:
        problem = stored_features_problem(conn)
        if problem is not None:
            err_console.print(f"[yellow]Building the features first:[/] {problem}.")
            with err_console.status("Building features") as status:
                build_and_store(
                    conn,
                    progress=lambda step: status.update(f"Building features: {step}"),
                    memory_limit=settings.features_memory_limit,
                )
        frame = training_frame(conn, cutoff)
    if frame.empty:
        raise RacequantError(f"No races to train on{f' before {cutoff}' if cutoff else ''} in {settings.db}.")
    path, pipeline = _train_with_progress(
        frame, cutoff, directory, version, **_booster_params(n_estimators, learning_rate, n_jobs)
    )
    summary = {
        "version": path.name,
        "path": str(path),
        "training_window": pipeline.training_window_,
        "calibrated_until": pipeline.calibrated_until_,
        "validation_metrics": pipeline.validation_metrics_,
    }
    if as_json:
        _print_json(summary)
        return
    window = pipeline.training_window_
    console.print(
        f"Trained model [bold]{path.name}[/] on {sum(window['races'].values()):,} races "
        f"({window['start']} to {window['end']}; train {window['races']['train']:,}, validation "
        f"{window['races']['validation']:,}, calibration {window['races']['calibration']:,}), saved to {path}"
    )
    console.print(_metrics_table(pipeline))


@app.command()
def predict(
    card: Annotated[Path, typer.Argument(help="Race card JSON (see examples/README.md).")],
    model: ModelOption = None,
    models_dir: ModelsDirOption = None,
    as_of: AsOfOption = None,
    db: DbOption = None,
) -> None:
    """Win and place probabilities of every runner of a race card: the quantitative output schema, as JSON."""
    from racequant.models.card import parse_card
    from racequant.models.predictor import Predictor
    from racequant.warehouse import connect

    settings = _settings(db)
    race_card = parse_card(_read_json(card, "RACECARD"))
    predictor = Predictor.load(models_dir or settings.models_dir, model)
    with connect(settings.db) as conn:
        records = predictor.predict_card(conn, race_card, _parse_as_of(as_of))
    _print_json(records)


@qual_app.command("import")
def qual_import(
    file: Annotated[Path, typer.Argument(help='JSON list of qualitative records, or {"records": [...]}.')],
    source: Annotated[
        str | None, typer.Option("--source", help="Label of the submission [default: file name].")
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Validate a qualitative file whole and store it in the warehouse (nothing is stored if any record fails)."""
    from racequant.fusion.api import import_qualitative

    settings = _settings(db)
    summary = import_qualitative(settings.db, file, source)
    if as_json:
        _print_json(summary)
    else:
        console.print(f"Imported {file} into {settings.db}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))


@app.command()
def fuse(
    card: Annotated[Path, typer.Argument(help="Race card JSON, or the records of 'racequant predict'.")],
    qual: Annotated[Path, typer.Option("--qual", help="Qualitative records JSON of the card's runners.")],
    mode: Annotated[str, typer.Option("--mode", help="product or fitted.")] = "product",
    pool: Annotated[
        Path | None, typer.Option("--pool", help="Fitted pool (FittedFusion.save) for --mode fitted.")
    ] = None,
    model: ModelOption = None,
    models_dir: ModelsDirOption = None,
    as_of: AsOfOption = None,
    db: DbOption = None,
) -> None:
    """Fuse the model's probabilities with qualitative likelihood ratios; prints the fused records as JSON."""
    from racequant.fusion.api import fuse_card
    from racequant.fusion.errors import FusionParameterError
    from racequant.fusion.fusion import FittedFusion
    from racequant.fusion.schema import load_qualitative_file
    from racequant.models.card import parse_card
    from racequant.models.predictor import Predictor
    from racequant.warehouse import connect

    if mode not in ("product", "fitted"):
        raise typer.BadParameter(f"expected product or fitted, got {mode!r}", param_hint="--mode")
    settings = _settings(db)
    data = _read_json(card, "RACECARD")
    records = load_qualitative_file(qual)
    fitted = FittedFusion.load(pool) if pool is not None else None
    if mode == "fitted" and fitted is None:
        raise FusionParameterError("--mode fitted needs a fitted pool (--pool FILE, saved by FittedFusion.save).")
    if isinstance(data, list):  # the quantitative records themselves
        fused = fuse_card(data, records, mode=mode, pool=fitted)
    else:
        race_card = parse_card(data)
        predictor = Predictor.load(models_dir or settings.models_dir, model)
        when = _parse_as_of(as_of)
        with connect(settings.db) as conn:
            fused = fuse_card(
                race_card.to_feature_card(),
                records,
                mode=mode,
                pool=fitted,
                quantitative=lambda c: predictor.predict_card(conn, c, when),
            )
    _print_json(fused)


@app.command()
def backtest(
    start: Annotated[str, typer.Option("--start", help="First day of the first test window, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option("--end", help="Last day of the last test window, YYYY-MM-DD.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json, report.html, predictions.parquet.")],
    train_window_days: Annotated[int, typer.Option("--train-window-days", help="Days of history per fold.")] = 365,
    test_window_days: Annotated[int, typer.Option("--test-window-days", help="Days each fold predicts.")] = 30,
    retrain_every_days: Annotated[int, typer.Option("--retrain-every-days", help="Days between refits.")] = 30,
    expanding: Annotated[
        bool, typer.Option("--expanding", help="Train on all history before each fold, not the last window.")
    ] = False,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Local Dask worker processes [default: CPU count].")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="Address of an existing Dask scheduler, tcp://HOST:PORT.")
    ] = None,
    probabilities: Annotated[
        str, typer.Option("--bet-on", help="Probabilities the Kelly bets use: combined or fundamental.")
    ] = "combined",
    kelly_fraction: Annotated[float, typer.Option("--kelly-fraction", help="Fraction of full Kelly.")] = 0.25,
    libraries: Annotated[
        str | None,
        typer.Option(
            "--libraries",
            help="Boosters per fold, comma-separated from catboost, lightgbm, xgboost [default: lightgbm].",
        ),
    ] = None,
    n_estimators: NEstimatorsOption = None,
    learning_rate: LearningRateOption = None,
    n_jobs: NJobsOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Walk-forward backtest against the real odds: model, market and combined, Kelly staking, HTML report."""
    import os

    from racequant.backtest import BettingConfig, KellyStaking, WalkForwardSplit
    from racequant.backtest.api import backtest_from_warehouse, default_estimator, headline_text
    from racequant.warehouse import connect

    if workers is not None and scheduler is not None:
        raise typer.BadParameter("give --workers or --scheduler, not both", param_hint="--workers")
    first, last = _parse_date(start, "--start"), _parse_date(end, "--end")
    splitter = WalkForwardSplit(
        first,
        last,
        train_window_days=train_window_days,
        test_window_days=test_window_days,
        retrain_every_days=retrain_every_days,
        expanding=expanding,
    )
    if scheduler is None and workers is None:
        workers = os.cpu_count() or 1
    parallel = scheduler is not None or (workers or 1) > 1
    params = _booster_params(n_estimators, learning_rate, n_jobs)
    if parallel:  # worker processes share the cores: one thread per booster unless asked otherwise
        params.setdefault("n_jobs", 1)
    if libraries is not None:
        from racequant.models.boosters import LIBRARIES

        chosen = tuple(dict.fromkeys(x.strip().lower() for x in libraries.split(",") if x.strip()))
        unknown = [x for x in chosen if x not in LIBRARIES]
        if unknown or not chosen:
            raise typer.BadParameter(
                f"choose one or more of {', '.join(LIBRARIES)} (got {libraries!r})", param_hint="--libraries"
            )
        params["libraries"] = chosen
    estimator = default_estimator(**params)
    betting = BettingConfig(probabilities=probabilities, staking=KellyStaking(fraction=kelly_fraction))
    with _progress() as progress, connect(_settings(db).db) as conn:
        task = progress.add_task("Backtest folds", total=None)
        result, paths = backtest_from_warehouse(
            conn,
            out,
            splitter,
            estimator=estimator,
            betting=betting,
            workers=None if scheduler else workers,
            scheduler=scheduler,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if as_json:
        _print_json({"metrics": result.metrics, "paths": {k: str(v) for k, v in paths.items()}})
        return
    console.print(headline_text(result.metrics), markup=False, highlight=False)
    if not result.metrics.get("n_races_combined"):
        console.print(
            "The combined (model + market) row needs earlier out-of-sample folds to fit its second stage on: "
            "backtest a longer period to see it."
        )
    console.print(f"Report: {paths['report']}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on [default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port to listen on [default: 8001].")] = None,
    db: DbOption = None,
    models_dir: Annotated[Path | None, typer.Option("--models-dir", help="Model registry folder.")] = None,
) -> None:
    """Serve the API (FastAPI + uvicorn); every prediction is logged before it is answered."""
    from racequant.serve import run_server

    settings = _settings(db)
    if models_dir is not None:
        settings = settings.model_copy(update={"models_dir": models_dir})
    err_console.print(
        f"Serving on http://{host or settings.host}:{port or settings.port} (warehouse {settings.db}, "
        f"prediction log {settings.predlog_path()}); docs at /docs"
    )
    run_server(settings, host=host, port=port)


@monitor_app.command("daily")
def monitor_daily(
    day: Annotated[str, typer.Option("--date", help="UTC day, YYYY-MM-DD.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compute and store one day's metrics of the served predictions (n, AUC, Brier, ECE, latency)."""
    from racequant.monitor import daily_metrics

    settings = _settings(db)
    _parse_date(day, "--date")
    metrics = daily_metrics(settings.predlog_path(), day, store=True)
    if as_json:
        _print_json(metrics)
        return
    table = Table("metric", "value")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


@monitor_app.command("drift")
def monitor_drift(
    as_of: Annotated[str | None, typer.Option("--as-of", help="Last day counted, YYYY-MM-DD [default: today].")] = None,
    db: DbOption = None,
) -> None:
    """Performance, calibration, feature and interval-coverage drift of the served predictions (always JSON)."""
    from racequant.monitor.drift import drift, drift_thresholds

    settings = _settings(db)
    _parse_date(as_of, "--as-of")
    report = drift(
        settings.predlog_path(),
        as_of=as_of,
        recent_days=settings.drift_recent_days,
        **drift_thresholds(settings),
    )
    _print_json(report)  # the report is nested; JSON is its plain form too


@monitor_app.command("alerts")
def monitor_alerts(
    day: Annotated[str | None, typer.Option("--date", help="UTC day, YYYY-MM-DD [default: today].")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check the day's metrics and drift, send the alerts they call for (webhook, else the log)."""
    from racequant.monitor import check_and_alert

    settings = _settings(db)
    _parse_date(day, "--date")
    alerts = check_and_alert(settings.predlog_path(), settings, day=day)
    if as_json:
        _print_json(alerts)
    elif not alerts:
        console.print("No alerts.")
    else:
        for alert in alerts:
            delivered = "sent" if alert.get("delivered") else "logged only"
            console.print(f"[bold red]{alert['kind']}[/] ({delivered}): {alert['message']}")


@app.command()
def demo(
    db: Annotated[Path, typer.Option("--db", help="Warehouse the demo builds.")] = Path("demo-output/demo.duckdb"),
    races: Annotated[int, typer.Option("--races", help="Races to simulate.")] = 3000,
    seed: Annotated[int, typer.Option("--seed", help="Simulator seed.")] = 7,
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's files.")] = Path("demo-output"),
) -> None:
    """The main job on the embedded simulator: simulate, import, build features, train, predict, fuse."""
    import pandas as pd

    from racequant.features.api import build_and_store
    from racequant.ingest import parse
    from racequant.ingest.simulator import simulate as run_simulation
    from racequant.ingest.simulator import write_results
    from racequant.warehouse import connect
    from racequant.warehouse.load import load_results
    from racequant.warehouse.queries import db_info as query_db_info

    console.rule("[bold]racequant demo")
    data_dir = out / "simulated"
    with _progress() as progress:
        task = progress.add_task("1. Simulating race history", total=races)
        results = run_simulation(races, seed, progress=lambda done, total: progress.update(task, completed=done))
        progress.update(task, completed=races)
    write_results(results, data_dir)
    console.print(
        f"[bold]1. Simulated[/] {len(results.races):,} races, {len(results.runners):,} runners, "
        f"{len(results.horses):,} horses (seed {seed}) into {data_dir}"
    )
    if db.exists():
        db.unlink()
    parsed = parse(data_dir, "racequant", source="simulator")
    with connect(db) as conn:
        summary = load_results(conn, parsed, str(data_dir))
        info = query_db_info(conn)
    console.print(
        f"[bold]2. Imported[/] into {db}: {summary.races_added:,} races, {summary.runners_written:,} runners, "
        f"{summary.horses_written:,} horses; warehouse spans {info['sources'][0]['first_date']} to "  # type: ignore[index]
        f"{info['sources'][0]['last_date']}"  # type: ignore[index]
    )
    with err_console.status("3. Building point-in-time features"), connect(db) as conn:
        features = build_and_store(conn)
    console.print(
        f"[bold]3. Built[/] {features['features']} point-in-time features for {features['rows']:,} runners "
        f"(feature_version {features['feature_version']}, mean coverage {features['coverage_mean']:.1%}) "
        f"in {features['seconds']:.1f} s"
    )

    # 4. train on the history except the last race days, with modest boosters
    from racequant.models.training import training_frame

    days = sorted(results.races["date"].unique())
    held_out_days = min(DEMO_HELD_OUT_DAYS, max(len(days) // 5, 1))  # a short history keeps 4/5 for training
    cut = pd.Timestamp(days[-held_out_days]).date()
    models_dir = out / "models"
    if (models_dir / "demo").exists():
        shutil.rmtree(models_dir / "demo")
    with connect(db) as conn:
        frame = training_frame(conn, cut)
    path, pipeline = _train_with_progress(frame, cut, models_dir, "demo", **DEMO_PIPELINE_PARAMS)
    window = pipeline.training_window_
    metrics = pipeline.validation_metrics_["calibration_races_uncalibrated"]
    console.print(
        f"[bold]4. Trained[/] six boosters + blend + calibration on {sum(window['races'].values()):,} races "
        f"({window['start']} to {window['end']}), saved to {path}; on its "
        f"{window['races']['calibration']:,} calibration races: "
        + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
    )

    # 5. predict one held-out race through the one prediction path (the same the API and the CLI use)
    from racequant.models.card import card_from_results
    from racequant.models.predictor import Predictor

    predictor = Predictor.load(models_dir, "demo")
    declared = results.runners[results.runners["status"].astype(str) != "withdrawn"]
    sizes = declared.groupby("race_id", sort=False).size()
    held = results.races[results.races["date"] >= pd.Timestamp(cut)]
    race_id = next((r for r in held["race_id"] if sizes.get(r, 0) >= 10), str(held["race_id"].iloc[0]))
    race_card = card_from_results(
        results.races[results.races["race_id"] == race_id].iloc[0].to_dict(),
        results.runners[results.runners["race_id"] == race_id].to_dict("records"),
        results.horses.set_index("horse_id", drop=False).to_dict("index"),
    )
    with connect(db) as conn:
        records = predictor.predict_card(conn, race_card)
    table = Table(
        "horse",
        "win (90% interval)",
        "place",
        "market",
        "scenario",
        title=f"{race_id}: {race_card.track} {race_card.distance} m, class {race_card.race_class}",
    )
    for r in sorted(records, key=lambda r: -r["win_prob_base"]):
        table.add_row(
            str(r["horse_name"]),
            f"{r['win_prob_base']:.3f} ({r['win_prob_lower']:.3f}-{r['win_prob_upper']:.3f})",
            f"{r['place_prob_base']:.3f}",
            "-" if r.get("market_prob") is None else f"{r['market_prob']:.3f}",
            str(r["quant_triple_scenario"]),
        )
    console.print(
        f"[bold]5. Predicted[/] held-out race {race_id} ({race_card.date}) with model {predictor.model_version}:"
    )
    console.print(table)

    # 6. fuse it with (synthetic) qualitative likelihood ratios
    from racequant.fusion.api import demo_fuse_race

    fusion = demo_fuse_race(results, race_id=race_id, quant_records=records)
    table = Table(
        "horse",
        "LR",
        "win base",
        "win final",
        "place base",
        "place final",
        title="Product fusion: P_final proportional to P_base x LR",
    )
    for r in sorted(fusion["fused"], key=lambda r: -r["win_prob_final"]):
        table.add_row(
            str(r["horse_name"]),
            f"{r['lr_product']:.2f}",
            f"{r['win_prob_base']:.3f}",
            f"{r['win_prob_final']:.3f}",
            f"{r['place_prob_base']:.3f}",
            f"{r['place_prob_final']:.3f}",
        )
    console.print("[bold]6. Fused[/] the model's probabilities with synthetic analysts' likelihood ratios:")
    console.print(table)

    # 7. a short walk-forward backtest of the last days against the market, with Kelly staking on the real odds
    from racequant.backtest.api import demo_backtest, headline_text

    with _progress() as progress, connect(db) as conn:
        task = progress.add_task("7. Walk-forward backtest", total=None)
        bt, bt_paths = demo_backtest(
            conn,
            out / "backtest",
            test_days=DEMO_BACKTEST_DAYS,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    console.print(
        f"[bold]7. Backtested[/] {bt.metrics['n_races']:,} races walk-forward (fresh model per fold, the market "
        "beside it, second stage fitted on earlier folds only):"
    )
    console.print(headline_text(bt.metrics), markup=False, highlight=False)
    console.print(f"   Report: {bt_paths['report']}")

    console.print(f"\nExplore it: {_command_name()} db info --db {db}")
    console.print(f"            {_command_name()} features list")
    console.print(
        f"            {_command_name()} predict examples/card_warehouse_race.json --db {db} --models-dir {models_dir}"
    )
    console.print(
        f"Dashboard:  {_command_name()} dashboard --db {db} --models-dir {models_dir}   (then open http://localhost:8501)"
    )


@app.command()
def dashboard(
    port: Annotated[int, typer.Option("--port", help="Port the dashboard listens on.")] = 8501,
    host: Annotated[str, typer.Option("--host", help="Address the dashboard listens on.")] = "localhost",
    models_dir: ModelsDirOption = None,
    db: DbOption = None,
) -> None:
    """The Streamlit dashboard (race cards, backtests, monitoring, models), reading the warehouse read-only."""
    import os
    import subprocess

    from racequant.dashboard import APP_PATH

    settings = _settings(db)
    env = {
        **os.environ,
        "RACEQUANT_DB": str(Path(settings.db).resolve()),
        "RACEQUANT_MODELS_DIR": str(Path(models_dir or settings.models_dir).resolve()),
    }
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_PATH),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]
    err_console.print(
        f"Dashboard on http://{host}:{port} (warehouse {env['RACEQUANT_DB']}, "
        f"models {env['RACEQUANT_MODELS_DIR']}); Ctrl+C stops it."
    )
    try:
        raise typer.Exit(subprocess.call(command, env=env))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def main() -> None:
    """Console-script entry point: turns racequant's own errors into a clear message and exit code 1."""
    try:
        app()
    except RacequantError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        raise SystemExit(1) from None
