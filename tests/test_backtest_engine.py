"""The backtest engine: fresh clones per fold, honest second stage, Dask equal to serial, outputs and store."""

from __future__ import annotations

import json
import re
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from backtest_helpers import priced_history
from racequant.backtest import (
    BacktestError,
    BacktestResult,
    BettingConfig,
    KellyStaking,
    WalkForwardSplit,
    run_backtest,
    store_result,
    write_outputs,
)
from racequant.backtest.engine import dispatch_order
from racequant.backtest.reference import ConditionalLogitPipeline
from racequant.errors import ConfigurationError
from racequant.warehouse.backtest_store import list_backtest_runs, read_backtest_predictions
from racequant.warehouse.connection import connect

FEATURES = ["f0", "f1", "f2", "f3"]
HEADLINE_KEYS = [
    "n_races",
    "win_auc",
    "place_auc",
    "win_brier",
    "place_brier",
    "win_logloss",
    "place_logloss",
    "ece",
    "winner_logloss_per_race",
    "pseudo_r2",
    "top_pick_strike_rate",
    "market_pseudo_r2",
    "market_winner_logloss_per_race",
    "favourite_strike_rate",
    "combined_pseudo_r2",
    "delta_r2",
    "delta_r2_ci_low",
    "delta_r2_ci_high",
    "roi_kelly_win",
    "roi_kelly_place",
    "roi_ci_low",
    "roi_ci_high",
    "n_bets",
    "interval_coverage_win",
]


def splitter(end: str = "2000-12-31") -> WalkForwardSplit:
    return WalkForwardSplit("2000-06-01", end, train_window_days=120, test_window_days=30, retrain_every_days=30)


def backtest(frame: pd.DataFrame, split: WalkForwardSplit | None = None, **kwargs: object) -> BacktestResult:
    args = {"feature_columns": FEATURES, "second_stage_min_races": 60, "n_bootstrap": 200, **kwargs}
    return run_backtest(frame, ConditionalLogitPipeline(), split or splitter(), **args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    return priced_history(n_races=1000, seed=3)


@pytest.fixture(scope="module")
def result(history: pd.DataFrame) -> BacktestResult:
    return backtest(history)


def test_every_test_race_is_predicted_once_by_the_fold_that_owns_its_day(result: BacktestResult) -> None:
    pred = result.predictions
    assert not pred.duplicated(["race_id", "horse_id"]).any()
    for fold in result.folds:
        days = pred.loc[pred["fold"] == fold.index, "date"].dt.date
        assert days.min() >= fold.test_start and days.max() <= fold.test_end
    sums = pred.groupby("race_id")["win_prob"].sum()
    np.testing.assert_allclose(sums, 1.0, atol=1e-9)


def test_the_second_stage_is_fitted_only_on_earlier_folds(result: BacktestResult) -> None:
    pred = result.predictions
    per_fold = result.metrics["second_stage"]["per_fold"]
    first = pred[pred["fold"] == 0]
    assert first["combined_prob"].isna().all() and per_fold[0]["a"] is None
    for row in per_fold[1:]:
        earlier = pred.loc[pred["fold"] < row["fold"], "race_id"].nunique()
        assert row["n_races_fitted"] == earlier
        if row["a"] is not None:
            assert (pred.loc[pred["fold"] == row["fold"], "combined_prob"].notna()).all()


def test_metrics_json_has_the_headline_keys_and_breakdowns(result: BacktestResult, tmp_path) -> None:
    paths = write_outputs(result, tmp_path / "bt")
    doc = json.loads(paths["metrics"].read_text())
    assert set(HEADLINE_KEYS) <= set(doc)
    assert doc["n_races"] == result.predictions["race_id"].nunique()
    assert doc["delta_r2_ci_low"] <= doc["delta_r2"] <= doc["delta_r2_ci_high"]
    assert set(doc["by_track"]) == {"HV", "ST"} and set(doc["by_class"]) == {"3", "4", "5"}
    assert len(doc["by_fold"]) == len(result.folds) == len(doc["folds"])
    html = paths["report"].read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "http://" not in html and "https://" not in html  # self-contained
    assert "market (odds)" in html and "combined (model + market)" in html
    back = pd.read_parquet(paths["predictions"])
    assert len(back) == len(result.predictions)


def test_model_and_market_both_carry_signal_on_the_test_races(result: BacktestResult) -> None:
    m = result.metrics
    assert m["pseudo_r2"] > 0.05 and m["market_pseudo_r2"] > 0.05
    assert 0.2 < m["favourite_strike_rate"] < 0.6
    assert m["n_bets"] > 0 and np.isfinite(m["roi_kelly_win"])


def test_each_source_bets_win_and_place_from_the_one_bankroll_it_reports(result: BacktestResult) -> None:
    pred = result.predictions  # in start order, as the bankroll walks
    kelly = KellyStaking()
    for src, col in (("fundamental", "win_prob"), ("combined", "combined_prob")):
        curve = result.bankroll.set_index("race_id")[f"bankroll_{src}"]
        profit = (
            pred[f"return_win_{src}"]
            - pred[f"stake_win_{src}"]
            + pred[f"return_place_{src}"]
            - pred[f"stake_place_{src}"]
        )
        assert curve.iloc[-1] == pytest.approx(1.0 + profit.sum(), rel=1e-9)
        assert result.metrics[f"final_bankroll_{src}"] == pytest.approx(curve.iloc[-1], rel=1e-12)
        # race by race: the reported bankroll moves by exactly the race's win and place profit ...
        by_race = profit.groupby(pred["race_id"], sort=False).sum().reindex(curve.index)
        before = pd.Series(np.r_[1.0, curve.to_numpy()[:-1]], index=curve.index)
        np.testing.assert_allclose(curve.to_numpy(), (before + by_race).to_numpy(), rtol=1e-9)
        # ... and every stake, win or place, is its Kelly fraction of that bankroll before the race
        checked = {"win": 0, "place": 0}
        for race_id, race in pred.groupby("race_id", sort=False):
            p = race[col].to_numpy(dtype=float)
            if race[f"stake_win_{src}"].gt(0).any():
                f = kelly.win_fractions(np.where(np.isfinite(p), p, 0.0), race["win_odds"].to_numpy())
                np.testing.assert_allclose(race[f"stake_win_{src}"], f * before[race_id], rtol=1e-9)
                checked["win"] += 1
            if race[f"stake_place_{src}"].gt(0).any():
                f = kelly.place_fractions(race["place_prob"].to_numpy(), race["place_odds"].to_numpy())
                np.testing.assert_allclose(race[f"stake_place_{src}"], f * before[race_id], rtol=1e-9)
                checked["place"] += 1
        assert checked["win"] > 0 and checked["place"] > 0, (src, checked)


def test_the_headline_roi_is_the_whole_betting_run_with_its_interval(result: BacktestResult) -> None:
    pred, m = result.predictions, result.metrics
    rows = {r["row"]: r for r in result.headline}
    for src, row in (("fundamental", "model (fundamental)"), ("combined", "combined (model + market)")):
        stakes = pred[f"stake_win_{src}"] + pred[f"stake_place_{src}"]
        returns = pred[f"return_win_{src}"] + pred[f"return_place_{src}"]
        roi = (returns.sum() - stakes.sum()) / stakes.sum()
        assert m[f"roi_kelly_{src}"] == pytest.approx(roi, rel=1e-9)
        assert rows[row]["roi_kelly"] == m[f"roi_kelly_{src}"]
        lo, hi = rows[row]["roi_ci"]
        assert lo < roi < hi
        assert rows[row]["n_bets"] == int((pred[f"stake_win_{src}"] > 0).sum() + (pred[f"stake_place_{src}"] > 0).sum())
    assert m["roi_kelly"] == m["roi_kelly_combined"] and m["roi_kelly_ci_low"] == m["roi_kelly_combined_ci_low"]


class SpyPipeline(ConditionalLogitPipeline):
    """Records what each fitted copy saw (serial runs only)."""

    # the fitted copies themselves, kept alive so that their ids stay distinct (a freed object's id is reused)
    seen: ClassVar[list[tuple[SpyPipeline, list[str]]]] = []

    def fit(self, frame: pd.DataFrame, feature_columns: list[str]) -> SpyPipeline:  # type: ignore[override]
        SpyPipeline.seen.append((self, list(frame.columns)))
        assert not hasattr(self, "coef_"), "a fold was given an already fitted estimator"
        return super().fit(frame, feature_columns)


def test_each_fold_fits_a_fresh_clone_that_never_sees_the_market(history: pd.DataFrame) -> None:
    SpyPipeline.seen.clear()
    estimator = SpyPipeline()
    res = run_backtest(history, estimator, splitter("2000-09-30"), feature_columns=FEATURES, n_bootstrap=0)
    assert not hasattr(estimator, "coef_")
    assert len(SpyPipeline.seen) == len(res.folds) == len({id(copy) for copy, _ in SpyPipeline.seen})
    assert all(copy is not estimator for copy, _ in SpyPipeline.seen)
    for _, columns in SpyPipeline.seen:
        assert not {"win_odds", "place_odds", "true_win_prob"} & set(columns) - {"true_win_prob"}
        assert "win_odds" not in columns and "place_odds" not in columns


def test_deleting_every_result_after_a_date_leaves_earlier_folds_identical(
    history: pd.DataFrame, result: BacktestResult
) -> None:
    cut = pd.Timestamp("2000-10-10")
    short = backtest(history[history["date"] <= cut])
    done = [f.index for f in result.folds if pd.Timestamp(f.test_end) <= cut]
    assert done and short.folds[: len(done)] == result.folds[: len(done)]
    cols = [
        "race_id",
        "horse_id",
        "fold",
        "win_prob",
        "place_prob",
        "combined_prob",
        "market_recal_prob",
        "stake_win_combined",
        "stake_place_fundamental",
    ]
    a = result.predictions.loc[result.predictions["fold"].isin(done), cols].sort_values(["race_id", "horse_id"])
    b = short.predictions.loc[short.predictions["fold"].isin(done), cols].sort_values(["race_id", "horse_id"])
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True)


def test_a_cluster_starts_the_folds_with_the_most_training_runners_first(history: pd.DataFrame) -> None:
    frame = history.sort_values("date", kind="stable").reset_index(drop=True)
    expanding = WalkForwardSplit("2000-06-01", "2000-10-31", test_window_days=30, expanding=True).split(frame)
    order = dispatch_order(frame, expanding)
    assert order == list(range(len(expanding)))[::-1]  # each expanding window holds the one before it
    sizes = [int(expanding[i].train_mask(frame["date"]).sum()) for i in order]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    rolling = splitter("2000-10-31").split(frame)
    rolling_sizes = [int(f.train_mask(frame["date"]).sum()) for f in rolling]
    assert [rolling_sizes[i] for i in dispatch_order(frame, rolling)] == sorted(rolling_sizes, reverse=True)


@pytest.mark.slow
def test_a_dask_run_on_two_worker_processes_equals_the_serial_run(history: pd.DataFrame) -> None:
    # expanding windows: the cluster starts the folds in another order than theirs (largest first)
    split = WalkForwardSplit("2000-06-01", "2000-08-31", test_window_days=30, expanding=True)
    serial = backtest(history, split=split)
    ticks: list[tuple[int, int]] = []
    parallel = backtest(history, split=split, workers=2, progress=lambda done, total: ticks.append((done, total)))
    assert ticks[-1] == (len(serial.folds), len(serial.folds))
    pd.testing.assert_frame_equal(serial.predictions, parallel.predictions, check_exact=True)
    for key in ("pseudo_r2", "combined_pseudo_r2", "delta_r2", "roi_kelly_win", "n_bets"):
        assert serial.metrics[key] == parallel.metrics[key] or (
            np.isnan(serial.metrics[key]) and np.isnan(parallel.metrics[key])
        )


def test_the_run_is_stored_in_the_warehouse(result: BacktestResult, tmp_path) -> None:
    with connect(tmp_path / "w.duckdb") as conn:
        run_id = store_result(conn, result)
        runs = list_backtest_runs(conn)
        stored = read_backtest_predictions(conn, run_id)
        folds = conn.execute("SELECT count(*) FROM backtest_folds WHERE run_id = ?", [run_id]).fetchall()[0][0]
    assert runs[0]["run_id"] == run_id and runs[0]["pseudo_r2"] == pytest.approx(result.metrics["pseudo_r2"])
    assert len(stored) == len(result.predictions) and folds == len(result.folds)
    np.testing.assert_allclose(stored["stake_win"].sum(), result.predictions["stake_win_combined"].sum())


def test_fundamental_betting_uses_the_model_alone(history: pd.DataFrame) -> None:
    res = backtest(history, split=splitter("2000-08-31"), betting=BettingConfig(probabilities="fundamental"))
    assert res.metrics["roi_kelly_win"] == res.metrics["roi_kelly_win_fundamental"]
    assert res.metrics["roi_kelly"] == res.metrics["roi_kelly_fundamental"]
    assert res.metrics["n_bets"] == res.metrics["n_bets_win_fundamental"] + res.metrics["n_bets_place_fundamental"]


def test_a_market_column_offered_as_a_feature_is_refused(history: pd.DataFrame) -> None:
    with pytest.raises(BacktestError, match=re.escape("The market is never a model input")):
        run_backtest(history, ConditionalLogitPipeline(), splitter(), feature_columns=[*FEATURES, "win_odds"])


def test_an_estimator_cutting_other_slices_than_the_splitter_is_refused(history: pd.DataFrame) -> None:
    message = (
        "The 'validation_fraction' parameter of WalkForwardSplit must equal the estimator's (0.2) so that the "
        "fold's slices are the estimator's. Got 0.15 instead."
    )
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        run_backtest(history, ConditionalLogitPipeline(validation_fraction=0.2), splitter(), feature_columns=FEATURES)


def test_an_estimator_without_slice_caps_takes_the_splitters(history: pd.DataFrame) -> None:
    # 15% of a 120-day window is ~18 days; caps of 9 days bind, and each fold checks the estimator's cuts
    split = WalkForwardSplit(
        "2000-06-01", "2000-08-31", train_window_days=120, validation_max_days=9, calibration_max_days=9
    )
    estimator = ConditionalLogitPipeline()
    res = run_backtest(history, estimator, split, feature_columns=FEATURES, n_bootstrap=0)
    assert estimator.calibration_max_days is None  # the caller's estimator is left as it was
    for fold in res.folds:
        assert (fold.train_end - fold.calibration_start).days < 9
        assert (fold.calibration_start - fold.validation_start).days <= 9
    message = (
        "The 'calibration_max_days' parameter of WalkForwardSplit must equal the estimator's (30) so that the "
        "fold's slices are the estimator's. Got 9 instead."
    )
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        run_backtest(history, ConditionalLogitPipeline(calibration_max_days=30), split, feature_columns=FEATURES)


def _strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"invalid JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_metrics_and_the_benchmark_summary_are_strict_json(result: BacktestResult, tmp_path) -> None:
    import importlib.util
    from pathlib import Path

    paths = write_outputs(result, tmp_path / "bt")
    doc = _strict_json(paths["metrics"].read_text())
    assert isinstance(doc, dict) and doc["n_races"] == result.metrics["n_races"]
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_backtest.py"
    spec = importlib.util.spec_from_file_location("bench_backtest", bench)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    summary = {"runs": {"goal": {k: result.metrics.get(k) for k in module.HEADLINE}}}
    summary["runs"]["goal"].update(roi_no_bets=float("nan"), ci=np.float64("nan"), x=np.inf)
    module.write_summary(tmp_path / "summary.json", summary)
    back = _strict_json((tmp_path / "summary.json").read_text())
    assert back["runs"]["goal"]["roi_no_bets"] is None and back["runs"]["goal"]["ci"] is None
    assert back["runs"]["goal"]["x"] is None
    assert back["runs"]["goal"]["n_races"] == result.metrics["n_races"]


def test_invalid_betting_choice_is_refused() -> None:
    message = (
        "The 'probabilities' parameter of BettingConfig must be one of ('combined', 'fundamental'). "
        "Got 'market' instead."
    )
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        BettingConfig(probabilities="market")  # type: ignore[arg-type]


def test_a_race_whose_book_is_under_one_is_missing_runners_and_is_neither_scored_nor_bet() -> None:
    from racequant.backtest.engine import add_market

    pred = pd.DataFrame(
        {"race_id": ["A"] * 3 + ["B"] * 3, "win_odds": [2.0, 3.0, 4.0, 3.0, 5.0, 9.0]}  # books 1.083 and 0.644
    )
    out = add_market(pred)
    assert out.groupby("race_id")["market_ok"].all().to_dict() == {"A": True, "B": False}
    assert out.loc[out["race_id"] == "B", "market_prob"].isna().all()


def test_the_backtest_estimator_is_the_pipeline_default_with_lightgbm_only() -> None:
    from racequant.backtest.api import default_estimator
    from racequant.models.pipeline import RacePipeline

    est = default_estimator(n_jobs=1)
    default = RacePipeline()
    assert tuple(est.libraries) == ("lightgbm",) and est.n_jobs == 1
    for name in ("learning_rate", "n_estimators", "early_stopping_rounds", "max_depth", "booster_params"):
        assert getattr(est, name) == getattr(default, name)
    assert tuple(default_estimator(libraries=("catboost",)).libraries) == ("catboost",)
