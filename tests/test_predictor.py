"""The one prediction path: race card -> features -> pipeline -> the quantitative output schema."""

from __future__ import annotations

import copy
import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from model_fixtures import TrainedModel, trained_model, training_frame  # noqa: F401
from racequant.calibration.isotonic import CalibrationOrderError
from racequant.models.card import MAX_RUNNERS, CardValidationError, parse_card
from racequant.models.predictor import OUTPUT_FIELDS, SIX_MODELS, Predictor, features_json
from racequant.models.registry import ArtifactNotFoundError, CorruptedArtifactError
from racequant.warehouse import connect_read_only

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def predictor(trained_model: TrainedModel) -> Predictor:  # noqa: F811
    return Predictor.load(trained_model.models_dir)


@pytest.fixture(scope="module")
def conn(trained_model: TrainedModel):  # type: ignore[no-untyped-def]  # noqa: F811
    with connect_read_only(trained_model.db) as c:
        yield c


@pytest.fixture(scope="module")
def race_card(trained_model: TrainedModel, conn) -> dict[str, Any]:  # type: ignore[no-untyped-def]  # noqa: F811
    return trained_model.card(conn, trained_model.held_out[-1])


def test_the_predictor_reports_its_version_and_six_boosters(predictor: Predictor, trained_model: TrainedModel) -> None:  # noqa: F811
    assert predictor.model_version == trained_model.version
    assert predictor.feature_count == len(predictor.pipeline.feature_columns_) > 100
    assert predictor.models_loaded == dict.fromkeys(SIX_MODELS, True)
    from racequant.features.manifest import feature_version

    assert predictor.feature_version == feature_version()


def test_every_runner_gets_every_field_of_the_output_schema(predictor: Predictor, conn, race_card) -> None:  # type: ignore[no-untyped-def]
    records = predictor.predict_card(conn, race_card)
    assert [r["horse_id"] for r in records] == [h["horse_id"] for h in race_card["horses"]]
    for r in records:
        assert set(OUTPUT_FIELDS) <= set(r), set(OUTPUT_FIELDS) - set(r)
        assert r["win_prob_lower"] <= r["win_prob_base"] <= r["win_prob_upper"]
        assert r["place_prob_lower"] <= r["place_prob_base"] <= r["place_prob_upper"]
        assert len(r["top_features"]) == 10
        assert set(r["top_features"][0]) == {"feature", "importance"}
        assert 0 < r["market_prob"] < 1
        assert r["model_version"] == predictor.model_version
        assert datetime.fromisoformat(r["prediction_timestamp"]).tzinfo is not None
    win, place = sum(r["win_prob_base"] for r in records), sum(r["place_prob_base"] for r in records)
    assert win == pytest.approx(1.0, abs=1e-9)
    assert place == pytest.approx(3.0 if len(records) >= 7 else 2.0, abs=1e-6)


def test_without_odds_there_is_no_market_prob(predictor: Predictor, trained_model: TrainedModel, conn) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    card = trained_model.card(conn, trained_model.held_out[-1], odds=False)
    assert all("market_prob" not in r for r in predictor.predict_card(conn, card))


def test_the_card_path_equals_the_bulk_pipeline_for_a_warehouse_race(
    predictor: Predictor,
    trained_model: TrainedModel,  # noqa: F811
    conn,  # type: ignore[no-untyped-def]
) -> None:
    race_id = trained_model.held_out[3]
    records = predictor.predict_card(conn, trained_model.card(conn, race_id))
    frame = training_frame(conn)
    bulk = predictor.pipeline.predict(frame[frame["race_id"] == race_id]).set_index("horse_id")
    for r in records:
        assert r["win_prob_base"] == pytest.approx(bulk.loc[r["horse_id"], "win_prob"], abs=1e-12)
        assert r["place_prob_base"] == pytest.approx(bulk.loc[r["horse_id"], "place_prob"], abs=1e-12)
        assert r["catboost_win"] == pytest.approx(bulk.loc[r["horse_id"], "catboost_win"], abs=1e-12)


def test_a_card_on_the_one_thread_path_gives_the_records_of_the_batch_path(
    predictor: Predictor,
    conn,  # type: ignore[no-untyped-def]
    race_card: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def records() -> tuple[list[dict[str, Any]], list[dict[str, float]]]:
        out = predictor.predict_card(conn, race_card, with_features=True)
        skip = ("prediction_timestamp", "top_features")
        tops = [{t["feature"]: t["importance"] for t in r["top_features"]} for r in out]
        return [{k: v for k, v in r.items() if k not in skip} for r in out], tops

    fast, fast_tops = records()
    monkeypatch.setattr("racequant.models.boosters.SMALL_BATCH_ROWS", 0)
    monkeypatch.setattr("racequant.models.pipeline.SMALL_BATCH_ROWS", 0)
    batch, batch_tops = records()
    assert batch == fast
    # the card's explanations come from leaf tables, the batch's from the libraries (XGBoost rounds to float32)
    assert all(len(top) == 10 for top in fast_tops)
    for mine, theirs in zip(fast_tops, batch_tops, strict=True):
        assert mine == pytest.approx(theirs, abs=2e-6)


def test_each_record_carries_its_runner_features_as_the_json_the_log_stores(
    predictor: Predictor,
    conn,  # type: ignore[no-untyped-def]
    race_card: dict[str, Any],
) -> None:
    out = predictor.predict_card(conn, race_card, with_features=True)
    frame = predictor.features(conn, race_card).set_index("horse_id")
    names = predictor.pipeline.feature_columns_
    for record in out:
        logged = json.loads(record["_features"])
        assert list(logged) == names
        for name in names:
            value = frame.at[record["horse_id"], name]
            if pd.isna(value):
                assert logged[name] is None, name
            else:
                assert logged[name] == (float(value) if isinstance(value, float | np.floating) else value), name


def test_features_json_writes_every_kind_of_value_as_json_reads_it_back() -> None:
    frame = pd.DataFrame(
        {
            "speed": [1.5, np.nan, np.inf, 1e16, -0.0, 1 / 3],
            'odd "name" 100%': pd.array(["x", None, 'q"u%s', "\u00e9\n", "a", "b"], dtype="str"),
            "count": [1, 2, 3, 4, 5, 6],
            "rating": pd.array([1, None, 3, 4, 5, 6], dtype="Int64"),
        }
    )
    names = ["rating", *frame.columns[:3]]
    texts = features_json(frame, names)
    expected = [
        {"rating": 1, "speed": 1.5, 'odd "name" 100%': "x", "count": 1},
        {"rating": None, "speed": None, 'odd "name" 100%': None, "count": 2},
        {"rating": 3, "speed": None, 'odd "name" 100%': 'q"u%s', "count": 3},
        {"rating": 4, "speed": 1e16, 'odd "name" 100%': "\u00e9\n", "count": 4},
        {"rating": 5, "speed": -0.0, 'odd "name" 100%': "a", "count": 5},
        {"rating": 6, "speed": 1 / 3, 'odd "name" 100%': "b", "count": 6},
    ]
    assert [json.loads(t) for t in texts] == expected
    assert [list(json.loads(t)) for t in texts] == [names] * 6  # the model's column order


def test_concurrent_cards_read_through_a_cursor_per_thread_and_give_the_serial_records(
    trained_model: TrainedModel,  # noqa: F811
) -> None:
    def plain(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "prediction_timestamp"} for r in records]

    with connect_read_only(trained_model.db) as own:
        cards = [trained_model.card(own, race_id) for race_id in trained_model.held_out[:6]]
        attached = Predictor.load(trained_model.models_dir).attach(own)
        serial = [plain(attached.predict(card)) for card in cards]
        with ThreadPoolExecutor(max_workers=4) as pool:
            parallel = [plain(r) for r in pool.map(attached.predict, cards * 3)]
        used = len(attached._cursors)
        attached.detach()
    assert parallel == serial * 3
    assert used > 1  # not one connection shared by every thread


def test_cards_predicted_together_get_the_records_of_each_card_alone(
    predictor: Predictor,
    trained_model: TrainedModel,  # noqa: F811
    conn,  # type: ignore[no-untyped-def]
) -> None:
    def plain(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "prediction_timestamp"} for r in records]

    cards = [trained_model.card(conn, race_id) for race_id in trained_model.held_out[:3]]
    cards.append(cards[0])  # the same race twice stays two races
    alone = [plain(predictor.predict_card(conn, card, with_features=True)) for card in cards]
    together = predictor.predict_cards(conn, [(card, None) for card in cards], with_features=True)
    assert [plain(r) for r in together] == alone


def test_a_race_inside_the_calibration_window_is_refused(
    predictor: Predictor,
    conn,  # type: ignore[no-untyped-def]
    trained_model: TrainedModel,  # noqa: F811
) -> None:
    first = conn.execute("SELECT race_id FROM races ORDER BY date DESC LIMIT 1 OFFSET 200").fetchall()[0][0]
    with pytest.raises(CalibrationOrderError):
        predictor.predict_card(conn, trained_model.card(conn, first))


def test_inline_past_runs_change_the_features_of_that_horse_only(predictor: Predictor, conn, race_card) -> None:  # type: ignore[no-untyped-def]
    card = copy.deepcopy(race_card)
    for h in card["horses"]:
        h["horse_id"] = "NEW-" + h["horse_id"]  # debutants to the warehouse
    before = predictor.features(conn, card).set_index("horse_id")
    first = card["horses"][0]
    first["past_runs"] = [
        {
            "date": "2015-12-01",
            "finish_position": 1,
            "field_size": 12,
            "finish_time_s": 70.2,
            "distance": 1200,
            "going": "GOOD",
            "race_class": "4",
        },
        {"date": "2015-12-20", "finish_position": 3, "field_size": 10, "margin_lengths": 1.5, "distance": 1400},
    ]
    after = predictor.features(conn, card).set_index("horse_id")
    changed = before.loc[first["horse_id"]].compare(after.loc[first["horse_id"]])
    assert {"runs_count", "wins_count", "days_since_last_run"} <= set(changed.index)
    assert after.loc[first["horse_id"], "runs_count"] == 2
    assert after.loc[first["horse_id"], "wins_count"] == 1
    other = card["horses"][1]["horse_id"]
    assert after.loc[other, "runs_count"] == before.loc[other, "runs_count"] == 0
    records = predictor.predict_card(conn, card)
    assert sum(r["win_prob_base"] for r in records) == pytest.approx(1.0)


def test_past_runs_the_warehouse_already_holds_are_not_counted_twice(predictor: Predictor, conn, race_card) -> None:  # type: ignore[no-untyped-def]
    horse = race_card["horses"][0]["horse_id"]
    dates = conn.execute(
        "SELECT r.date FROM runners u JOIN races r USING (race_id) WHERE u.horse_id = ? AND r.date < ?",
        [horse, race_card["date"]],
    ).fetchall()
    card = copy.deepcopy(race_card)
    card["horses"][0]["past_runs"] = [{"date": d[0].isoformat(), "finish_position": 1} for d in dates]
    a, b = predictor.features(conn, race_card), predictor.features(conn, card)
    pd.testing.assert_frame_equal(a, b)


def _example(name: str) -> dict[str, Any]:
    import json

    return json.loads((EXAMPLES / name).read_text())


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda c: c["horses"][3].update(draw=0), "horses[3].draw"),
        (lambda c: c["horses"][2].pop("jockey"), "horses[2].jockey"),
        (lambda c: c.update(distance=120), "distance"),
        (lambda c: c.update(going="MUDDY"), "going"),
        (lambda c: c["horses"][1].update(horse_id=c["horses"][0]["horse_id"]), "horses[1].horse_id"),
        (lambda c: c["horses"][0].update(past_runs=[{"date": "2030-01-01"}]), "horses[0].past_runs[0].date"),
        (lambda c: c["horses"][0].update(colour="bay"), "horses[0].colour"),
    ],
)
def test_an_invalid_card_is_refused_naming_the_field(race_card: dict[str, Any], edit: Any, field: str) -> None:
    card = copy.deepcopy(race_card)
    edit(card)
    with pytest.raises(CardValidationError, match=re.escape(f"- {field}")):
        parse_card(card)


def test_more_than_24_runners_are_refused(race_card: dict[str, Any]) -> None:
    card = copy.deepcopy(race_card)
    template = card["horses"][0]
    card["horses"] = [dict(template, horse_id=f"H{i}", draw=(i % 24) + 1) for i in range(MAX_RUNNERS + 1)]
    with pytest.raises(CardValidationError, match=re.escape("horses: List should have at most 24 items")):
        parse_card(card)


def test_too_many_past_runs_are_refused(race_card: dict[str, Any]) -> None:
    card = copy.deepcopy(race_card)
    card["horses"][0]["past_runs"] = [{"date": "2015-01-01"}] * 51
    with pytest.raises(CardValidationError, match=re.escape("horses[0].past_runs: List should have at most 50")):
        parse_card(card)


def test_the_nested_form_gives_the_same_card(race_card: dict[str, Any]) -> None:
    card = parse_card(race_card)
    again = parse_card(card.to_feature_card())
    assert again == card


def test_the_example_cards_are_valid() -> None:
    for name in ("card_warehouse_race.json", "card_inline_past_runs.json"):
        assert parse_card(_example(name)).race_id


def test_a_missing_or_corrupted_artifact_is_refused(trained_model: TrainedModel, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(ArtifactNotFoundError):
        Predictor.load(tmp_path / "none")
    copy_dir = tmp_path / "models"
    shutil.copytree(trained_model.models_dir, copy_dir)
    calibrators = copy_dir / trained_model.version / "calibrators.joblib"
    calibrators.write_bytes(calibrators.read_bytes()[:-10])
    with pytest.raises(CorruptedArtifactError, match=re.escape("calibrators.joblib")):
        Predictor.load(copy_dir, trained_model.version)


def test_as_of_before_the_race_hides_the_races_between(predictor: Predictor, conn, race_card) -> None:  # type: ignore[no-untyped-def]
    early = datetime.fromisoformat(race_card["date"]) - pd.Timedelta(days=30)
    a = predictor.features(conn, race_card)
    b = predictor.features(conn, race_card, as_of=early)
    assert not np.array_equal(a["runs_count"].to_numpy(), b["runs_count"].to_numpy())
