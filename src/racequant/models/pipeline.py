"""The whole learnable chain as one estimator: boosters, race softmax, blend, place, calibration, intervals.

``RacePipeline().fit(frame, feature_columns)`` splits the training frame by time into three slices of races,
each strictly before the next:

1. train: the six boosters (win and place for CatBoost, LightGBM and XGBoost);
2. validation: early stopping, softmax temperatures, blend weights and the Harville exponents; then (by
   default) each booster is refit on train + validation with its early-stopped number of trees. The blend
   pools the three win boosters and (by default, ``blend_place_scores``) the three place boosters' scores as
   win probabilities: top-3 finishes carry three times the outcomes of wins about the same ability;
3. calibration: the choice between Harville and direct place, isotonic calibrators and interval bands. By
   default (``refit_on_calibration``) these are fitted on cross-fitted scores (each half of the slice scored by
   boosters also trained on train + validation + the other half) and the stored boosters are refit on all
   three slices, so that they too learn the latest races before the ones predicted.

``predict(frame)`` returns one row per runner with per-model and blended win probabilities, calibrated win
and place probabilities (summing to 1 and to the number of places in every race), intervals and the top
features behind each runner's score. The market is never an input.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from racequant.calibration import metrics as M
from racequant.calibration.intervals import GroupProbabilityIntervals
from racequant.calibration.isotonic import GroupIsotonicCalibrator
from racequant.calibration.lifecycle import method_order_error
from racequant.errors import RacequantError
from racequant.models.boosters import LIBRARIES, OBJECTIVES, SMALL_BATCH_ROWS, GradientBooster, PreparedFeatures
from racequant.models.ensemble import LogLinearPool
from racequant.models.place import DiscountedHarville, n_places, placed_from_positions
from racequant.models.race import RaceSoftmax, normalise_in_race, race_codes

logger = logging.getLogger(__name__)

_MARKET_HINTS = ("market", "odds", "overround", "dividend")

# Chosen on pre-2004 races only (train to 2002-01-09, early stopping and temperatures on 2002, scored on 2003;
# docs/models.md): the conditional logit (softmax) for LightGBM and XGBoost, regularised (depth 4, larger leaves,
# stronger L2); CatBoost's own QuerySoftMax measured worse than its binary logloss, so CatBoost stays binary.
# XGBoost: rank:ndcg with graded relevance (3 / 2 / 1 for 1st / 2nd / 3rd), its scores turned into race
# probabilities by the softmax temperature fitted on the validation slice (2026-11-27: blend pseudo-R2 on 2003
# 0.1431 against 0.1401 with XGBoost softmax; docs/models.md).
DEFAULT_WIN_OBJECTIVE = {"catboost": "binary", "lightgbm": "softmax", "xgboost": "rank"}
DEFAULT_BOOSTER_PARAMS: dict[str, dict[str, Any]] = {
    "catboost": {},
    "lightgbm": {"min_data_in_leaf": 200, "lambda_l2": 10.0},
    "xgboost": {"min_child_weight": 5.0, "lambda": 10.0},
}


_EXPLAINER: ThreadPoolExecutor | None = None
_EXPLAINER_LOCK = threading.Lock()


def _explainer() -> ThreadPoolExecutor:
    """The threads that explain a card while its prediction goes on (created on first use; the compiled TreeSHAP
    kernels and the libraries' native calls release the GIL, so the two overlap on a second core)."""
    global _EXPLAINER
    with _EXPLAINER_LOCK:
        if _EXPLAINER is None:
            _EXPLAINER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="racequant-explain")
        return _EXPLAINER


class _SharedTasks:
    """Tasks that an explainer thread and the thread that needs their results take in turn: whoever is free
    takes the next one, so a caller done with its own work helps instead of waiting."""

    def __init__(self, tasks: Sequence[Callable[[], np.ndarray]]) -> None:
        self._tasks = list(tasks)
        self._futures: list[Future[np.ndarray]] = [Future() for _ in self._tasks]
        self._next = 0
        self._lock = threading.Lock()

    def run(self) -> None:
        """Take and run tasks until none is left to take."""
        while True:
            with self._lock:
                k = self._next
                if k >= len(self._tasks):
                    return
                self._next += 1
            try:
                self._futures[k].set_result(self._tasks[k]())
            except BaseException as exc:  # raised to the caller of ``results``
                self._futures[k].set_exception(exc)

    def results(self) -> list[np.ndarray]:
        """Every task's result, in the tasks' order (the caller runs the tasks no thread has taken yet)."""
        self.run()
        return [future.result() for future in self._futures]


class FeatureContractError(RacequantError):
    """The frame does not carry the columns the model needs, or offers the market as a feature."""


def market_columns(columns: Sequence[str]) -> list[str]:
    """Columns that look like the market (odds-based); never fundamental features."""
    known: set[str] = set()
    try:  # the feature manifest knows its market features by category
        from racequant.features.manifest import all_specs

        known = {s.name for s in all_specs() if s.category == "market"}
    except Exception:  # the manifest may not be importable in a partial checkout
        known = set()
    return [c for c in columns if c in known or any(h in c.lower() for h in _MARKET_HINTS)]


def normalise_places(p: np.ndarray, race_ids: Sequence[object] | np.ndarray, cap: float = 0.999) -> np.ndarray:
    """Scale place probabilities to sum to the number of places in each race, none above ``cap``."""
    codes, n_races = race_codes(race_ids)
    size = np.bincount(codes, minlength=n_races)
    target = n_places(size).astype(float)
    p = np.clip(np.asarray(p, dtype=float), 1e-9, None)
    capped = np.zeros(len(p), dtype=bool)
    for _ in range(50):
        fixed = np.bincount(codes, weights=np.where(capped, p, 0.0), minlength=n_races)
        free = np.bincount(codes, weights=np.where(capped, 0.0, p), minlength=n_races)
        scale = np.divide(target - fixed, free, out=np.ones(n_races), where=free > 0)
        p = np.where(capped, p, p * scale[codes])
        over = (p > cap) & ~capped
        if not over.any():
            break
        p = np.where(over, cap, p)
        capped |= over
    # fields where every runner places (n <= n_places) are certain
    return np.where(size[codes] <= target[codes], 1.0, p)


def slice_positions(
    days: Sequence[object] | np.ndarray,
    races_per_day: Sequence[int] | np.ndarray,
    validation_fraction: float,
    calibration_fraction: float,
    validation_max_days: int | None = None,
    calibration_max_days: int | None = None,
) -> tuple[int, int] | None:
    """Positions (in the sorted race days) of the last train day and the last validation day, or None when the
    days cannot hold three slices.

    Each slice is its share of the races (the cumulative share per day, cut where it first reaches 1 - v - c and
    1 - c), capped in calendar days when ``*_max_days`` is given: the calibration slice holds at most the race
    days of the last ``calibration_max_days`` days, the validation slice at most those of the
    ``validation_max_days`` days before the calibration slice; the train slice gets the rest. Without caps the
    slices of a long expanding window grow with it (a fifth of eight years ends the boosters' training years
    before the races predicted); with them the later slices keep a fixed length just before the window's end.
    """
    d = np.asarray(pd.to_datetime(pd.Series(list(days))).to_numpy(dtype="datetime64[D]"))
    counts = np.asarray(races_per_day, dtype=float)
    if len(d) < 3:
        return None
    cum = np.cumsum(counts) / counts.sum()
    train_end = int(np.searchsorted(cum, 1 - validation_fraction - calibration_fraction))
    val_end = int(np.searchsorted(cum, 1 - calibration_fraction))
    if calibration_max_days is not None:
        first_cal = int(np.searchsorted(d, d[-1] - np.timedelta64(calibration_max_days, "D"), side="right"))
        val_end = max(val_end, first_cal - 1)
    if validation_max_days is not None and val_end + 1 < len(d):
        first_val = int(np.searchsorted(d, d[val_end + 1] - np.timedelta64(validation_max_days, "D"), side="left"))
        train_end = max(train_end, first_val - 1)
    if not (train_end < val_end < len(d) - 1):
        return None
    return train_end, val_end


def time_slices(
    dates: pd.Series,
    race_ids: pd.Series,
    validation_fraction: float,
    calibration_fraction: float,
    validation_max_days: int | None = None,
    calibration_max_days: int | None = None,
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Cut dates (end of train, end of validation) splitting races by time; a day's races stay together
    (the rule of ``slice_positions``)."""
    races = pd.DataFrame({"race_id": race_ids, "date": pd.to_datetime(dates)}).drop_duplicates("race_id")
    per_day = races.groupby("date").size().sort_index()
    cuts = slice_positions(
        per_day.index,
        per_day.to_numpy(),
        validation_fraction,
        calibration_fraction,
        validation_max_days,
        calibration_max_days,
    )
    if cuts is None:
        raise ValueError(
            "The training frame is too short to give train, validation and calibration slices on separate days "
            f"({len(per_day)} race days)."
        )
    return pd.Timestamp(per_day.index[cuts[0]]), pd.Timestamp(per_day.index[cuts[1]])


def slice_masks(
    dates: pd.Series, train_end: pd.Timestamp, val_end: pd.Timestamp
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Boolean masks (train, validation, calibration) of runners by their race date, for the cut dates of
    ``time_slices``: train up to ``train_end``, validation after it up to ``val_end``, calibration after that."""
    dates = pd.to_datetime(dates)
    return dates <= train_end, (dates > train_end) & (dates <= val_end), dates > val_end


def calibration_halves(dates: pd.Series, race_ids: pd.Series, calibration: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Masks (first half, second half) of the calibration runners: its race days split by time where the first half
    first holds half of its races (a day's races stay together, each half at least one day)."""
    races = pd.DataFrame({"race_id": race_ids[calibration], "date": pd.to_datetime(dates[calibration])})
    per_day = races.drop_duplicates("race_id").groupby("date").size().sort_index()
    if len(per_day) < 2:
        raise ValueError(
            "The 'refit_on_calibration' parameter of RacePipeline needs a calibration slice of at least 2 race days "
            f"to split in two halves. Got {len(per_day)} race day(s)."
        )
    cum = np.cumsum(per_day.to_numpy()) / per_day.sum()
    last_first = min(int(np.searchsorted(cum, 0.5)), len(per_day) - 2)
    first = calibration & (pd.to_datetime(dates) <= per_day.index[last_first])
    return first, calibration & ~first


class RacePipeline:
    """Fundamental features -> calibrated race-level win and place probabilities (sklearn contract).

    ``refit_on_calibration`` (default True) lets the stored boosters learn the calibration slice too (the latest
    races before the ones predicted) without fitting the calibrators on scores of a different model: the slice's
    race days are split by time into two halves H1 and H2 (about half of its races each, a day's races together);
    boosters trained on train + validation + H1 score H2 and boosters trained on train + validation + H2 score H1,
    each with its early-stopped number of trees. The place method, the isotonic calibrators and the interval bands
    are fitted on these cross-fitted scores (each runner scored by boosters that never saw its race), then every
    booster is refit on train + validation + calibration and those are the boosters stored and used by
    ``predict``. The temperatures, blend weights and Harville exponents stay those of the validation slice. Every
    model still sees only races of the training window. It costs two more fits of the six boosters than the
    refit on train + validation alone (which it replaces). Chosen on 2003 only (pipeline fitted before
    2003-01-01: pseudo-R2 0.1452 against 0.1404, ECE 0.0056 against 0.0064; docs/models.md); the walk-forward
    backtest keeps it off (its many folds would take twice as long).
    """

    def __init__(
        self,
        libraries: Sequence[str] = LIBRARIES,
        win_objective: str | Mapping[str, str] | None = None,
        n_estimators: int = 1000,
        learning_rate: float = 0.05,
        max_depth: int = 4,
        early_stopping_rounds: int = 100,
        validation_fraction: float = 0.15,
        calibration_fraction: float = 0.15,
        validation_max_days: int | None = None,
        calibration_max_days: int | None = None,
        calibration_group: str | None = "track",
        min_group_size: int = 2000,
        interval_confidence: float = 0.9,
        interval_method: str = "bootstrap",
        n_bootstrap: int = 100,
        place_method: str = "auto",
        top_k_features: int = 10,
        random_state: int = 0,
        n_jobs: int = 2,
        race_col: str = "race_id",
        date_col: str = "race_date",
        position_col: str = "finish_position",
        booster_params: dict[str, dict[str, Any]] | None = None,
        rank_relevance: str = "graded",
        refit_on_validation: bool = True,
        blend_place_scores: bool = True,
        refit_on_calibration: bool = True,
        feature_manifest_hash: str | None = None,
    ) -> None:
        self.libraries = libraries
        self.win_objective = win_objective
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.calibration_fraction = calibration_fraction
        self.validation_max_days = validation_max_days
        self.calibration_max_days = calibration_max_days
        self.calibration_group = calibration_group
        self.min_group_size = min_group_size
        self.interval_confidence = interval_confidence
        self.interval_method = interval_method
        self.n_bootstrap = n_bootstrap
        self.place_method = place_method
        self.top_k_features = top_k_features
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.race_col = race_col
        self.date_col = date_col
        self.position_col = position_col
        self.booster_params = booster_params
        self.rank_relevance = rank_relevance
        self.refit_on_validation = refit_on_validation
        self.blend_place_scores = blend_place_scores
        self.refit_on_calibration = refit_on_calibration
        self.feature_manifest_hash = feature_manifest_hash

    # -- helpers -------------------------------------------------------------------------------------
    def _validate_params(self) -> None:
        for name in ("validation_fraction", "calibration_fraction"):
            value = getattr(self, name)
            if not 0 < value < 0.5:
                raise ValueError(
                    f"The '{name}' parameter of RacePipeline must be a float in (0, 0.5). Got {value!r} instead."
                )
        for name in ("validation_max_days", "calibration_max_days"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1):
                raise ValueError(
                    f"The '{name}' parameter of RacePipeline must be a positive int or None. Got {value!r} instead."
                )
        if self.place_method not in ("auto", "harville", "direct"):
            raise ValueError(
                "The 'place_method' parameter of RacePipeline must be one of ('auto', 'harville', 'direct'). "
                f"Got {self.place_method!r} instead."
            )
        for name in ("refit_on_validation", "blend_place_scores", "refit_on_calibration"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"The '{name}' parameter of RacePipeline must be a bool. Got {getattr(self, name)!r} instead."
                )
        if self.rank_relevance not in ("win", "graded"):
            raise ValueError(
                "The 'rank_relevance' parameter of RacePipeline must be one of ('win', 'graded'). "
                f"Got {self.rank_relevance!r} instead."
            )
        objective = self._objectives()
        if any(o not in OBJECTIVES for o in objective.values()) or not set(self.libraries) <= set(objective):
            raise ValueError(
                f"The 'win_objective' parameter of RacePipeline must be one of {OBJECTIVES} or a mapping from each "
                f"library to one of them. Got {self.win_objective!r} instead."
            )
        unknown = [lib for lib in self.libraries if lib not in LIBRARIES]
        if unknown or not self.libraries:
            raise ValueError(
                f"The 'libraries' parameter of RacePipeline must be a non-empty subset of {LIBRARIES}. "
                f"Got {list(self.libraries)!r} instead."
            )

    def _objectives(self) -> dict[str, str]:
        """Win objective per library: the default mapping, one objective for all, or the mapping given."""
        if self.win_objective is None:
            return dict(DEFAULT_WIN_OBJECTIVE)
        if isinstance(self.win_objective, Mapping):
            return {str(k): str(v) for k, v in self.win_objective.items()}
        return dict.fromkeys(LIBRARIES, str(self.win_objective))

    def _win_objective(self, library: str) -> str:
        return self._objectives()[library]

    def _booster(
        self, library: str, objective: str, target: str = "win", n_estimators: int | None = None
    ) -> GradientBooster:
        """``booster_params[library]`` applies to both boosters of a library, ``booster_params[f"{library}_win"]``
        on top of it to the win booster only (e.g. a ranking objective's own parameters)."""
        source = DEFAULT_BOOSTER_PARAMS if self.booster_params is None else self.booster_params
        params = {**(source.get(library) or {}), **((source.get(f"{library}_win") or {}) if target == "win" else {})}
        return GradientBooster(
            library=library,
            objective=objective,
            n_estimators=self.n_estimators if n_estimators is None else n_estimators,
            learning_rate=self.learning_rate,
            max_depth=self.max_depth,
            early_stopping_rounds=self.early_stopping_rounds,
            random_state=self.random_state,
            n_jobs=self.n_jobs,
            params=params or None,
        )

    def blend_members(self) -> list[tuple[str, GradientBooster]]:
        """The blend's members in its order, (name, booster): each win booster under its library's name, then (with
        ``blend_place_scores``) each place booster as ``<library>_place``. A model saved before the option existed
        has win boosters only."""
        members = list(self.win_boosters_.items())
        if getattr(self, "blend_place_scores", False):
            members += [(f"{lib}_place", b) for lib, b in self.place_boosters_.items()]
        return members

    def _groups(self, frame: pd.DataFrame) -> np.ndarray | None:
        if self.calibration_group is None:
            return None
        return frame[self.calibration_group].to_numpy()

    def _check_columns(self, frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise FeatureContractError(
                f"The {what} frame lacks {len(missing)} column(s) the model needs: {missing[:20]}"
                + (" ..." if len(missing) > 20 else "")
            )

    # -- fit -----------------------------------------------------------------------------------------
    def fit_steps(self) -> int:
        """How many progress messages ``fit`` sends before its final "done": one per booster fitted (early-stopped,
        then the refits), one for the validation-slice stage, one for the calibration."""
        boosters = 2 * len(self.libraries)
        refits = 3 if self.refit_on_calibration else 1 if self.refit_on_validation else 0
        return boosters * (1 + refits) + 2

    def fit(
        self,
        frame: pd.DataFrame,
        feature_columns: Sequence[str],
        progress: Callable[[str], None] | None = None,
    ) -> RacePipeline:
        """Learn every stage from a frame of past runners (one row per runner, finish positions known)."""
        self._validate_params()
        say = progress or (lambda message: None)
        feature_columns = [str(c) for c in feature_columns]
        leaked = market_columns(feature_columns)
        if leaked:
            raise FeatureContractError(f"The market is never a model input; remove these feature columns: {leaked}")
        needed = [self.race_col, self.date_col, self.position_col, *feature_columns]
        if self.calibration_group is not None:
            needed.append(self.calibration_group)
        self._check_columns(frame, needed, "training")
        frame = frame.sort_values([self.date_col, self.race_col], kind="stable").reset_index(drop=True)
        dates = pd.to_datetime(frame[self.date_col])
        train_end, val_end = time_slices(
            dates,
            frame[self.race_col],
            self.validation_fraction,
            self.calibration_fraction,
            self.validation_max_days,
            self.calibration_max_days,
        )
        tr, va, ca = slice_masks(dates, train_end, val_end)
        self.feature_columns_ = feature_columns
        self.training_window_ = {
            "start": str(dates.min().date()),
            "train_end": str(train_end.date()),
            "validation_end": str(val_end.date()),
            "end": str(dates.max().date()),
            "races": {
                k: int(frame.loc[m, self.race_col].nunique())
                for k, m in (("train", tr), ("validation", va), ("calibration", ca))
            },
        }
        logger.info("time slices: %s", self.training_window_)
        race = frame[self.race_col].to_numpy()
        pos = frame[self.position_col].to_numpy(dtype=float)
        won = (pos == 1).astype(float)
        placed = placed_from_positions(pos, race).astype(float)
        # graded relevance for the ranking objectives: 3 / 2 / 1 for 1st / 2nd / 3rd, 0 otherwise
        graded = np.where(np.isfinite(pos) & (pos >= 1), np.clip(4.0 - np.nan_to_num(pos, nan=99.0), 0.0, 3.0), 0.0)
        X = frame[feature_columns]

        # 1. boosters: win and place per library, early stopping on the validation slice
        self.win_boosters_: dict[str, GradientBooster] = {}
        self.place_boosters_: dict[str, GradientBooster] = {}

        def targets(lib: str) -> tuple[tuple[str, np.ndarray, dict[str, GradientBooster], str], ...]:
            win_y = graded if self._win_objective(lib) == "rank" and self.rank_relevance == "graded" else won
            return (
                ("win", win_y, self.win_boosters_, self._win_objective(lib)),
                ("place", placed, self.place_boosters_, "binary"),
            )

        for lib in self.libraries:
            for target, y, store, objective in targets(lib):
                say(f"training {lib} {target} booster ({objective})")
                store[lib] = self._booster(lib, objective, target).fit(X[tr], y[tr], race[tr], X[va], y[va], race[va])

        # 2. race softmax temperatures and blend weights on the validation slice
        say("fitting race-level temperatures and blend weights")
        self.softmax_: dict[str, RaceSoftmax] = {}
        val_probs = []
        members = self.blend_members()
        for name, booster in members:
            scores = booster.decision_function(X[va])
            self.softmax_[name] = RaceSoftmax().fit(scores, won[va], race[va])
            val_probs.append(self.softmax_[name].predict_proba(scores, race[va]))
        self.blend_ = LogLinearPool(names=[name for name, _ in members]).fit(val_probs, won[va], race[va])
        p_val = self.blend_.predict_proba(val_probs, race[va])
        self.harville_ = DiscountedHarville().fit(p_val, pos[va], race[va])

        # 2b. refit each booster on train + validation with its early-stopped number of trees, so the boosters
        # also learn from the latest races before the calibration slice; the temperatures, blend weights and
        # Harville exponents stay those fitted above on the early-stopped boosters' out-of-sample validation
        # scores. Chosen on 2003 (docs/models.md): blend pseudo-R2 0.1465 against 0.1425 without it.
        def refit(rows: pd.Series, what: str) -> tuple[dict[str, GradientBooster], dict[str, GradientBooster]]:
            """The six boosters trained on ``rows``, each with the current booster's number of trees."""
            fitted: dict[str, dict[str, GradientBooster]] = {"win": {}, "place": {}}
            for lib in self.libraries:
                for target, y, store, objective in targets(lib):
                    trees = store[lib].best_iteration_ + 1
                    say(f"refitting {lib} {target} booster on {what} ({trees} trees)")
                    fitted[target][lib] = self._booster(lib, objective, target, n_estimators=trees).fit(
                        X[rows], y[rows], race[rows]
                    )
            return fitted["win"], fitted["place"]

        if self.refit_on_validation and not self.refit_on_calibration:  # (else each refit below learns tr + va too)
            self.win_boosters_, self.place_boosters_ = refit(tr | va, "train + validation")

        # 3. calibration slice: choose the place method, fit calibrators and intervals
        say("calibrating on the latest races of the window")
        if self.refit_on_calibration:
            # cross-fitting: each half of the calibration slice is scored by boosters trained on the other half
            # (and on train + validation), so the calibrators see out-of-sample scores of boosters that, like the
            # final ones, learned the calibration year; then the final boosters learn the whole window
            first, second = calibration_halves(dates, frame[self.race_col], ca)
            self.calibration_halves_ = {
                "first_end": str(dates[first].max().date()),
                "second_start": str(dates[second].min().date()),
                "races": {
                    k: int(frame.loc[m, self.race_col].nunique()) for k, m in (("first", first), ("second", second))
                },
            }
            logger.info("cross-fitted calibration halves: %s", self.calibration_halves_)
            scored = []
            for learned, held_out, what in (
                (first, second, "train + validation + first calibration half"),
                (second, first, "train + validation + second calibration half"),
            ):
                win, place = refit(tr | va | learned, what)
                scored.append(self._base(frame[held_out], win_boosters=win, place_boosters=place))
            cal = pd.concat(scored).loc[frame.index[ca.to_numpy()]]
            self.win_boosters_, self.place_boosters_ = refit(tr | va | ca, "train + validation + calibration")
        else:
            cal = self._base(frame[ca])
        p_place_h = cal["place_prob_harville"].to_numpy()
        p_place_d = cal["place_prob_direct"].to_numpy()
        self.place_log_loss_ = {
            "harville": M.place_log_loss(p_place_h, placed[ca]),
            "direct": M.place_log_loss(p_place_d, placed[ca]),
        }
        if self.place_method == "auto":
            self.place_method_ = min(self.place_log_loss_, key=self.place_log_loss_.get)  # type: ignore[arg-type]
        else:
            self.place_method_ = self.place_method
        logger.info("place log loss on calibration races %s: keeping %s", self.place_log_loss_, self.place_method_)
        p_place_base = p_place_h if self.place_method_ == "harville" else p_place_d
        groups = self._groups(frame[ca])
        p_win_base = cal["win_prob_base"].to_numpy()
        cal_dates = dates[ca].to_numpy()
        self.win_calibrator_ = GroupIsotonicCalibrator(self.min_group_size).fit(
            p_win_base, won[ca], groups, dates=cal_dates, not_before=val_end
        )
        self.place_calibrator_ = GroupIsotonicCalibrator(self.min_group_size).fit(
            p_place_base, placed[ca], groups, dates=cal_dates, not_before=val_end
        )
        interval_args = {
            "confidence": self.interval_confidence,
            "method": self.interval_method,
            "n_bootstrap": self.n_bootstrap,
            "min_group_size": self.min_group_size,
            "random_state": self.random_state,
        }
        self.win_intervals_ = GroupProbabilityIntervals(**interval_args).fit(p_win_base, won[ca], groups, race[ca])
        self.place_intervals_ = GroupProbabilityIntervals(**interval_args).fit(
            p_place_base, placed[ca], groups, race[ca]
        )
        self.validation_metrics_ = {
            "calibration_races_uncalibrated": M.benchmark_metrics(
                race[ca], p_win_base, won[ca], p_place_base, placed[ca]
            ),
            "per_model_pseudo_r2": {
                f"{lib}_win": M.pseudo_r2(race[ca], cal[f"{lib}_win"], won[ca]) for lib in self.win_boosters_
            },
            "place_log_loss": self.place_log_loss_,
            "place_method": self.place_method_,
            "harville": {"g": self.harville_.g_, "d": self.harville_.d_},
            "blend_weights": {
                name: float(w) for (name, _), w in zip(self.blend_members(), self.blend_.weights_, strict=True)
            },
            "temperatures": {lib: s.temperature_ for lib, s in self.softmax_.items()},
            "best_iterations": {
                f"{lib}_{t}": b.best_iteration_ + 1
                for t, d in (("win", self.win_boosters_), ("place", self.place_boosters_))
                for lib, b in d.items()
            },
        }
        self.calibrated_until_ = str(pd.Timestamp(cal_dates.max()).date())
        say("done")
        return self

    # -- predict -------------------------------------------------------------------------------------
    def _inputs(self, frame: pd.DataFrame) -> Callable[[GradientBooster], pd.DataFrame | PreparedFeatures]:
        """Each booster's input: the feature frame, or for a few runners (a card) the arrays prepared once for
        all boosters (the same predictions, without six per-column conversions and six thread pools)."""
        X = frame[self.feature_columns_]
        if len(X) > SMALL_BATCH_ROWS:
            return lambda booster: X
        prepared: dict[tuple[Any, ...], PreparedFeatures] = {}

        def shared(booster: GradientBooster) -> PreparedFeatures:
            key = booster.prediction_key()
            if key not in prepared:
                prepared[key] = booster.prepare(X)
            return prepared[key]

        return shared

    def _base(
        self,
        frame: pd.DataFrame,
        inputs: Callable[[GradientBooster], pd.DataFrame | PreparedFeatures] | None = None,
        win_boosters: Mapping[str, GradientBooster] | None = None,
        place_boosters: Mapping[str, GradientBooster] | None = None,
    ) -> pd.DataFrame:
        """Uncalibrated per-model and blended win probabilities, and both place estimates; by the stored boosters,
        or by ``win_boosters`` and ``place_boosters`` in their place (the cross-fitted calibration scores)."""
        inputs = inputs or self._inputs(frame)
        win_boosters = self.win_boosters_ if win_boosters is None else win_boosters
        place_boosters = self.place_boosters_ if place_boosters is None else place_boosters
        race = frame[self.race_col].to_numpy()
        out: dict[str, np.ndarray] = {}  # one DataFrame at the end: column inserts cost more than a card's trees
        # each booster scored once: a place booster's logit gives the direct place probability and, when the blend
        # takes the place boosters too, their race-softmax win probability
        scores = {lib: b.decision_function(inputs(b)) for lib, b in win_boosters.items()}
        place_scores = {lib: b.decision_function(inputs(b)) for lib, b in place_boosters.items()}
        scores.update({f"{lib}_place": s for lib, s in place_scores.items()})
        probs = [self.softmax_[name].predict_proba(scores[name], race) for name, _ in self.blend_members()]
        for lib, p in zip(win_boosters, probs, strict=False):  # the win boosters come first
            out[f"{lib}_win"] = p
        out["win_prob_base"] = self.blend_.predict_proba(probs, race)
        out["place_prob_harville"] = self.harville_.predict_place(out["win_prob_base"], race)
        direct = np.mean([1.0 / (1.0 + np.exp(-s)) for s in place_scores.values()], axis=0)
        out["place_prob_direct"] = normalise_places(direct, race)
        return pd.DataFrame(out, index=frame.index)

    def predict(self, frame: pd.DataFrame, explain: bool = True, check_order: bool = True) -> pd.DataFrame:
        """One row per runner: race_id, horse_id, {lib}_win, win_prob_base, place_prob_base, win_prob,
        place_prob, their lower/upper bounds, calibration_group and top_features.

        With ``check_order`` (the default) races on or before the last calibration race are refused.
        """
        if not hasattr(self, "win_calibrator_"):
            raise method_order_error("fit", "predict")
        needed = [self.race_col, *self.feature_columns_]
        if self.calibration_group is not None:
            needed.append(self.calibration_group)
        if check_order:
            needed.append(self.date_col)
        self._check_columns(frame, needed, "prediction")
        race = frame[self.race_col].to_numpy()
        codes, n_races = race_codes(race)
        inputs = self._inputs(frame)
        # a card's explanations start now, on the explainer threads, beside the rest of its prediction
        explained = self._explain(frame, inputs, _explainer()) if explain and len(frame) <= SMALL_BATCH_ROWS else None
        base = self._base(frame, inputs)
        groups = self._groups(frame)
        dates = frame[self.date_col].to_numpy() if check_order else None

        p_win_base = base["win_prob_base"].to_numpy()
        p_place_base = base[f"place_prob_{self.place_method_}"].to_numpy()
        iso_win = self.win_calibrator_.transform(p_win_base, groups, dates)
        win = normalise_in_race(iso_win, codes, n_races)
        iso_place = self.place_calibrator_.transform(p_place_base, groups, dates)
        place = normalise_places(iso_place, race)

        columns: dict[str, Any] = {self.race_col: race}
        if "horse_id" in frame.columns:
            columns["horse_id"] = frame["horse_id"].to_numpy()
        for col in [f"{lib}_win" for lib in self.win_boosters_]:
            columns[col] = base[col].to_numpy()
        columns["win_prob_base"] = p_win_base
        columns["place_prob_base"] = p_place_base
        columns["win_prob"] = win
        columns["place_prob"] = place
        for name, estimator, p_base, iso, final in (
            ("win", self.win_intervals_, p_win_base, iso_win, win),
            ("place", self.place_intervals_, p_place_base, iso_place, place),
        ):
            lower, upper = estimator.predict_interval(p_base, groups)
            # carry the race re-normalisation over to the bounds
            factor = np.divide(final, iso, out=np.ones_like(final), where=iso > 0)
            columns[f"{name}_prob_lower"] = np.clip(np.minimum(lower * factor, final), 0.0, 1.0)
            columns[f"{name}_prob_upper"] = np.clip(np.maximum(upper * factor, final), 0.0, 1.0)
        columns["calibration_group"] = self.win_calibrator_.group_of(groups, len(frame))
        out = pd.DataFrame(columns, index=frame.index)
        if explain:
            out["top_features"] = self._top(self._sum_contributions(explained or self._explain(frame, inputs)))
        return out

    def contributions(
        self, frame: pd.DataFrame, inputs: Callable[[GradientBooster], pd.DataFrame | PreparedFeatures] | None = None
    ) -> np.ndarray:
        """Per-runner contributions of each feature to the blended log-score (TreeSHAP, weighted as the blend)."""
        return self._sum_contributions(self._explain(frame, inputs or self._inputs(frame)))

    def top_features(
        self, frame: pd.DataFrame, inputs: Callable[[GradientBooster], pd.DataFrame | PreparedFeatures] | None = None
    ) -> list[list[dict[str, float | str]]]:
        """The ``top_k_features`` largest contributions (by size, signed) per runner."""
        return self._top(self.contributions(frame, inputs))

    def _explain(
        self,
        frame: pd.DataFrame,
        inputs: Callable[[GradientBooster], pd.DataFrame | PreparedFeatures],
        pool: Executor | None = None,
    ) -> tuple[int, list[float], _SharedTasks]:
        """Each blend member's TreeSHAP as a task, with its weight in the blended log-score. With ``pool``, one of
        its threads starts on the tasks at once (the compiled kernels and the libraries' native calls release the
        GIL) and the caller takes the tasks left when it asks for the sum; without, the caller runs them all
        then. Every booster's inputs are prepared first, on the calling thread, so that the threads only read
        them."""
        if not hasattr(self, "blend_"):
            raise method_order_error("fit", "contributions")
        scales, tasks = [], []
        for weight, (name, booster) in zip(self.blend_.weights_, self.blend_members(), strict=True):
            if weight == 0:
                continue
            prepared = inputs(booster)
            if booster.library == "catboost" and isinstance(prepared, PreparedFeatures):
                booster.catboost_pool(prepared)  # built once here, not raced for by two threads
            scales.append(weight / self.softmax_[name].temperature_)
            tasks.append(functools.partial(booster.contributions, prepared))
        shared = _SharedTasks(tasks)
        if pool is not None:
            pool.submit(shared.run)
        return len(frame), scales, shared

    def _sum_contributions(self, explained: tuple[int, list[float], _SharedTasks]) -> np.ndarray:
        n, scales, shared = explained
        total = np.zeros((n, len(self.feature_columns_)))
        for scale, part in zip(scales, shared.results(), strict=True):  # in the members' order, whoever ran them
            total += scale * part
        return total

    def _top(self, contrib: np.ndarray) -> list[list[dict[str, float | str]]]:
        k = min(self.top_k_features, contrib.shape[1])
        top = np.argsort(-np.abs(contrib), axis=1)[:, :k]
        names = np.asarray(self.feature_columns_)
        return [
            [{"feature": str(names[j]), "importance": round(float(row[j]), 6)} for j in idx]
            for row, idx in zip(contrib, top, strict=True)
        ]
