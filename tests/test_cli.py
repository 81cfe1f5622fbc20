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
from model_fixtures import TrainedModel, trained_model  # noqa: F401
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
    for step in ("4. Trained", "5. Predicted", "6. Fused", "7. Backtested"):
        assert step in result.stdout
    info = json.loads(_invoke("db", "info", "--db", str(db), "--json").stdout)
    assert info["races"] == 400
    listed = json.loads(_invoke("features", "list", "--json").stdout)
    assert len(listed) >= 100
    some_runner = _invoke("features", "export", "--out", str(tmp_path / "f.parquet"), "--db", str(db), "--json")
    assert json.loads(some_runner.stdout)["rows"] > 4000


# -- train, predict, fuse, qual import (the shared tiny model: tests/model_fixtures.py) -------------------


def _copy_warehouse(model: TrainedModel, tmp_path: Path) -> Path:
    import shutil

    db = tmp_path / "w.duckdb"
    shutil.copy(model.db, db)
    return db


def _card_file(model: TrainedModel, tmp_path: Path) -> Path:
    from racequant.warehouse import connect_read_only

    with connect_read_only(model.db) as conn:
        card = model.card(conn, model.held_out[-1])
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card))
    return path


def test_train_until_a_date_saves_a_version_trained_before_it(trained_model: TrainedModel, tmp_path: Path) -> None:  # noqa: F811
    db = _copy_warehouse(trained_model, tmp_path)
    until = trained_model.cut.isoformat()
    result = _invoke(
        "train",
        "--until",
        until,
        "--version",
        "v-test",
        "--models-dir",
        str(tmp_path / "m"),
        "--db",
        str(db),
        "--json",
        "--n-estimators",
        "60",
        "--learning-rate",
        "0.1",
        "--n-jobs",
        "1",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["version"] == "v-test"
    assert (tmp_path / "m" / "v-test" / "manifest.json").is_file()
    assert summary["training_window"]["end"] < until
    assert "winner_log_loss" in summary["validation_metrics"]["calibration_races_uncalibrated"]


def test_predict_prints_one_record_per_runner(trained_model: TrainedModel, tmp_path: Path) -> None:  # noqa: F811
    db = _copy_warehouse(trained_model, tmp_path)
    card = _card_file(trained_model, tmp_path)
    result = _invoke("predict", str(card), "--models-dir", str(trained_model.models_dir), "--db", str(db))
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert len(records) == len(json.loads(card.read_text())["horses"])
    assert sum(r["win_prob_base"] for r in records) == pytest.approx(1.0)
    assert {r["model_version"] for r in records} == {trained_model.version}


def test_predict_names_the_invalid_field(trained_model: TrainedModel, tmp_path: Path) -> None:  # noqa: F811
    card = _card_file(trained_model, tmp_path)
    data = json.loads(card.read_text())
    data["horses"][1]["weight"] = 20
    card.write_text(json.dumps(data))
    result = _invoke("predict", str(card), "--models-dir", str(trained_model.models_dir), "--db", str(tmp_path / "x"))
    assert "horses[1].weight" in str(result.exception)


def test_qual_import_then_fuse_a_card_with_the_model(trained_model: TrainedModel, tmp_path: Path) -> None:  # noqa: F811
    db = _copy_warehouse(trained_model, tmp_path)
    card = _card_file(trained_model, tmp_path)
    data = json.loads(card.read_text())
    qual = [
        {
            "race_id": data["race_id"],
            "horse_id": h["horse_id"],
            "horse_name": h["horse_name"],
            "lr_form_fitness": 2.0 if i == 0 else 1.0,
            "lr_conditions": 1.0,
            "lr_tactics": 1.0,
            "lr_context": 1.0,
            "lr_product": 2.0 if i == 0 else 1.0,
            "key_strengths": [],
            "key_concerns": [],
            "race_narrative": "A test narrative about pace, draw and conditions, long enough to pass the schema: "
            "the leaders are drawn wide and the rail should favour horses settling midfield on good turf.",
            "qualitative_confidence": 0.5,
            "model_chain": "test",
            "prediction_timestamp": "2020-01-01T00:00:00Z",
        }
        for i, h in enumerate(data["horses"])
    ]
    qual_file = tmp_path / "qual.json"
    qual_file.write_text(json.dumps(qual))
    imported = _invoke("qual", "import", str(qual_file), "--db", str(db), "--json")
    assert imported.exit_code == 0, imported.output
    result = _invoke(
        "fuse", str(card), "--qual", str(qual_file), "--models-dir", str(trained_model.models_dir), "--db", str(db)
    )
    assert result.exit_code == 0, result.output
    fused = json.loads(result.stdout)
    assert sum(r["win_prob_final"] for r in fused) == pytest.approx(1.0)
    assert fused[0]["win_prob_final"] > fused[0]["win_prob_base"]
    assert all(r["win_prob_final"] < r["win_prob_base"] for r in fused[1:])


@pytest.mark.slow
def test_backtest_writes_the_report_and_the_headline_beside_the_market(
    trained_model: TrainedModel,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import racequant.backtest.api as backtest_api

    seen: list[tuple[str, ...]] = []
    default_estimator = backtest_api.default_estimator

    def recording(**params: object) -> object:
        estimator = default_estimator(**params)
        seen.append(tuple(estimator.libraries))
        return estimator

    monkeypatch.setattr(backtest_api, "default_estimator", recording)
    db = _copy_warehouse(trained_model, tmp_path)
    out = tmp_path / "bt"
    first_day = trained_model.cut.isoformat()
    result = _invoke(
        "backtest",
        "--start",
        first_day,
        "--end",
        first_day,
        "--train-window-days",
        "120",
        "--test-window-days",
        "30",
        "--out",
        str(out),
        "--workers",
        "1",
        "--n-estimators",
        "40",
        "--libraries",
        "lightgbm,xgboost",
        "--db",
        str(db),
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert seen == [("lightgbm", "xgboost")]  # --libraries reached the per-fold pipeline
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["n_races"] >= 1
    assert 0 < metrics["market_pseudo_r2"] < 1  # the market is scored on the same races
    for name in ("metrics.json", "report.html", "predictions.parquet"):
        assert (out / name).is_file()


def test_backtest_refuses_an_unknown_library(tmp_path: Path) -> None:
    result = _invoke(
        "backtest",
        "--start",
        "2020-01-01",
        "--end",
        "2020-02-01",
        "--out",
        str(tmp_path / "bt"),
        "--libraries",
        "lightgbm,sklearn",
        "--db",
        str(tmp_path / "w.duckdb"),
    )
    assert result.exit_code != 0
    assert "--libraries" in result.output and "sklearn" in result.output


def test_backtest_refuses_workers_and_scheduler_together(tmp_path: Path) -> None:
    result = _invoke(
        "backtest",
        "--start",
        "2020-01-01",
        "--end",
        "2020-02-01",
        "--out",
        str(tmp_path / "bt"),
        "--workers",
        "2",
        "--scheduler",
        "tcp://127.0.0.1:8786",
        "--db",
        str(tmp_path / "w.duckdb"),
    )
    assert result.exit_code != 0
    assert "--workers" in result.output
