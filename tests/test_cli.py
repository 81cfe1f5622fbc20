"""The command line: the user's contract (options, exit codes, printed figures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_results_folder
from racequant.cli import app
from racequant.errors import ImportValidationError

runner = CliRunner()


def _invoke(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), env=env)


def test_ingest_then_db_info_json_reports_the_counts(tmp_path: Path) -> None:
    folder = write_results_folder(tmp_path / "res")
    db = tmp_path / "w.duckdb"
    result = _invoke("ingest", str(folder), "--format", "racequant", "--db", str(db), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["races_added"], summary["runners_written"]) == (3, 9)
    info = json.loads(_invoke("db", "info", "--db", str(db), "--json").stdout)
    assert (info["races"], info["runners"], info["horses"]) == (3, 9, 4)
    assert info["sources"][0]["source"] == "res"


def test_the_warehouse_path_comes_from_racequant_db_when_no_option_is_given(tmp_path: Path) -> None:
    folder = write_results_folder(tmp_path / "res")
    db = tmp_path / "from-env.duckdb"
    result = _invoke("ingest", str(folder), env={"RACEQUANT_DB": str(db)})
    assert result.exit_code == 0, result.output
    assert db.exists()


def test_skip_invalid_writes_the_rejects_file(invalid_racequant_dir: Path, tmp_path: Path) -> None:
    rejects = tmp_path / "rejects.csv"
    db = tmp_path / "w.duckdb"
    result = _invoke(
        "ingest", str(invalid_racequant_dir), "--skip-invalid", "--rejects", str(rejects), "--db", str(db), "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["races_added"] == 2
    assert "T-2" in rejects.read_text()


def test_an_invalid_import_raises_and_creates_no_races(invalid_racequant_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    result = _invoke("ingest", str(invalid_racequant_dir), "--db", str(db))
    assert isinstance(result.exception, ImportValidationError)
    assert "runners.csv, row 6, column 'status'" in str(result.exception)


def test_the_console_script_reports_errors_without_a_traceback(invalid_racequant_dir: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("racequant")
    done = subprocess.run(
        [str(script), "ingest", str(invalid_racequant_dir), "--db", str(tmp_path / "w.duckdb")],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert done.returncode == 1
    assert "runners.csv, row 6, column 'status'" in done.stderr
    assert "Traceback" not in done.stderr


def test_db_info_on_a_missing_warehouse_says_how_to_create_one(tmp_path: Path) -> None:
    result = _invoke("db", "info", "--db", str(tmp_path / "none.duckdb"))
    assert result.exit_code != 0
    assert "racequant ingest" in str(result.exception)


def test_simulate_writes_the_same_files_for_the_same_seed(tmp_path: Path) -> None:
    for out in ("a", "b"):
        result = _invoke("simulate", "--races", "60", "--seed", "3", "--out", str(tmp_path / out))
        assert result.exit_code == 0, result.output
    for name in ("races.csv", "runners.csv", "horses.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.slow
def test_demo_simulates_imports_and_reports(tmp_path: Path) -> None:
    db = tmp_path / "demo.duckdb"
    result = _invoke("demo", "--races", "400", "--db", str(db), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "1. Simulated" in result.stdout
    assert "2. Imported" in result.stdout
    assert "3. Built" in result.stdout
    info = json.loads(_invoke("db", "info", "--db", str(db), "--json").stdout)
    assert info["races"] == 400
    listed = json.loads(_invoke("features", "list", "--json").stdout)
    assert len(listed) >= 100
    some_runner = _invoke("features", "export", "--out", str(tmp_path / "f.parquet"), "--db", str(db), "--json")
    assert json.loads(some_runner.stdout)["rows"] > 4000
