"""The walk-forward backtest: a plain function that clones a fresh estimator for every fold.

``run_backtest(frame, estimator, splitter)``:

1. the splitter cuts the race days into frozen folds (it owns time);
2. each fold fits a clone of the estimator on its training window only (the estimator's own validation
   and calibration slices are checked against the fold's dates) and predicts its test window; folds run
   serially, or on Dask (a local cluster of worker processes, or an existing scheduler) with identical
   results;
3. the market's odds-implied probabilities are scored on the same races;
4. the second stage (Benter): for each fold, c ~ exp(a log p_model + b log p_market) is fitted on the
   out-of-sample predictions of the EARLIER folds only, and applied to this fold; the market alone is
   recalibrated the same way (c ~ exp(b log p_market)) so that part of any gain that is the market's
   own correction shows;
5. betting: fractional Kelly on the real win and place odds, a bankroll walked race by race in start order.

The frame is one row per runner (withdrawn runners excluded) with race_id, horse_id, date, finish_position,
win_odds, optional place_odds, race_no, off_time, track, race_class, and the feature columns. The market
columns never reach the estimator.
"""

from __future__ import annotations

import copy
import inspect
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from racequant.backtest import metrics as BM
from racequant.backtest.splitter import Fold, WalkForwardSplit
from racequant.betting.kelly import KellyStaking
from racequant.betting.settlement import settle_place, settle_win
from racequant.errors import ConfigurationError, RacequantError
from racequant.fusion.pooling import LogLinearPool
from racequant.models.place import placed_from_positions
from racequant.models.race import race_codes

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

_MARKET_HINTS = ("market", "odds", "overround", "dividend")
_KEYS = ("race_id", "horse_id", "date", "race_no", "off_time", "track", "race_class", "status", "race_seq", "race_date")
_OUTCOMES = ("finish_position", "won", "placed", "margin_lengths", "finish_time_s", "true_win_prob")
_PRED_COLS = (
    "win_prob_base",
    "place_prob_base",
    "win_prob",
    "place_prob",
    "win_prob_lower",
    "win_prob_upper",
    "place_prob_lower",
    "place_prob_upper",
)


class BacktestError(RacequantError):
    """The backtest cannot run as asked (no fold, an estimator that breaks the fold's time slices...)."""


@dataclass(frozen=True)
class BettingConfig:
    """How the backtest bets: which probabilities, Kelly settings, and whether to bet to place."""

    probabilities: Literal["combined", "fundamental"] = "combined"
    staking: KellyStaking = field(default_factory=KellyStaking)
    place_bets: bool = True
    initial_bankroll: float = 1.0

    def __post_init__(self) -> None:
        if self.probabilities not in ("combined", "fundamental"):
            raise ConfigurationError(
                "The 'probabilities' parameter of BettingConfig must be one of ('combined', 'fundamental'). "
                f"Got {self.probabilities!r} instead."
            )
        if not self.initial_bankroll > 0:
            raise ConfigurationError(
                "The 'initial_bankroll' parameter of BettingConfig must be a positive float. "
                f"Got {self.initial_bankroll!r} instead."
            )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["staking"] = asdict(self.staking)
        return out


@dataclass
class BacktestResult:
    """Everything a backtest produced: folds, per-runner test predictions and bets, metrics, bankroll."""

    run_id: str
    params: dict[str, Any]
    folds: list[Fold]
    fold_info: list[dict[str, Any]]
    predictions: pd.DataFrame
    bankroll: pd.DataFrame
    metrics: dict[str, Any]
    seconds: float

    @property
    def headline(self) -> list[dict[str, Any]]:
        """Rows of the headline table: model, market, market recalibrated, combined."""
        return headline_rows(self.metrics)


# -- estimators ---------------------------------------------------------------------------------------


def fresh_estimator(estimator_or_factory: Any) -> Any:
    """An unfitted copy: the estimator's own ``clone``, sklearn's clone, its ``__init__`` parameters, or a
    factory called with no arguments."""
    est = estimator_or_factory
    if not hasattr(est, "fit") and callable(est):
        return est()
    if hasattr(est, "clone") and callable(est.clone):
        return est.clone()
    if hasattr(est, "get_params"):
        from sklearn.base import clone

        return clone(est)
    params = [
        p.name
        for p in inspect.signature(type(est).__init__).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    return type(est)(**{name: copy.deepcopy(getattr(est, name)) for name in params})


def is_market_column(name: str) -> bool:
    return any(h in name.lower() for h in _MARKET_HINTS)


def default_feature_columns(frame: pd.DataFrame) -> list[str]:
    """The fundamental features of the frame: the manifest's, else every numeric non-key, non-market column."""
    try:
        from racequant.features.manifest import fundamental_specs

        names = [s.name for s in fundamental_specs() if s.name in frame.columns]
    except Exception:  # a partial checkout without the manifest
        names = []
    if names:
        return names
    return [
        c
        for c in frame.columns
        if c not in _KEYS and c not in _OUTCOMES and not is_market_column(c) and pd.api.types.is_numeric_dtype(frame[c])
    ]


# -- one fold -----------------------------------------------------------------------------------------


def run_fold(frame: pd.DataFrame, estimator_or_factory: Any, fold: Fold, feature_columns: Sequence[str]) -> dict:
    """Fit a fresh estimator on the fold's training window and predict its test window (one task)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    visible = [c for c in frame.columns if not is_market_column(c)]  # the market never reaches the model
    train = frame.loc[fold.train_mask(frame["date"]), visible]
    test = frame.loc[fold.test_mask(frame["date"]), visible]
    estimator = fresh_estimator(estimator_or_factory)
    date_col = getattr(estimator, "date_col", "date")
    if isinstance(date_col, str) and date_col not in train.columns:  # e.g. the pipeline's race_date
        train = train.assign(**{date_col: train["date"]})
        test = test.assign(**{date_col: test["date"]})
    estimator.fit(train, list(feature_columns))
    window = getattr(estimator, "training_window_", None)
    if isinstance(window, dict) and "train_end" in window and "validation_end" in window:
        got = (str(window["train_end"]), str(window["validation_end"]))
        want = (fold.fit_end.isoformat(), fold.validation_end.isoformat())
        if got != want:
            raise BacktestError(
                f"Fold {fold.index}: the estimator cut its training window at {got} (fit end, validation end), "
                f"the fold at {want}; give the splitter the estimator's validation and calibration fractions."
            )
    fitted, cpu_fitted = time.perf_counter(), time.process_time()
    if "explain" in inspect.signature(estimator.predict).parameters:
        pred = estimator.predict(test, explain=False)  # per-runner feature attributions are not scored here
    else:
        pred = estimator.predict(test)
    out = pd.DataFrame({"race_id": test["race_id"].to_numpy(), "horse_id": test["horse_id"].to_numpy()})
    for col in _PRED_COLS:
        if col in pred.columns:
            out[col] = pred[col].to_numpy(dtype=float)
    if "win_prob" not in out.columns:
        out["win_prob"] = out["win_prob_base"]
    if "place_prob" not in out.columns:
        out["place_prob"] = out["place_prob_base"]
    out["fold"] = fold.index
    info: dict[str, Any] = {
        **fold.as_dict(),
        "n_train_races": int(train["race_id"].nunique()),
        "n_test_races": int(test["race_id"].nunique()),
        "fit_seconds": round(fitted - started, 3),
        "predict_seconds": round(time.perf_counter() - fitted, 3),
        # CPU of the process running the fold (all its threads): with one thread per booster, the fold's cost
        "fit_cpu_seconds": round(cpu_fitted - cpu_started, 3),
        "predict_cpu_seconds": round(time.process_time() - cpu_fitted, 3),
    }
    if isinstance(window, dict):
        info["training_window"] = {k: v for k, v in window.items() if isinstance(v, str | int | float)}
    return {"predictions": out, "info": info}


def dispatch_order(frame: pd.DataFrame, folds: Sequence[Fold]) -> list[int]:
    """Positions of ``folds`` in the order a cluster should start them: the most training runners first.

    A fold's cost grows with its training window, so an expanding run's last folds are its longest; started
    last, they would leave the other workers idle at the end (longest-processing-time-first list scheduling
    bounds that tail by the smallest folds instead). Ties keep fold order. ``frame`` is sorted by date."""
    dates = frame["date"].to_numpy(dtype="datetime64[D]")
    sizes = [fold.train_rows(dates) for fold in folds]
    return sorted(range(len(folds)), key=lambda i: (-sizes[i], i))


def _cluster_slots(client: Any) -> int:
    """Tasks the cluster runs at once (the threads of its workers), at least one."""
    try:
        workers = client.scheduler_info().get("workers", {})
        return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))
    except Exception:  # a scheduler that does not report its workers: one at a time is still correct
        return 1


def _map_folds(
    frame: pd.DataFrame,
    estimator: Any,
    folds: list[Fold],
    feature_columns: list[str],
    workers: int | None,
    scheduler: str | None,
    progress: Progress | None,
) -> list[dict]:
    total = len(folds)
    say = progress or (lambda done, n: logger.info("fold %d/%d done", done, n))
    if workers is None and scheduler is None:
        results = []
        for i, fold in enumerate(folds):
            results.append(run_fold(frame, estimator, fold, feature_columns))
            say(i + 1, total)
        return results

    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is not None:
        client = Client(scheduler)
    else:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigurationError(
                f"The 'workers' parameter of run_backtest must be a positive int. Got {workers!r} instead."
            )
        cluster = LocalCluster(
            n_workers=workers,
            processes=True,
            threads_per_worker=1,
            dashboard_address=":0",
            silence_logs=logging.WARNING,
        )
        client = Client(cluster)
    try:
        logger.info("running %d folds on %s", total, client)
        shared = client.scatter(frame, broadcast=True)
        token = uuid.uuid4().hex[:8]
        # Largest folds first, and only as many in flight as the cluster has threads: each worker takes the
        # largest fold left when it frees up (submitted all at once, tasks are spread over the workers before
        # any has run, and an expanding run ended on one worker running its largest fold alone).
        queue = iter(dispatch_order(frame, folds))
        position: dict[str, int] = {}

        def submit(i: int) -> Any:
            future = client.submit(
                run_fold, shared, estimator, folds[i], feature_columns, key=f"fold-{folds[i].index}-{token}", pure=False
            )
            position[future.key] = i
            return future

        running = as_completed([submit(i) for _, i in zip(range(_cluster_slots(client)), queue, strict=False)])
        results: list[dict | None] = [None] * total
        for done, future in enumerate(running, start=1):
            results[position[future.key]] = future.result()
            nxt = next(queue, None)
            if nxt is not None:
                running.add(submit(nxt))
            say(done, total)
        missing = [folds[i].index for i, r in enumerate(results) if r is None]
        if missing:
            raise BacktestError(f"The cluster returned no result for the fold(s) {missing}.")
        return results  # type: ignore[return-value]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# -- market and second stage --------------------------------------------------------------------------


def add_market(pred: pd.DataFrame, min_overround: float = 1.0) -> pd.DataFrame:
    """market_prob = (1/odds) / sum over the race of 1/odds; market_ok where every runner of the race is priced
    and sum(1/odds) >= ``min_overround``. A pari-mutuel pool that takes its cut cannot have a book under 1: such
    a race is missing runners in the data (its odds-implied chances and the model's are both wrong), so it is
    neither scored for the market nor bet on."""
    odds = pred["win_odds"].to_numpy(dtype=float)
    priced = np.isfinite(odds) & (odds > 1.0)
    q = np.where(priced, 1.0 / np.where(priced, odds, 1.0), 0.0)
    codes, n_races = race_codes(pred["race_id"].to_numpy())
    total = np.bincount(codes, weights=q, minlength=n_races)
    all_priced = np.bincount(codes, weights=(~priced).astype(float), minlength=n_races) == 0
    pred["market_ok"] = (all_priced & (total >= min_overround))[codes]
    pred["market_prob"] = np.where(pred["market_ok"], q / np.where(total > 0, total, 1.0)[codes], np.nan)
    pred["overround"] = total[codes]
    return pred


def add_second_stage(pred: pd.DataFrame, folds: list[Fold], model_col: str, min_races: int) -> list[dict]:
    """combined_prob and market_recal_prob per fold, fitted on earlier folds only; returns a, b per fold."""
    pred["combined_prob"] = np.nan
    pred["market_recal_prob"] = np.nan
    log_model = np.log(np.clip(pred[model_col].to_numpy(dtype=float), 1e-12, None))
    log_market = np.log(np.clip(pred["market_prob"].to_numpy(dtype=float), 1e-12, None))
    usable = pred["market_ok"].to_numpy() & np.isfinite(log_market)
    fold_of = pred["fold"].to_numpy()
    # integer codes for the race ids: the pools number races by first appearance whatever the ids are, so the
    # fits are the same, without sorting tens of thousands of id strings twice per fit (two fits per fold)
    race = race_codes(pred["race_id"].to_numpy())[0]
    won = pred["won"].to_numpy(dtype=float)
    coefs = []
    for fold in folds:
        past = usable & (fold_of < fold.index)
        here = usable & (fold_of == fold.index)
        n_past = len(np.unique(race[past]))
        row: dict[str, Any] = {
            "fold": fold.index,
            "n_races_fitted": n_past,
            "a": None,
            "b": None,
            "a_se": None,
            "b_se": None,
            "b_market_only": None,
        }
        if n_past >= min_races and here.any():
            both = np.column_stack([log_model, log_market])
            pool = LogLinearPool().fit(both[past], race[past], won[past])
            recal = LogLinearPool().fit(log_market[past][:, None], race[past], won[past])
            pred.loc[here, "combined_prob"] = pool.predict_proba(both[here], race[here])
            pred.loc[here, "market_recal_prob"] = recal.predict_proba(log_market[here][:, None], race[here])
            row.update(
                a=float(pool.coef_[0]),
                b=float(pool.coef_[1]),
                a_se=float(pool.coef_se_[0]),
                b_se=float(pool.coef_se_[1]),
                b_market_only=float(recal.coef_[0]),
            )
        coefs.append(row)
    return coefs


# -- betting ------------------------------------------------------------------------------------------


def _start_order(pred: pd.DataFrame) -> pd.DataFrame:
    sort = [c for c in ("date", "race_no", "off_time", "race_id") if c in pred.columns]
    return pred.sort_values(sort, kind="stable")


def add_bets(pred: pd.DataFrame, betting: BettingConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Kelly stakes and returns per runner for both probability sources; the bankroll walk per race.

    Each source is one betting run with one bankroll: before each race, in start order, its win stakes and its
    place stakes are both sized as fractions of the bankroll as it stands then, and the race's win and place
    profits both move it. ``bankroll_{source}`` is that bankroll after each race, so it ends at the initial
    bankroll plus every win and place profit of the source, and every stake is its fraction of the bankroll
    the curve shows before the race.
    """
    pred = _start_order(pred).reset_index(drop=True)
    race = pred["race_id"].to_numpy()
    pos = pred["finish_position"].to_numpy(dtype=float)
    status = pred["status"].to_numpy() if "status" in pred.columns else None
    win_odds = pred["win_odds"].to_numpy(dtype=float)
    place_odds = (
        pred["place_odds"].to_numpy(dtype=float) if "place_odds" in pred.columns else np.full(len(pred), np.nan)
    )
    codes, n_races = race_codes(race)  # in start order, since pred is sorted
    bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True])
    market_ok = pred["market_ok"].to_numpy()
    staking = betting.staking
    # what one unit staked returns (stake included): independent of the stake, so settled once
    win_payout = settle_win(np.ones(len(pred)), win_odds, pos, race, status)
    place_payout = settle_place(np.ones(len(pred)), place_odds, pos, race, status)
    p_place = pred["place_prob"].to_numpy(dtype=float)
    curves: dict[str, np.ndarray] = {}
    for src, col in (("fundamental", "win_prob"), ("combined", "combined_prob")):
        p_win = pred[col].to_numpy(dtype=float)
        stake_win, stake_place = np.zeros(len(pred)), np.zeros(len(pred))
        bank = betting.initial_bankroll
        curve = np.empty(n_races)
        for r in range(n_races):
            lo, hi = bounds[r], bounds[r + 1]
            sl = slice(lo, hi)
            active = np.isfinite(p_win[sl])  # combined only where the second stage applied
            if not active.any() or not market_ok[lo]:
                curve[r] = bank
                continue
            f_win = staking.win_fractions(np.where(active, p_win[sl], 0.0), win_odds[sl])
            if betting.place_bets and active.all() and hi - lo >= 4:
                f_place = staking.place_fractions(p_place[sl], place_odds[sl])
            else:
                f_place = np.zeros(hi - lo)
            if f_win.any() or f_place.any():
                s_win, s_place = f_win * bank, f_place * bank  # both on the bankroll before the race
                stake_win[sl], stake_place[sl] = s_win, s_place
                bank += float(s_win @ win_payout[sl] - s_win.sum() + s_place @ place_payout[sl] - s_place.sum())
            curve[r] = bank
        pred[f"stake_win_{src}"] = stake_win
        pred[f"return_win_{src}"] = stake_win * win_payout
        pred[f"stake_place_{src}"] = stake_place
        pred[f"return_place_{src}"] = stake_place * place_payout
        curves[f"bankroll_{src}"] = curve
    # flat references: one unit on the model's top pick and on the market favourite, every race
    for name, score in (
        ("top_pick", pred["win_prob"].to_numpy(dtype=float)),
        ("favourite", -np.nan_to_num(win_odds, nan=np.inf)),
    ):
        order = np.lexsort((-score, codes))
        first = order[np.r_[True, codes[order][1:] != codes[order][:-1]]]
        stake = np.zeros(len(pred))
        stake[first] = np.where(np.isfinite(win_odds[first]) & market_ok[first], 1.0, 0.0)
        pred[f"stake_flat_{name}"] = stake
        pred[f"return_flat_{name}"] = settle_win(stake, win_odds, pos, race, status)
    first_rows = bounds[:-1]
    bankroll = pd.DataFrame({"race_id": race[first_rows], "date": pred["date"].to_numpy()[first_rows], **curves})
    for name in ("top_pick", "favourite"):
        profit = pred[f"return_flat_{name}"] - pred[f"stake_flat_{name}"]
        bankroll[f"flat_{name}_profit"] = np.cumsum(np.bincount(codes, weights=profit.to_numpy(), minlength=n_races))
    return pred, bankroll


# -- the run ------------------------------------------------------------------------------------------


@threadpool_limits.wrap(limits=1, user_api="blas")
def evaluate_fold_predictions(
    frame: pd.DataFrame,
    raw: pd.DataFrame,
    folds: list[Fold],
    fold_info: list[dict[str, Any]],
    *,
    betting: BettingConfig,
    second_stage_min_races: int = 200,
    n_bootstrap: int = 1000,
    random_state: int = 0,
    min_overround: float = 1.0,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Everything after the folds: outcomes, market, second stage, bets and metrics, from the folds' raw test
    predictions (race_id, horse_id, fold, win_prob, place_prob, ...). Deterministic; runs in the client.

    On one BLAS thread (the decorator): its products are a few columns wide (the second stage's 160 pools), too
    small for a second thread, whose start and spin-wait made the second stage of HK 1998-2005 cost 11 s of CPU
    instead of 2 (and 10-20 s of wall on a busy machine); the figures are the same."""
    pred = raw.copy()
    keep = [c for c in (*_KEYS, "finish_position", "win_odds", "place_odds", "true_win_prob") if c in frame.columns]
    pred = pred.merge(frame[keep], on=["race_id", "horse_id"], how="left", validate="one_to_one")
    pred["won"] = (pred["finish_position"].to_numpy(dtype=float) == 1).astype(np.int8)
    pred["placed"] = placed_from_positions(pred["finish_position"].to_numpy(dtype=float), pred["race_id"].to_numpy())
    pred = add_market(pred, min_overround)
    coefs = add_second_stage(pred, folds, "win_prob", second_stage_min_races)
    pred, bankroll = add_bets(pred, betting)

    source = betting.probabilities
    metrics: dict[str, Any] = BM.all_metrics(pred, source=source, n_boot=n_bootstrap, seed=random_state)
    for src in ("fundamental", "combined"):
        curve = bankroll[f"bankroll_{src}"].to_numpy()
        metrics[f"final_bankroll_{src}"] = float(curve[-1]) if len(curve) else betting.initial_bankroll
    metrics["n_races_incomplete_market"] = int(pred.loc[~pred["market_ok"], "race_id"].nunique())
    fitted = [c for c in coefs if c["a"] is not None]
    metrics["second_stage"] = {
        "a_last": fitted[-1]["a"] if fitted else None,
        "b_last": fitted[-1]["b"] if fitted else None,
        "a_mean": float(np.mean([c["a"] for c in fitted])) if fitted else None,
        "b_mean": float(np.mean([c["b"] for c in fitted])) if fitted else None,
        "per_fold": coefs,
    }
    metrics["by_fold"] = BM.grouped_metrics(pred, "fold", source=source, n_boot=200, seed=random_state)
    metrics["by_track"] = BM.grouped_metrics(pred, "track", source=source, n_boot=200, seed=random_state)
    metrics["by_class"] = BM.grouped_metrics(pred, "race_class", source=source, n_boot=200, seed=random_state)
    metrics["roi_by_odds_band"] = BM.roi_by_odds_band(pred, source)
    metrics["reliability"] = BM.reliability(pred)
    for info, coef in zip(fold_info, coefs, strict=True):
        info.update({k: v for k, v in coef.items() if k != "fold"})
    metrics["folds"] = fold_info
    return pred, bankroll, metrics


def _check_fractions(estimator: Any, splitter: WalkForwardSplit) -> Any:
    """The estimator whose slices are the splitter's: fractions must be equal; an estimator with slice caps
    (``validation_max_days``, ``calibration_max_days``) left at None gets the splitter's (a copy), other values
    must be equal. Returns the estimator to clone per fold."""
    for name in ("validation_fraction", "calibration_fraction"):
        mine = getattr(estimator, name, None)
        if mine is not None and mine != getattr(splitter, name):
            raise ConfigurationError(
                f"The '{name}' parameter of WalkForwardSplit must equal the estimator's ({mine!r}) so that the "
                f"fold's slices are the estimator's. Got {getattr(splitter, name)!r} instead."
            )
    adopt = {}
    for name in ("validation_max_days", "calibration_max_days"):
        if not hasattr(estimator, name):
            continue
        mine, theirs = getattr(estimator, name), getattr(splitter, name)
        if mine is None and theirs is not None:
            adopt[name] = theirs
        elif mine != theirs:
            raise ConfigurationError(
                f"The '{name}' parameter of WalkForwardSplit must equal the estimator's ({mine!r}) so that the "
                f"fold's slices are the estimator's. Got {theirs!r} instead."
            )
    if adopt:
        estimator = fresh_estimator(estimator)
        for name, value in adopt.items():
            setattr(estimator, name, value)
    return estimator


def _prepare(frame: pd.DataFrame) -> pd.DataFrame:
    needed = ("race_id", "horse_id", "date", "finish_position", "win_odds")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise BacktestError(f"The backtest frame lacks the column(s) {missing}.")
    frame = frame.copy()
    if "status" in frame.columns:
        frame = frame[frame["status"].astype("string").fillna("") != "withdrawn"]
    frame["date"] = pd.to_datetime(frame["date"])
    sort = [c for c in ("date", "race_no", "off_time", "race_id", "horse_id") if c in frame.columns]
    return frame.sort_values(sort, kind="stable").reset_index(drop=True)


def run_backtest(
    frame: pd.DataFrame,
    pipeline_factory_or_estimator: Any,
    splitter: WalkForwardSplit,
    *,
    feature_columns: Sequence[str] | None = None,
    betting: BettingConfig | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Progress | None = None,
    second_stage_min_races: int = 200,
    n_bootstrap: int = 1000,
    random_state: int = 0,
    min_overround: float = 1.0,
) -> BacktestResult:
    """Walk forward over ``splitter``'s folds; see the module docstring. ``workers``/``scheduler`` None: serial."""
    started = time.perf_counter()
    betting = betting or BettingConfig()
    if workers is not None and scheduler is not None:
        raise ConfigurationError("Give run_backtest either 'workers' or 'scheduler', not both.")
    estimator = pipeline_factory_or_estimator
    if hasattr(estimator, "fit"):
        estimator = _check_fractions(estimator, splitter)
    frame = _prepare(frame)
    columns = list(feature_columns) if feature_columns is not None else default_feature_columns(frame)
    leaked = [c for c in columns if is_market_column(c)]
    if leaked:
        raise BacktestError(f"The market is never a model input; remove these feature columns: {leaked}")
    if not columns:
        raise BacktestError("The backtest frame has no feature columns.")
    folds = splitter.split(frame)
    if not folds:
        raise BacktestError(
            f"No fold: the data has no race day between {splitter.start} and {splitter.end} with enough history."
        )
    logger.info(
        "backtest: %d folds, %s to %s, %d features", len(folds), folds[0].test_start, folds[-1].test_end, len(columns)
    )
    outputs = _map_folds(frame, estimator, folds, columns, workers, scheduler, progress)

    fold_info = [o["info"] for o in outputs]
    pred, bankroll, metrics = evaluate_fold_predictions(
        frame,
        pd.concat([o["predictions"] for o in outputs], ignore_index=True),
        folds,
        fold_info,
        betting=betting,
        second_stage_min_races=second_stage_min_races,
        n_bootstrap=n_bootstrap,
        random_state=random_state,
        min_overround=min_overround,
    )
    params = {
        "splitter": splitter.get_params(),
        "betting": betting.as_dict(),
        "estimator": type(pipeline_factory_or_estimator).__name__,
        "feature_columns": columns,
        "n_features": len(columns),
        "second_stage_min_races": second_stage_min_races,
        "min_overround": min_overround,
        "n_bootstrap": n_bootstrap,
        "random_state": random_state,
        "workers": workers,
        "scheduler": scheduler,
    }
    seconds = time.perf_counter() - started
    metrics["wall_seconds"] = round(seconds, 2)
    return BacktestResult(
        run_id=f"bt-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
        params=params,
        folds=folds,
        fold_info=fold_info,
        predictions=pred,
        bankroll=bankroll,
        metrics=metrics,
        seconds=seconds,
    )


def headline_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline table: model, market, market recalibrated and combined side by side. ``roi_kelly`` is the
    ROI of the row's whole Kelly betting run (win and place bets, one bankroll) with its race-level bootstrap
    95% interval; the market row's is one unit on the favourite every race (flat)."""
    g = metrics.get
    return [
        {
            "row": "model (fundamental)",
            "races": g("n_races"),
            "pseudo_r2": g("pseudo_r2"),
            "winner_logloss": g("winner_logloss_per_race"),
            "ece": g("ece"),
            "top_pick": g("top_pick_strike_rate"),
            "roi_kelly": g("roi_kelly_fundamental"),
            "roi_ci": (g("roi_kelly_fundamental_ci_low"), g("roi_kelly_fundamental_ci_high")),
            "n_bets": g("n_bets_fundamental"),
            "roi_kelly_win": g("roi_kelly_win_fundamental"),
        },
        {
            "row": "market (odds)",
            "races": g("n_races_market"),
            "pseudo_r2": g("market_pseudo_r2"),
            "winner_logloss": g("market_winner_logloss_per_race"),
            "ece": g("market_ece"),
            "top_pick": g("favourite_strike_rate"),
            "roi_kelly": g("roi_flat_favourite"),
            "roi_ci": (g("roi_flat_favourite_ci_low"), g("roi_flat_favourite_ci_high")),
            "n_bets": g("n_races_market"),
            "roi_kelly_win": g("roi_flat_favourite"),
        },
        {
            "row": "market recalibrated",
            "races": g("n_races_combined"),
            "pseudo_r2": g("market_recal_pseudo_r2"),
            "winner_logloss": None,
            "ece": None,
            "top_pick": None,
            "roi_kelly": None,
            "roi_ci": (None, None),
            "n_bets": None,
            "roi_kelly_win": None,
        },
        {
            "row": "combined (model + market)",
            "races": g("n_races_combined"),
            "pseudo_r2": g("combined_pseudo_r2"),
            "winner_logloss": g("combined_winner_logloss_per_race"),
            "ece": g("combined_ece"),
            "top_pick": g("combined_top_pick_strike_rate"),
            "roi_kelly": g("roi_kelly_combined"),
            "roi_ci": (g("roi_kelly_combined_ci_low"), g("roi_kelly_combined_ci_high")),
            "n_bets": g("n_bets_combined"),
            "roi_kelly_win": g("roi_kelly_win_combined"),
        },
    ]
