"""The whole chain on a small synthetic history: race-level sums, columns, explanations, refusals."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from racequant.calibration.isotonic import CalibrationOrderError
from racequant.calibration.lifecycle import NotFittedError
from racequant.models.boosters import GradientBooster
from racequant.models.ensemble import LogLinearPool
from racequant.models.pipeline import FeatureContractError, RacePipeline
from racequant.models.place import n_places
from racequant.models.race import RaceSoftmax, race_codes, race_softmax
from racequant.models.synthetic import make_synthetic_runners

FEATURES = [f"f{j}" for j in range(8)] + ["going"]


@pytest.fixture(scope="module")
def history() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = make_synthetic_runners(700, seed=7).rename(columns={"date": "race_date"})
    cut = frame["race_date"].quantile(0.8)
    return frame[frame["race_date"] <= cut], frame[frame["race_date"] > cut]


@pytest.fixture(scope="module")
def fitted(history: tuple[pd.DataFrame, pd.DataFrame]) -> RacePipeline:
    train, _ = history
    return RacePipeline(n_estimators=15, learning_rate=0.2, max_depth=3, n_bootstrap=5, min_group_size=500).fit(
        train, FEATURES
    )


def test_win_probabilities_sum_to_one_and_place_to_the_places(
    fitted: RacePipeline, history: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    _, test = history
    out = fitted.predict(test)
    codes, n_races = race_codes(out["race_id"].to_numpy())
    for col in ("win_prob", "win_prob_base", "catboost_win", "lightgbm_win", "xgboost_win"):
        np.testing.assert_allclose(np.bincount(codes, weights=out[col], minlength=n_races), 1.0, atol=1e-9)
    places = n_places(np.bincount(codes, minlength=n_races))
    np.testing.assert_allclose(np.bincount(codes, weights=out["place_prob"], minlength=n_races), places, atol=1e-9)
    assert (out["win_prob_lower"] <= out["win_prob"]).all() and (out["win_prob"] <= out["win_prob_upper"]).all()
    assert (out["place_prob_lower"] <= out["place_prob"]).all() and (out["place_prob"] <= out["place_prob_upper"]).all()


def test_each_runner_gets_its_ten_largest_contributions(
    fitted: RacePipeline, history: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    _, test = history
    out = fitted.predict(test.head(30))
    top = out["top_features"].iloc[0]
    assert len(top) == 9  # fewer features than 10 here
    assert set(top[0]) == {"feature", "importance"}
    sizes = [abs(t["importance"]) for t in top]
    assert sizes == sorted(sizes, reverse=True)


def test_a_race_card_on_the_one_thread_path_equals_the_batch_path_exactly(
    fitted: RacePipeline, history: tuple[pd.DataFrame, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, test = history
    card = test[test["race_id"] == test["race_id"].iloc[0]].copy()
    # a missing value, a missing category and one never seen in training take the same branches on both paths
    card.loc[card.index[0], "f1"] = np.nan
    card["going"] = card["going"].astype(object)
    card.loc[card.index[1], "going"] = None
    card.loc[card.index[2], "going"] = "HEAVY-UNSEEN"
    fast = fitted.predict(card)
    monkeypatch.setattr("racequant.models.boosters.SMALL_BATCH_ROWS", 0)
    monkeypatch.setattr("racequant.models.pipeline.SMALL_BATCH_ROWS", 0)
    batch = fitted.predict(card)
    pd.testing.assert_frame_equal(
        fast.drop(columns="top_features"), batch.drop(columns="top_features"), check_exact=True
    )
    # explanations: leaf tables on the card, the libraries' TreeSHAP on the batch (XGBoost's float32 rounding)
    for mine, theirs in zip(fast["top_features"], batch["top_features"], strict=True):
        assert {t["feature"]: t["importance"] for t in mine} == pytest.approx(
            {t["feature"]: t["importance"] for t in theirs}, abs=2e-6
        )


@pytest.mark.parametrize("target", ["win", "place"])
@pytest.mark.parametrize("library", ["catboost", "lightgbm", "xgboost"])
def test_leaf_tables_give_the_libraries_own_treeshap(
    fitted: RacePipeline, history: tuple[pd.DataFrame, pd.DataFrame], library: str, target: str
) -> None:
    _, test = history
    booster = (fitted.win_boosters_ if target == "win" else fitted.place_boosters_)[library]
    X = test[FEATURES].head(60).copy()
    X.loc[X.index[:5], "f0"] = np.nan
    X["going"] = X["going"].astype(object)
    X.loc[X.index[5:8], "going"] = None
    leaf_tables = booster.leaf_tables()
    assert leaf_tables is not None
    tables, own = booster.contributions(X), booster.contributions(X, library=True)
    assert np.abs(own).max() > 0
    np.testing.assert_allclose(tables, own, rtol=1e-6, atol=1e-6)
    # the compiled kernel against the numpy reference it replaced (only the summation order may differ)
    prepared = booster.prepare(X)
    source = booster.catboost_pool(prepared) if library == "catboost" else prepared.values
    reference = leaf_tables.contributions(source, kernel=False)
    np.testing.assert_allclose(tables, reference, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(reference, own, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("runners", [1, 14, 200])
@pytest.mark.parametrize("target", ["win", "place"])
@pytest.mark.parametrize("library", ["catboost", "lightgbm", "xgboost"])
def test_the_compiled_kernel_adds_up_the_same_contributions_as_the_numpy_reference(
    fitted: RacePipeline, library: str, target: str, runners: int
) -> None:
    tables = (fitted.win_boosters_ if target == "win" else fitted.place_boosters_)[library].leaf_tables().tables
    # every outcome of every path is reachable from random tests, including runners that pass none or all
    goes_left = np.random.default_rng(runners).random((runners, tables.n_nodes)) < 0.5
    goes_left[0] = runners % 2 == 0
    kernel, reference = tables.contributions(goes_left), tables.contributions(goes_left, kernel=False)
    assert kernel.shape == (runners, tables.n_features)
    assert np.abs(reference).max() > 0
    np.testing.assert_allclose(kernel, reference, rtol=1e-12, atol=1e-12)
    # a column-major input is the same tests
    np.testing.assert_array_equal(tables.contributions(np.asfortranarray(goes_left)), kernel)


@pytest.mark.parametrize("target", ["win", "place"])
@pytest.mark.parametrize("library", ["lightgbm", "xgboost"])
def test_the_compiled_tests_of_each_node_are_the_numpy_references(
    fitted: RacePipeline, history: tuple[pd.DataFrame, pd.DataFrame], library: str, target: str
) -> None:
    _, test = history
    booster = (fitted.win_boosters_ if target == "win" else fitted.place_boosters_)[library]
    tables = booster.leaf_tables()
    x = booster.prepare(test[FEATURES].head(200)).values.copy()
    # missing values, zeros (LightGBM's "Zero" missing type), infinities, and categorical codes out of range
    rng = np.random.default_rng(3)
    for value in (np.nan, 0.0, -0.0, 1e-36, np.inf, -np.inf, -0.5, -1.0, 2.7, 1e30):
        x[rng.random(x.shape) < 0.04] = value
    with np.errstate(invalid="ignore"):  # numpy's cast of 1e30 and infinities to a code
        kernel, reference = tables.goes_left(x), tables.goes_left(x, kernel=False)
    assert kernel.shape == reference.shape == (len(x), tables.tables.n_nodes)
    np.testing.assert_array_equal(kernel, reference)


def test_the_kernel_is_compiled_when_the_tables_are_built_not_on_the_first_card(
    fitted: RacePipeline, history: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    from racequant.models import treeshap

    _, test = history
    booster = fitted.win_boosters_["lightgbm"]
    booster.leaf_tables()
    compiled = list(treeshap._explain.signatures)
    assert compiled
    booster.contributions(test[FEATURES].head(14))
    assert list(treeshap._explain.signatures) == compiled


def test_the_tables_refuse_tests_of_another_ensemble(fitted: RacePipeline) -> None:
    tables = fitted.win_boosters_["xgboost"].leaf_tables().tables
    with pytest.raises(ValueError, match=re.escape(f"goes_left must have shape (runners, {tables.n_nodes})")):
        tables.contributions(np.zeros((3, tables.n_nodes + 1), dtype=bool))


def test_the_kernel_compiles_without_a_writable_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    from numba.core.caching import CacheImpl

    from racequant.models import treeshap

    monkeypatch.setattr(CacheImpl, "_locator_classes", [])  # no directory numba could cache into

    def total(values: np.ndarray) -> float:
        out = 0.0
        for v in values:
            out += v
        return out

    assert treeshap._jit(total)(np.arange(4.0)) == 6.0


def test_the_xgboost_boosters_name_their_features_and_keep_the_categorical_one(fitted: RacePipeline) -> None:
    # trained on matrices without names (cheaper rounds), then named: the saved model carries them
    for booster in (fitted.win_boosters_["xgboost"], fitted.place_boosters_["xgboost"]):
        assert booster.model_.feature_names == FEATURES
        assert booster.model_.feature_types == ["float"] * (len(FEATURES) - 1) + ["c"]


def test_prepared_features_are_refused_by_a_booster_with_other_columns(
    fitted: RacePipeline, history: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    _, test = history
    prepared = fitted.win_boosters_["lightgbm"].prepare(test[FEATURES].head(3))
    other = GradientBooster("lightgbm", n_estimators=5).fit(
        test[FEATURES[:3]], test["won"], test["race_id"], test[FEATURES[:3]], test["won"], test["race_id"]
    )
    with pytest.raises(ValueError, match="other columns or categories"):
        other.decision_function(prepared)


def test_the_slices_follow_time_and_validation_metrics_are_recorded(fitted: RacePipeline) -> None:
    w = fitted.training_window_
    assert w["start"] <= w["train_end"] < w["validation_end"] < w["end"]
    assert fitted.validation_metrics_["place_method"] in ("harville", "direct")
    libs = ("catboost", "lightgbm", "xgboost")
    assert set(fitted.validation_metrics_["blend_weights"]) == {*libs, *(f"{lib}_place" for lib in libs)}


def test_the_blend_pools_the_place_boosters_scores_and_the_explanations_add_up_to_it(
    fitted: RacePipeline, history: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    _, test = history
    race = test["race_id"].to_numpy()
    codes, n_races = race_codes(race)
    members = [(lib, b) for lib, b in fitted.win_boosters_.items()]
    members += [(f"{lib}_place", b) for lib, b in fitted.place_boosters_.items()]
    scores = {name: b.decision_function(test[FEATURES]) for name, b in members}
    # the blend is the softmax of sum_m w_m / T_m * score_m: each place booster enters it like a win booster
    log_score = sum(
        w / fitted.softmax_[name].temperature_ * scores[name]
        for w, (name, _) in zip(fitted.blend_.weights_, members, strict=True)
    )
    np.testing.assert_allclose(
        fitted.predict(test, explain=False)["win_prob_base"], race_softmax(log_score, codes, n_races), rtol=1e-9
    )
    # the explanations are the TreeSHAP contributions of that same log-score (up to each booster's base value)
    contrib = fitted.contributions(test).sum(axis=1)
    centred = log_score - contrib
    assert np.ptp(centred) < 1e-6 * max(1.0, np.abs(log_score).max())
    # without the place boosters the blend has the three win boosters only
    train, _ = history
    win_only = RacePipeline(
        n_estimators=15, learning_rate=0.2, max_depth=3, n_bootstrap=5, min_group_size=500, blend_place_scores=False
    ).fit(train, FEATURES)
    assert set(win_only.validation_metrics_["blend_weights"]) == set(fitted.win_boosters_)


def test_the_market_is_refused_as_a_feature(history: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, _ = history
    with pytest.raises(FeatureContractError, match="The market is never a model input"):
        RacePipeline().fit(train, [*FEATURES, "market_prob"])


def test_predicting_races_of_the_calibration_window_is_refused(
    fitted: RacePipeline, history: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    train, _ = history
    with pytest.raises(CalibrationOrderError):
        fitted.predict(train.tail(20))


def test_predict_before_fit_is_refused(history: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, test = history
    with pytest.raises(NotFittedError, match=re.escape("Incorrect method order: call fit before calling predict.")):
        RacePipeline().predict(test)


def test_missing_feature_columns_are_named(fitted: RacePipeline, history: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, test = history
    with pytest.raises(FeatureContractError, match="f3"):
        fitted.predict(test.drop(columns=["f3"]))


def test_invalid_parameters_are_refused_with_the_parameter_named(history: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, _ = history
    with pytest.raises(ValueError, match=re.escape("The 'library' parameter of GradientBooster must be one of")):
        GradientBooster(library="sklearn").fit(train[FEATURES], train["won"], train["race_id"])
    with pytest.raises(ValueError, match=re.escape("The 'place_method' parameter of RacePipeline")):
        RacePipeline(place_method="show").fit(train, FEATURES)


def test_race_softmax_temperature_is_recovered() -> None:
    frame = make_synthetic_runners(1500, seed=11)
    logit = np.log(frame["true_win_prob"].to_numpy())
    model = RaceSoftmax().fit(2.0 * logit, frame["won"], frame["race_id"])
    assert model.temperature_ == pytest.approx(2.0, rel=0.15)


@pytest.mark.parametrize("library", ["catboost", "lightgbm", "xgboost"])
@pytest.mark.parametrize("objective", ["rank", "softmax"])
def test_ranking_objectives_train_and_score(library: str, objective: str, history: tuple[pd.DataFrame, ...]) -> None:
    train, test = history
    booster = GradientBooster(library, objective, n_estimators=10, max_depth=3).fit(
        train[FEATURES], train["won"], train["race_id"], test[FEATURES], test["won"], test["race_id"]
    )
    scores = booster.decision_function(test[FEATURES])
    assert np.isfinite(scores).all() and scores.std() > 0
    assert booster.contributions(test[FEATURES].head(5)).shape == (5, len(FEATURES))


def test_blend_weights_undo_a_sharpened_model_and_ignore_noise() -> None:
    frame = make_synthetic_runners(1500, seed=3)
    codes, n_races = race_codes(frame["race_id"].to_numpy())
    true_p = frame["true_win_prob"].to_numpy()
    sharp = race_softmax(2.0 * np.log(true_p), codes, n_races)
    noise = race_softmax(np.random.default_rng(0).normal(size=len(frame)), codes, n_races)
    pool = LogLinearPool(names=["sharp", "noise"]).fit([sharp, noise], frame["won"], frame["race_id"])
    assert pool.weights_[0] == pytest.approx(0.5, abs=0.1)
    assert abs(pool.weights_[1]) < 0.1
    blended = pool.predict_proba([sharp, noise], frame["race_id"])
    np.testing.assert_allclose(np.bincount(codes, weights=blended, minlength=n_races), 1.0, atol=1e-9)


def test_a_win_objective_per_library_must_name_every_library(history: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, _ = history
    with pytest.raises(ValueError, match=re.escape("The 'win_objective' parameter of RacePipeline must be one of")):
        RacePipeline(win_objective={"lightgbm": "softmax"}).fit(train, FEATURES)
    with pytest.raises(ValueError, match=re.escape("The 'win_objective' parameter of RacePipeline must be one of")):
        RacePipeline(win_objective="lambdarank").fit(train, FEATURES)


def test_shared_explanation_tasks_are_each_run_once_by_whoever_is_free_and_summed_in_order() -> None:
    import threading

    from racequant.models.pipeline import _SharedTasks

    started, release = threading.Event(), threading.Event()
    ran_by: dict[int, str] = {}

    def task(k: int) -> np.ndarray:
        ran_by[k] = threading.current_thread().name
        if k == 0:  # the explainer thread holds the first task until the caller has run every other one
            started.set()
            assert release.wait(10)
        return np.full(2, float(k))

    shared = _SharedTasks([lambda k=k: task(k) for k in range(4)])
    helper = threading.Thread(target=shared.run, name="explainer")
    helper.start()
    assert started.wait(10)
    threading.Timer(0.2, release.set).start()
    results = shared.results()  # the caller takes tasks 1-3, then waits for task 0
    helper.join(10)
    assert [r[0] for r in results] == [0.0, 1.0, 2.0, 3.0]
    assert ran_by[0] == "explainer" and {ran_by[k] for k in (1, 2, 3)} == {threading.current_thread().name}

    def boom() -> np.ndarray:
        raise ValueError("no tables")

    with pytest.raises(ValueError, match="no tables"):
        _SharedTasks([lambda: np.zeros(1), boom]).results()


def test_catboost_ctrs_of_a_categorical_and_numeric_features_are_tabulated_as_catboost_explains_them() -> None:
    from racequant.models.treeshap import _catboost_feature

    rng = np.random.default_rng(5)
    n = 20000
    a = rng.choice([f"a{i}" for i in range(30)], n)
    x, w = rng.normal(size=n), rng.normal(size=n)
    effect = rng.normal(scale=2, size=30)[[int(s[1:]) for s in a]]
    logit = np.where(x > 0.3, effect, -effect) + 0.5 * w - 1.5  # the category's effect flips with x
    won = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    X = pd.DataFrame({"x": x, "a": pd.array(a, dtype="str"), "w": w})
    booster = GradientBooster("catboost", "binary", n_estimators=200, max_depth=6, learning_rate=0.3).fit(
        X, won, np.repeat(np.arange(n // 10), 10)
    )
    splits = {s for t in range(booster.model_.tree_count_) for s in booster.model_._get_tree_splits(t, None)}
    combined = [s for s in splits if s.startswith("{") and "border=" in s[: s.index("}")]]
    assert combined  # CTRs of the category combined with binarized x or w (as the HK place booster grew one)
    assert booster.leaf_tables() is not None
    rows = X.head(60)
    np.testing.assert_allclose(booster.contributions(rows), booster.contributions(rows, library=True), atol=1e-12)
    # a CTR of two categorical features is left to the library's TreeSHAP (its attribution is not matched)
    with pytest.raises(ValueError, match="combination of categorical features"):
        _catboost_feature("{0, 1} counter_type=Borders prior_numerator=0, border=10")
    assert _catboost_feature("{142, 31 border=95.5149} counter_type=Borders prior_numerator=0, border=6") == 142
    assert _catboost_feature("{7} counter_type=Borders prior_numerator=0, border=3") == 7
    assert _catboost_feature("32, bin=4") == 32
