"""The racequant command line: parses options, calls the library, prints results. No modelling logic."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from datetime import date
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

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
logger = logging.getLogger("racequant.cli")

DbOption = Annotated[
    Path | None,
    typer.Option("--db", help="DuckDB warehouse file [default: $RACEQUANT_DB or ./racequant.duckdb]."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


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
        summary = build_and_store(conn, progress=lambda step: status.update(f"Building features: {step}"))
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


@app.command()
def demo(
    db: Annotated[Path, typer.Option("--db", help="Warehouse the demo builds.")] = Path("demo-output/demo.duckdb"),
    races: Annotated[int, typer.Option("--races", help="Races to simulate.")] = 3000,
    seed: Annotated[int, typer.Option("--seed", help="Simulator seed.")] = 7,
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's files.")] = Path("demo-output"),
) -> None:
    """The main job on the embedded simulator: simulate, import, and report every stage."""
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
        task = progress.add_task("1/2 Simulating race history", total=races)
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
    console.print(f"\nExplore it: {_command_name()} db info --db {db}")
    console.print(f"            {_command_name()} features list")


def main() -> None:
    """Console-script entry point: turns racequant's own errors into a clear message and exit code 1."""
    try:
        app()
    except RacequantError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        raise SystemExit(1) from None
