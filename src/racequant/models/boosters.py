"""Gradient-boosted trees from CatBoost, LightGBM and XGBoost behind one scikit-learn-style contract.

Each booster learns a per-runner score from the fundamental features (never the odds). Objectives:

- ``binary``: log loss of the outcome (won or placed) per runner; the score is the logit margin.
- ``rank``: learning-to-rank with the race as group (LightGBM lambdarank, CatBoost YetiRank, XGBoost
  rank:ndcg).
- ``softmax``: the conditional logit itself, -log P(winner) with P a softmax over the race (CatBoost
  QuerySoftMax; LightGBM and XGBoost through a custom objective). Win targets only.

Early stopping uses a validation slice the caller takes from later races of the training window.

Prediction has two paths with identical results. A frame of many runners (the backtest) goes through each
library's pandas interface with ``n_jobs`` threads. A few runners (a race card) go through
``prepare`` once, shared by every booster of a pipeline, and then each library's cheapest native call on one
thread: LightGBM ``predict(num_threads=1)``, XGBoost ``inplace_predict`` and CatBoost ``predict(thread_count=1)``
on arrays; on 14 rows a thread pool costs more than it saves, and the per-column pandas preparation cost more
than all the trees.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from racequant.calibration.lifecycle import method_order_error
from racequant.models.race import race_codes, race_softmax

logger = logging.getLogger(__name__)
_COPY_LOCK = threading.Lock()
_UNSET = object()

LIBRARIES = ("catboost", "lightgbm", "xgboost")
OBJECTIVES = ("binary", "rank", "softmax")
_MISSING_CATEGORY = "__missing__"
# At most this many rows are predicted on one thread from prepared arrays (a race card has up to 24 runners, a
# micro-batch of cards a few hundred); larger frames use the pandas path with n_jobs threads.
SMALL_BATCH_ROWS = 1024


class PreparedFeatures:
    """Runners' features in a booster's column order, converted once for the native prediction calls.

    ``values`` is float64 (runners, features) with each categorical as its code among the categories seen in fit
    (NaN when unseen), the form LightGBM and XGBoost read; ``labels`` (built on first use) is the object array
    CatBoost reads, categoricals as text. Boosters trained on the same columns and categories share one.
    """

    __slots__ = ("_labels", "_pool", "categorical", "key", "text", "values")

    def __init__(
        self, key: tuple[Any, ...], values: np.ndarray, categorical: list[int], text: list[np.ndarray]
    ) -> None:
        self.key = key
        self.values = values
        self.categorical = categorical
        self.text = text
        self._labels: np.ndarray | None = None
        self._pool: Any = None

    def __len__(self) -> int:
        return len(self.values)

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            labels = self.values.astype(object)
            for j, text in zip(self.categorical, self.text, strict=True):
                labels[:, j] = text
            self._labels = labels
        return self._labels


def _is_categorical(series: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(series) or isinstance(series.dtype, pd.CategoricalDtype)


def _softmax_grad_hess(scores: np.ndarray, y: np.ndarray, codes: np.ndarray, n_races: int) -> tuple[np.ndarray, ...]:
    """Gradient and diagonal Hessian of -log P(winners) under a race softmax (dead heats share the target)."""
    p = race_softmax(scores, codes, n_races)
    y = np.asarray(y, dtype=float)
    tot = np.bincount(codes, weights=y, minlength=n_races)[codes]
    target = np.divide(y, tot, out=np.zeros_like(y), where=tot > 0)
    has_winner = tot > 0
    grad = np.where(has_winner, p - target, 0.0)
    hess = np.where(has_winner, np.maximum(p * (1.0 - p), 1e-6), 1e-6)
    return grad, hess


def _softmax_nll(scores: np.ndarray, y: np.ndarray, codes: np.ndarray, n_races: int) -> float:
    p = race_softmax(scores, codes, n_races)
    won = np.asarray(y) > 0
    p_win = np.bincount(codes[won], weights=p[won], minlength=n_races)
    has = np.bincount(codes[won], minlength=n_races) > 0
    return float(-np.mean(np.log(np.clip(p_win[has], 1e-15, None))))


class GradientBooster:
    """One booster (library x target x objective) with the scikit-learn contract.

    ``fit(X, y, race_ids, X_val, y_val, race_ids_val)`` learns from a frame of features; the validation
    slice drives early stopping. ``decision_function`` gives the raw score, ``predict_proba`` the per-runner
    probability (binary objective only), ``contributions`` the TreeSHAP contributions to the score.
    """

    def __init__(
        self,
        library: str = "lightgbm",
        objective: str = "binary",
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        max_depth: int = 6,
        early_stopping_rounds: int = 50,
        random_state: int = 0,
        n_jobs: int = 2,
        params: dict[str, Any] | None = None,
    ) -> None:
        self.library = library
        self.objective = objective
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.early_stopping_rounds = early_stopping_rounds
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.params = params

    # -- parameters and data -------------------------------------------------------------------------
    def _validate(self) -> None:
        if self.library not in LIBRARIES:
            raise ValueError(
                f"The 'library' parameter of GradientBooster must be one of {LIBRARIES}. Got {self.library!r} instead."
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"The 'objective' parameter of GradientBooster must be one of {OBJECTIVES}. "
                f"Got {self.objective!r} instead."
            )
        for name in ("n_estimators", "max_depth", "n_jobs"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(
                    f"The '{name}' parameter of GradientBooster must be a positive int. Got {value!r} instead."
                )
        if not self.learning_rate > 0:
            raise ValueError(
                "The 'learning_rate' parameter of GradientBooster must be a positive float. "
                f"Got {self.learning_rate!r} instead."
            )

    def _prepare(self, X: pd.DataFrame) -> pd.DataFrame:
        """Columns in training order; categoricals with the categories seen in training."""
        missing = [c for c in self.feature_names_in_ if c not in X.columns]
        if missing:
            raise ValueError(f"X is missing {len(missing)} feature column(s) seen in fit: {missing[:10]}")
        out = {}
        for col in self.feature_names_in_:
            if col in self.categories_:
                values = X[col].astype("string").fillna(_MISSING_CATEGORY)
                if self.library == "catboost":
                    out[col] = values.astype(object).to_numpy()
                else:  # a category unseen in fit becomes missing (as pandas did before deprecating it)
                    seen = self.categories_[col]
                    out[col] = pd.Categorical(values.where(values.isin(seen)), categories=seen)
            else:
                out[col] = pd.to_numeric(X[col], errors="coerce").astype(float).to_numpy()
        return pd.DataFrame(out, index=X.index)

    def prediction_key(self) -> tuple[Any, ...]:
        """Columns and categories this booster reads: boosters with equal keys can share ``prepare``'s result."""
        key = getattr(self, "_prediction_key", None)
        if key is None:
            cats = tuple((c, tuple(v)) for c, v in sorted(self.categories_.items()))
            key = self._prediction_key = (tuple(self.feature_names_in_), cats)
        return key

    def prepare(self, X: pd.DataFrame) -> PreparedFeatures:
        """The frame as arrays for the one-thread native calls (the same values ``_prepare`` gives)."""
        self._check_fitted("prepare")
        missing = [c for c in self.feature_names_in_ if c not in X.columns]
        if missing:
            raise ValueError(f"X is missing {len(missing)} feature column(s) seen in fit: {missing[:10]}")
        columns = self.feature_names_in_
        values = np.empty((len(X), len(columns)), dtype=float)
        numeric = [j for j, c in enumerate(columns) if c not in self.categories_]
        block = X[[columns[j] for j in numeric]]
        if all(pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t) for t in block.dtypes):
            values[:, numeric] = block.to_numpy(dtype=float, na_value=np.nan)
        else:
            for j in numeric:
                values[:, j] = pd.to_numeric(X[columns[j]], errors="coerce").astype(float).to_numpy()
        categorical, text = [], []
        for j, col in enumerate(columns):
            if col in self.categories_:
                labels = X[col].astype("string").fillna(_MISSING_CATEGORY).to_numpy(dtype=object)
                code = {c: float(i) for i, c in enumerate(self.categories_[col])}
                values[:, j] = [code.get(v, np.nan) for v in labels]
                categorical.append(j)
                text.append(labels)
        return PreparedFeatures(self.prediction_key(), values, categorical, text)

    def _prepared(self, X: pd.DataFrame | PreparedFeatures) -> PreparedFeatures | None:
        """``X`` prepared for the one-thread path, or None when it is a large frame (the pandas path)."""
        if isinstance(X, PreparedFeatures):
            if X.key != self.prediction_key():
                raise ValueError("The prepared features were made for a booster with other columns or categories.")
            return X
        return self.prepare(X) if len(X) <= SMALL_BATCH_ROWS else None

    def _single_thread_xgboost(self) -> Any:
        """A copy of the XGBoost booster set to one thread (the fitted one keeps n_jobs for large frames)."""
        model = getattr(self, "_xgb_one_thread", None)
        if model is None:
            with _COPY_LOCK:
                model = getattr(self, "_xgb_one_thread", None)
                if model is None:
                    model = self.model_.copy()
                    model.set_param({"nthread": 1})
                    self._xgb_one_thread = model
        return model

    def leaf_tables(self) -> Any | None:
        """The booster's exact TreeSHAP as leaf tables (``racequant.models.treeshap``; built on first use, about a
        second), or None when its trees cannot be tabulated (deeper than 8 levels, CTRs of feature combinations)."""
        tables = getattr(self, "_leaf_tables", _UNSET)
        if tables is _UNSET:
            with _COPY_LOCK:
                tables = getattr(self, "_leaf_tables", _UNSET)
                if tables is _UNSET:
                    tables = self._build_leaf_tables()
                    self._leaf_tables = tables
        return tables

    def _build_leaf_tables(self) -> Any | None:
        from racequant.models import treeshap

        n_features = len(self.feature_names_in_)
        try:
            if self.library == "lightgbm":
                return treeshap.LightGBMTables(self.model_, self.best_iteration_ + 1, n_features)
            if self.library == "xgboost":
                return treeshap.XGBoostTables(self.model_, self.best_iteration_ + 1, n_features)
            return treeshap.CatBoostTables(self.model_, n_features)
        except ValueError as exc:
            logger.warning(
                "%s %s booster: explanations by the library's own TreeSHAP (%s)", self.library, self.objective, exc
            )
            return None

    def __getstate__(self) -> dict[str, Any]:
        # caches are rebuilt on first use, never saved with the model
        cached = ("_prediction_key", "_xgb_one_thread", "_leaf_tables")
        return {k: v for k, v in self.__dict__.items() if k not in cached}

    # -- fit -----------------------------------------------------------------------------------------
    def fit(
        self,
        X: pd.DataFrame,
        y: Sequence[float] | np.ndarray,
        race_ids: Sequence[object] | np.ndarray,
        X_val: pd.DataFrame | None = None,
        y_val: Sequence[float] | np.ndarray | None = None,
        race_ids_val: Sequence[object] | np.ndarray | None = None,
    ) -> GradientBooster:
        self._validate()
        self.feature_names_in_ = [str(c) for c in X.columns]
        self.categories_ = {
            c: sorted(set(X[c].astype("string").fillna(_MISSING_CATEGORY))) for c in X.columns if _is_categorical(X[c])
        }
        train = self._sorted(X, y, race_ids)
        val = self._sorted(X_val, y_val, race_ids_val) if X_val is not None else None
        fitter = {"catboost": self._fit_catboost, "lightgbm": self._fit_lightgbm, "xgboost": self._fit_xgboost}
        fitter[self.library](train, val)
        logger.info(
            "%s %s booster: %d trees (of at most %d)",
            self.library,
            self.objective,
            self.best_iteration_ + 1,
            self.n_estimators,
        )
        return self

    def _sorted(
        self, X: pd.DataFrame, y: Sequence[float] | np.ndarray | None, race_ids: Sequence[object] | np.ndarray | None
    ) -> dict[str, Any]:
        """Rows grouped by race (ranking libraries need contiguous groups)."""
        if y is None or race_ids is None:
            raise ValueError("y and race_ids are required with X (and y_val, race_ids_val with X_val).")
        codes, n_races = race_codes(race_ids)
        order = np.argsort(codes, kind="stable")
        codes = codes[order]
        return {
            "X": self._prepare(X).iloc[order],
            "y": np.asarray(y, dtype=float)[order],
            "codes": codes,
            "n_races": n_races,
            "group_sizes": np.bincount(codes, minlength=n_races),
        }

    def _fit_lightgbm(self, train: dict[str, Any], val: dict[str, Any] | None) -> None:
        import lightgbm as lgb

        params: dict[str, Any] = {
            "learning_rate": self.learning_rate,
            "num_leaves": min(2**self.max_depth - 1, 63),
            "max_depth": self.max_depth,
            "min_data_in_leaf": 50,
            "feature_fraction": 0.8,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "lambda_l2": 1.0,
            "seed": self.random_state,
            "deterministic": True,
            "num_threads": self.n_jobs,
            "verbosity": -1,
        }
        feval = None
        if self.objective == "binary":
            params.update(objective="binary", metric="binary_logloss")
        elif self.objective == "rank":
            params.update(objective="lambdarank", metric="ndcg", eval_at=[3], label_gain=list(range(32)))
        else:
            codes, n_races = train["codes"], train["n_races"]

            def objective(preds: np.ndarray, data: Any) -> tuple[np.ndarray, np.ndarray]:
                return _softmax_grad_hess(preds, train["y"], codes, n_races)

            params.update(objective=objective, metric="None")
            if val is not None:

                def feval(preds: np.ndarray, data: Any) -> tuple[str, float, bool]:
                    return "winner_nll", _softmax_nll(preds, val["y"], val["codes"], val["n_races"]), False

        params.update(self.params or {})
        group = train["group_sizes"] if self.objective == "rank" else None
        dtrain = lgb.Dataset(train["X"], label=train["y"], group=group, free_raw_data=False)
        valid_sets, callbacks = [], []
        if val is not None:
            vgroup = val["group_sizes"] if self.objective == "rank" else None
            valid_sets = [lgb.Dataset(val["X"], label=val["y"], group=vgroup, reference=dtrain)]
            callbacks = [lgb.early_stopping(self.early_stopping_rounds, first_metric_only=True, verbose=False)]
        booster = lgb.train(
            params, dtrain, num_boost_round=self.n_estimators, valid_sets=valid_sets, feval=feval, callbacks=callbacks
        )
        self.model_ = booster
        best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
        self.best_iteration_ = int(best) - 1

    def _fit_xgboost(self, train: dict[str, Any], val: dict[str, Any] | None) -> None:
        import xgboost as xgb

        params: dict[str, Any] = {
            "eta": self.learning_rate,
            "max_depth": self.max_depth,
            "min_child_weight": 5.0 if self.objective == "binary" else 0.5,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "lambda": 1.0,
            "tree_method": "hist",
            "seed": self.random_state,
            "nthread": self.n_jobs,
            "verbosity": 0,
        }
        obj = custom_metric = None
        if self.objective == "binary":
            params.update(objective="binary:logistic", eval_metric="logloss")
        elif self.objective == "rank":
            params.update(objective="rank:ndcg", eval_metric="ndcg@3", lambdarank_pair_method="topk")
        else:
            codes, n_races = train["codes"], train["n_races"]

            def obj(preds: np.ndarray, dtrain: Any) -> tuple[np.ndarray, np.ndarray]:
                return _softmax_grad_hess(preds, train["y"], codes, n_races)

            params.update(disable_default_eval_metric=1)
            if val is not None:

                def custom_metric(preds: np.ndarray, dval: Any) -> tuple[str, float]:
                    return "winner_nll", _softmax_nll(preds, val["y"], val["codes"], val["n_races"])

        params.update(self.params or {})

        def matrix(part: dict[str, Any]) -> Any:
            qid = part["codes"] if self.objective == "rank" else None
            dm = xgb.DMatrix(part["X"], label=part["y"], qid=qid, enable_categorical=True)
            # trained without names, named after: XGBoost reads and compares the names of every matrix at every
            # round (~4% of a late backtest fold's XGBoost CPU); the trees and the saved model are the same
            dm.feature_names = None
            return dm

        dtrain = matrix(train)
        evals = [(matrix(val), "val")] if val is not None else []
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=self.n_estimators,
            evals=evals,
            obj=obj,
            custom_metric=custom_metric,
            early_stopping_rounds=self.early_stopping_rounds if evals else None,
            verbose_eval=False,
        )
        booster.feature_names = list(train["X"].columns)
        self.model_ = booster
        best = getattr(booster, "best_iteration", None)
        self.best_iteration_ = int(best) if best is not None else booster.num_boosted_rounds() - 1

    def _fit_catboost(self, train: dict[str, Any], val: dict[str, Any] | None) -> None:
        from catboost import CatBoost, Pool

        loss = {"binary": "Logloss", "rank": "YetiRank", "softmax": "QuerySoftMax"}[self.objective]
        params: dict[str, Any] = {
            "loss_function": loss,
            "iterations": self.n_estimators,
            "learning_rate": self.learning_rate,
            "depth": self.max_depth,
            "random_seed": self.random_state,
            "thread_count": self.n_jobs,
            "verbose": False,
            "allow_writing_files": False,
        }
        if self.objective == "rank":
            params["eval_metric"] = "NDCG:top=3"
        params.update(self.params or {})
        cat = list(self.categories_)

        def pool(part: dict[str, Any]) -> Any:
            group = part["codes"] if self.objective != "binary" else None
            return Pool(part["X"], label=part["y"], group_id=group, cat_features=cat)

        model = CatBoost(params)
        if val is not None:
            model.fit(
                pool(train), eval_set=pool(val), early_stopping_rounds=self.early_stopping_rounds, use_best_model=True
            )
        else:
            model.fit(pool(train))
        self.model_ = model
        self.best_iteration_ = int(model.tree_count_) - 1

    # -- predict -------------------------------------------------------------------------------------
    def _check_fitted(self, method: str) -> None:
        if not hasattr(self, "model_"):
            raise method_order_error("fit", method)

    def decision_function(self, X: pd.DataFrame | PreparedFeatures) -> np.ndarray:
        """Raw score per runner (logit margin for the binary objective)."""
        self._check_fitted("decision_function")
        prepared = self._prepared(X)
        n_trees = self.best_iteration_ + 1
        if prepared is not None:
            if self.library == "lightgbm":
                return np.asarray(
                    self.model_.predict(prepared.values, raw_score=True, num_iteration=n_trees, num_threads=1)
                )
            if self.library == "xgboost":
                model = self._single_thread_xgboost()
                return np.asarray(
                    model.inplace_predict(prepared.values, predict_type="margin", iteration_range=(0, n_trees))
                )
            return np.asarray(
                self.model_.predict(self.catboost_pool(prepared), prediction_type="RawFormulaVal", thread_count=1)
            )
        Xp = self._prepare(X)  # type: ignore[arg-type]
        if self.library == "lightgbm":
            return np.asarray(self.model_.predict(Xp, raw_score=True, num_iteration=n_trees))
        if self.library == "xgboost":
            import xgboost as xgb

            dm = xgb.DMatrix(Xp, enable_categorical=True)
            return np.asarray(self.model_.predict(dm, output_margin=True, iteration_range=(0, n_trees)))
        from catboost import Pool

        return np.asarray(
            self.model_.predict(Pool(Xp, cat_features=list(self.categories_)), prediction_type="RawFormulaVal")
        )

    def catboost_pool(self, prepared: PreparedFeatures) -> Any:
        """The CatBoost Pool of the prepared features, built once for every CatBoost call on them."""
        if prepared._pool is None:
            from catboost import Pool

            prepared._pool = Pool(prepared.labels, cat_features=prepared.categorical)
        return prepared._pool

    def predict_proba(self, X: pd.DataFrame | PreparedFeatures) -> np.ndarray:
        """Per-runner probability of the target (binary objective only), ignoring the rivals."""
        if self.objective != "binary":
            raise ValueError(f"predict_proba needs the binary objective; this booster uses {self.objective!r}.")
        return 1.0 / (1.0 + np.exp(-self.decision_function(X)))

    def contributions(self, X: pd.DataFrame | PreparedFeatures, library: bool = False) -> np.ndarray:
        """TreeSHAP contribution of each feature to each runner's score, shape (runners, features).

        A few runners are explained from the booster's leaf tables once ``leaf_tables`` has built them (the same
        values as the library's TreeSHAP, XGBoost's within its float32 rounding), unless ``library`` asks for the
        library's own.
        """
        self._check_fitted("contributions")
        prepared = self._prepared(X)
        n_trees = self.best_iteration_ + 1
        # the tables once built (a long-lived server builds them at load: ``Predictor.warm_up``); a one-shot
        # prediction (the CLI) is cheaper with the library's TreeSHAP than with a second of tabulation
        tables = getattr(self, "_leaf_tables", None) if prepared is not None and not library else None
        if prepared is not None and tables is not None:
            source = self.catboost_pool(prepared) if self.library == "catboost" else prepared.values
            return np.asarray(tables.contributions(source))
        if prepared is not None:
            if self.library == "lightgbm":
                out = self.model_.predict(prepared.values, pred_contrib=True, num_iteration=n_trees, num_threads=1)
            elif self.library == "xgboost":
                import xgboost as xgb

                model = self._single_thread_xgboost()
                dm = xgb.DMatrix(
                    prepared.values,
                    feature_names=model.feature_names,
                    feature_types=model.feature_types,
                    enable_categorical=True,
                    nthread=1,
                )
                out = model.predict(dm, pred_contribs=True, iteration_range=(0, n_trees))
            else:
                out = self.model_.get_feature_importance(
                    self.catboost_pool(prepared), type="ShapValues", thread_count=1
                )
            return np.asarray(out)[:, : len(self.feature_names_in_)]
        Xp = self._prepare(X)  # type: ignore[arg-type]
        if self.library == "lightgbm":
            out = self.model_.predict(Xp, pred_contrib=True, num_iteration=n_trees)
        elif self.library == "xgboost":
            import xgboost as xgb

            dm = xgb.DMatrix(Xp, enable_categorical=True)
            out = self.model_.predict(dm, pred_contribs=True, iteration_range=(0, n_trees))
        else:
            from catboost import Pool

            pool = Pool(Xp, cat_features=list(self.categories_))
            out = self.model_.get_feature_importance(pool, type="ShapValues")
        return np.asarray(out)[:, : len(self.feature_names_in_)]
