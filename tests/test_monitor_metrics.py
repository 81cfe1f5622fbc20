"""Daily metrics and drift computed from the log: values match scikit-learn, drift flags fire when they should."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from racequant.monitor import daily_metrics, drift, psi
from racequant.monitor.drift import drift_report
from racequant.warehouse import prediction_log


def simulate_day(
    conn: object,
    day: date,
    n_races: int,
    rng: np.random.Generator,
    *,
    skill: float = 1.0,
    shift: float = 0.0,
    latency: float = 5.0,
) -> None:
    """Races of 10 runners whose winners follow the logged win probabilities (``skill`` 0: random winners)."""
    rows, outcomes = [], {}
    at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    for r in range(n_races):
        race_id = f"{day.isoformat()}-R{r}"
        strength = rng.normal(size=10)
        p = np.exp(strength) / np.exp(strength).sum()
        truth = np.exp(skill * strength) / np.exp(skill * strength).sum()
        order = rng.choice(10, size=10, replace=False, p=truth)
        for i in range(10):
            rows.append(
                {
                    "prediction_id": uuid.uuid4().hex,
                    "request_id": race_id,
                    "race_id": race_id,
                    "horse_id": f"H{i}",
                    "timestamp": at,
                    "race_date": day,
                    "win_prob": float(p[i]),
                    "place_prob": float(min(1, 3 * p[i])),
                    "win_prob_lower": float(p[i] * 0.7),
                    "win_prob_upper": float(p[i] * 1.3),
                    "place_prob_lower": None,
                    "place_prob_upper": None,
                    "model_version": "m",
                    "feature_version": "f",
                    "calibration_group": "ST",
                    "latency_ms": latency,
                    "features_json": json.dumps({"rating": float(rng.normal(shift))}),
                }
            )
        outcomes[race_id] = [(f"H{h}", pos + 1, "finished") for pos, h in enumerate(order)]
    prediction_log.insert_predictions(conn, rows)  # type: ignore[arg-type]
    prediction_log.record_many_outcomes(conn, outcomes, at)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("drift") / "w.predlog.duckdb"
    rng = np.random.default_rng(7)
    with prediction_log.open_log(path) as conn:
        prediction_log.begin(conn)
        for k in range(20):
            simulate_day(conn, date(2024, 1, 1) + timedelta(days=k), 40, rng)
        for k in range(20, 27):  # the last week: the model knows nothing and the features moved
            simulate_day(conn, date(2024, 1, 1) + timedelta(days=k), 40, rng, skill=0.0, shift=1.0, latency=700)
        prediction_log.commit(conn)
    return path


def test_daily_metrics_are_computed_in_full_and_match_sklearn(log_path: Path) -> None:
    day = date(2024, 1, 5)
    row = daily_metrics(log_path, day)  # stores the row too
    with prediction_log.open_log(log_path, read_only=True) as conn:
        frame = prediction_log.predictions_frame(conn, day, day)
        stored = prediction_log.daily_metrics_frame(conn)
    assert row["n_predictions"] == row["n_scored"] == 400 and row["n_races"] == 40
    assert row["win_auc"] == pytest.approx(roc_auc_score(frame["won"].astype(bool), frame["win_prob"]), abs=1e-6)
    assert row["win_brier"] == pytest.approx(brier_score_loss(frame["won"].astype(bool), frame["win_prob"]), abs=1e-6)
    assert row["place_auc"] is not None and row["win_ece"] is not None
    assert row["mean_latency_ms"] == pytest.approx(5.0)
    assert list(pd.to_datetime(stored["day"]).dt.date) == [day]


def test_daily_metrics_of_a_day_without_predictions_are_empty_not_an_error(log_path: Path) -> None:
    row = daily_metrics(log_path, "2023-06-01", store=False)
    assert row["n_predictions"] == 0 and row["win_auc"] is None and row["mean_latency_ms"] is None


def test_daily_metrics_accept_the_warehouse_path_and_find_the_log_beside_it(log_path: Path) -> None:
    warehouse = log_path.with_name("w.duckdb")
    assert daily_metrics(warehouse, "2024-01-02", store=False)["n_races"] == 40


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    assert psi(ref, rng.normal(size=5000)) < 0.02
    assert psi(ref, rng.normal(1.0, size=5000)) > 0.2
    assert psi(pd.Series(["a", "b"] * 100), pd.Series(["a"] * 150 + ["b"] * 50)) > 0.1


def test_drift_flags_the_lost_skill_the_moved_feature_and_not_a_quiet_history(log_path: Path) -> None:
    rng = np.random.default_rng(1)
    reference = pd.DataFrame({"rating": rng.normal(size=4000)})
    report = drift(log_path, as_of="2024-01-27", recent_days=7, reference_features=reference)
    perf = report["performance"]
    assert perf["historical"]["win_auc"] > 0.7 and perf["recent"]["win_auc"] < 0.6
    assert perf["auc_flag"] and report["features"]["drifted"] == ["rating"]
    assert "performance" in report["flags"] and "features" in report["flags"]

    quiet = drift(log_path, as_of="2024-01-15", recent_days=7, reference_features=reference)
    assert not quiet["performance"]["auc_flag"] and not quiet["features"]["flag"]


def test_interval_coverage_drift_flags_intervals_that_miss_the_observed_frequency() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    p = rng.uniform(0.02, 0.4, size=n)
    won = rng.uniform(size=n) < p
    frame = pd.DataFrame(
        {
            "race_id": np.arange(n) // 10,
            "horse_id": np.arange(n),
            "win_prob": p,
            "won": won,
            "place_prob": np.nan,
            "placed": np.nan,
            "timestamp": datetime(2024, 1, 1),
        }
    )
    wide = frame.assign(win_prob_lower=p * 0.7, win_prob_upper=p * 1.3)
    wrong = frame.assign(win_prob_lower=p * 1.5, win_prob_upper=p * 1.8)  # the intervals sit above the truth
    assert not drift_report(wide, as_of=date(2024, 1, 1))["interval_coverage"]["flag"]
    report = drift_report(wrong, as_of=date(2024, 1, 1))
    assert report["interval_coverage"]["flag"] and report["interval_coverage"]["recent"]["coverage"] < 0.5
