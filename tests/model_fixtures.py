"""A tiny trained model shared by the prediction, CLI and API tests (built once per test session).

Import the fixture into a test module (``from model_fixtures import trained_model``) and use it:

    def test_x(trained_model: TrainedModel) -> None:
        predictor = Predictor.load(trained_model.models_dir)
        with connect_read_only(trained_model.db) as conn:
            records = predictor.predict_card(conn, trained_model.card(conn, trained_model.held_out[0]))

The warehouse holds ~500 simulated races with their stored features and race-card state; the model (small
boosters, one thread each) is trained on every race day but the last ``HELD_OUT_DAYS``. The files are built
once under pytest's shared base temp folder, behind a file lock, so xdist workers reuse them. Open the
warehouse read-only, or copy it before writing.
"""

from __future__ import annotations

import fcntl
import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

N_RACES = 500
SEED = 11
HELD_OUT_DAYS = 8
VERSION = "fixture-v1"
# small, single-threaded boosters: seconds on a loaded two-core machine
TINY_PARAMS: dict[str, Any] = {
    "n_estimators": 60,
    "learning_rate": 0.1,
    "max_depth": 4,
    "early_stopping_rounds": 20,
    "n_bootstrap": 20,
    "n_jobs": 1,
}


@dataclass(frozen=True)
class TrainedModel:
    db: Path
    models_dir: Path
    version: str
    cut: date  # the first held-out race day: the model saw only races before it
    held_out: list[str]  # race ids of the held-out days, in start order

    def card(self, conn: duckdb.DuckDBPyConnection, race_id: str, odds: bool = True) -> dict[str, Any]:
        return card_from_warehouse(conn, race_id, odds=odds)


def _none(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def card_from_warehouse(conn: duckdb.DuckDBPyConnection, race_id: str, odds: bool = True) -> dict[str, Any]:
    """The race card (seed form) of a stored race: its conditions and declared runners, every field given."""
    race = conn.execute("SELECT * FROM races WHERE race_id = ?", [race_id]).df().iloc[0]
    runners = conn.execute(
        "SELECT u.*, h.sire, h.dam, h.damsire FROM runners u LEFT JOIN horses h USING (horse_id) "
        "WHERE race_id = ? AND status <> 'withdrawn' ORDER BY saddle_no",
        [race_id],
    ).df()
    horses = []
    for r in runners.to_dict("records"):
        horse = {
            "horse_id": r["horse_id"],
            "horse_name": r["horse_name"],
            "draw": _none(r["draw"]),
            "weight": _none(r["carried_weight_lbs"]),
            "jockey": r["jockey_id"],
            "trainer": r["trainer_id"],
            "rating": _none(r["rating"]),
            "horse_weight_lbs": _none(r["horse_weight_lbs"]),
            "age": _none(r["age"]),
            "sex": _none(r["sex"]),
            "gear": _none(r["gear"]),
            "saddle_no": _none(r["saddle_no"]),
        }
        if odds:
            horse["win_odds"] = _none(r["win_odds"])
            horse["place_odds"] = _none(r["place_odds"])
        horses.append({k: v for k, v in horse.items() if v is not None})
    card = {
        "race_id": race_id,
        "date": pd.Timestamp(race["date"]).date().isoformat(),
        "track": race["track"],
        "distance": int(race["distance_m"]),
        "going": _none(race["going"]),
        "race_class": _none(race["race_class"]),
        "race_no": _none(race["race_no"]),
        "off_time": _none(race["off_time"]),
        "surface": race["surface"],
        "country": race["country"],
        "course_config": _none(race["course_config"]),
        "rating_band": _none(race["rating_band"]),
        "prize": _none(race["prize"]),
        "horses": horses,
    }
    return {k: v for k, v in card.items() if v is not None}


def training_frame(conn: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Stored features joined with finish positions and track, as train_model takes them."""
    from racequant.warehouse.backtest_store import load_backtest_frame

    frame = load_backtest_frame(conn)
    frame["race_date"] = pd.to_datetime(frame["date"])
    return frame


def build_trained_model(root: Path) -> TrainedModel:
    from racequant.features.api import build_and_store
    from racequant.features.build import refresh_card_state
    from racequant.ingest import parse
    from racequant.ingest.simulator import simulate, write_results
    from racequant.models.api import train_model
    from racequant.warehouse import connect

    root.mkdir(parents=True, exist_ok=True)
    write_results(simulate(N_RACES, SEED), root / "simulated")
    db = root / "warehouse.duckdb"
    with connect(db) as conn:
        from racequant.warehouse.load import load_results

        load_results(conn, parse(root / "simulated", "racequant"), str(root / "simulated"))
        build_and_store(conn)
        refresh_card_state(conn)
        frame = training_frame(conn)
        days = sorted(frame["race_date"].unique())
        cut = pd.Timestamp(days[-HELD_OUT_DAYS])
        held = frame[frame["race_date"] >= cut].sort_values(["race_date", "race_no"])
        held_out = list(dict.fromkeys(held["race_id"]))
    train_model(frame, until=cut, models_dir=root / "models", version=VERSION, **TINY_PARAMS)
    model = TrainedModel(db, root / "models", VERSION, cut.date(), held_out)
    (root / "model.json").write_text(
        json.dumps({"cut": model.cut.isoformat(), "held_out": held_out, "version": VERSION})
    )
    return model


def shared_trained_model(base: Path) -> TrainedModel:
    """Build the model under ``base`` once (file-locked across xdist workers), or read the one built."""
    root = base / "racequant-trained-model"
    base.mkdir(parents=True, exist_ok=True)
    with (base / "racequant-trained-model.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            meta = root / "model.json"
            if not meta.is_file():
                return build_trained_model(root)
            info = json.loads(meta.read_text())
            return TrainedModel(
                root / "warehouse.duckdb",
                root / "models",
                info["version"],
                date.fromisoformat(info["cut"]),
                info["held_out"],
            )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    base = tmp_path_factory.getbasetemp()
    if base.name.startswith("popen-gw"):  # xdist: one level up is shared by every worker
        base = base.parent
    return shared_trained_model(base)
