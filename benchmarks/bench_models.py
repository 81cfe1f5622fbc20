"""Benchmark of the models beside the market on Hong Kong 1997-2005.

    python benchmarks/bench_models.py [--objective binary|rank|softmax] [--n-estimators N] [--learning-rate LR]
                                      [--min-group-size N] [--win-objective LIB=OBJ,...]
                                      [--booster-params JSON] [--rank-relevance win|graded]
                                      [--[no-]refit-on-calibration] [--validation-only] [--json OUT]

Without options the pipeline runs with its defaults (the configuration chosen on pre-2004 validation races,
see docs/models.md); each option overrides one default.

Trains the pipeline on races before 2004-01-01 (wall time of the whole fit, six boosters included) and
scores the 1,259 races from 2004-01-01: winner log loss per race, pseudo-R2, runner AUC, Brier, ECE (10
bins), top-pick strike rate and place log loss, per model, blended, calibrated, and for the market. Also
the coverage of the 90% intervals per calibration group on those held-out races.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

# the test helpers, and this folder (benchcommon) also when the script is loaded by path, as a test does
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcommon import machine_info
from features_helpers import warehouse_from_folder
from racequant.calibration import metrics as M
from racequant.features import build_features
from racequant.features.manifest import feature_version
from racequant.models.api import fundamental_columns
from racequant.models.boosters import LIBRARIES
from racequant.models.pipeline import DEFAULT_BOOSTER_PARAMS, DEFAULT_WIN_OBJECTIVE, RacePipeline
from racequant.models.place import harville_place_probabilities, placed_from_positions

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hkjc-1997-2005"
SPLIT = pd.Timestamp("2004-01-01")


def load_frame() -> pd.DataFrame:
    conn = warehouse_from_folder(DATA, "hkjc-kaggle")
    features = build_features(conn)
    outcome = conn.execute(
        "SELECT u.race_id, u.horse_id, u.finish_position, r.track FROM runners u JOIN races r USING (race_id) "
        "WHERE u.status <> 'withdrawn'"
    ).df()
    frame = features.merge(outcome, on=["race_id", "horse_id"], how="left")
    frame["race_date"] = pd.to_datetime(frame["race_date"])
    return frame


def interval_coverage(out: pd.DataFrame, outcome: np.ndarray, name: str, bins: int = 10) -> list[dict[str, object]]:
    """Per group: runners binned by probability; a bin is covered when its observed frequency is consistent
    (two-sided binomial test at 5%) with some value inside the bin's mean interval."""
    rows = []
    for group, g in out.assign(y=outcome).groupby("calibration_group"):
        edges = np.unique(np.quantile(g[f"{name}_prob"], np.linspace(0, 1, bins + 1)))
        which = np.clip(np.searchsorted(edges, g[f"{name}_prob"], side="right") - 1, 0, len(edges) - 2)
        covered = 0
        for b in range(len(edges) - 1):
            part = g[which == b]
            k, n = int(part["y"].sum()), len(part)
            lo, hi = part[f"{name}_prob_lower"].mean(), part[f"{name}_prob_upper"].mean()
            nearest = min(max(k / n, lo), hi)
            covered += binomtest(k, n, nearest).pvalue > 0.05 if 0 < nearest < 1 else 1
        n_bins = len(edges) - 1
        rows.append(
            {
                "target": name,
                "group": group,
                "runners": len(g),
                "bins": n_bins,
                "bins_covered": int(covered),
                "coverage": covered / n_bins,
                "p_value_below_90": binomtest(int(covered), n_bins, 0.9, alternative="less").pvalue,
            }
        )
    return rows


def machine() -> dict[str, object]:
    """nproc, CPU model, RAM, load average (1, 5, 15 min, at the end of the run) and date, for the record."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        **machine_info(),
        "load_average": [round(x, 2) for x in load] if load else None,
        "date": time.strftime("%Y-%m-%d"),
    }


def validation_report(pipe: RacePipeline, train: pd.DataFrame, fit_seconds: float, out_json: Path | None) -> None:
    """Per-model and blended (uncalibrated) figures on the pipeline's own calibration slice (2003 when trained
    on races before 2004), with the trees, temperatures and blend weights: the selection protocol of
    docs/models.md. The races from 2004 are not scored."""
    cal = train[train["race_date"] > pd.Timestamp(pipe.training_window_["validation_end"])]
    base = pipe._base(cal)
    won = (cal["finish_position"] == 1).to_numpy()
    race = cal["race_id"].to_numpy()
    cols = [f"{lib}_win" for lib in pipe.win_boosters_] + ["win_prob_base"]
    table = {c: M.benchmark_metrics(race, base[c].to_numpy(), won) for c in cols}
    table["market"] = M.benchmark_metrics(race, cal["market_prob"].to_numpy(), won)
    v = pipe.validation_metrics_
    result = {
        "races": int(cal["race_id"].nunique()),
        "window": pipe.training_window_,
        "objectives": pipe._objectives(),
        "rank_relevance": pipe.rank_relevance,
        "booster_params": pipe.booster_params,
        "metrics": table,
        "temperatures": v["temperatures"],
        "blend_weights": v["blend_weights"],
        "best_iterations": v["best_iterations"],
        "fit_seconds": fit_seconds,
        "machine": machine(),
    }
    print(f"\nvalidation (calibration slice, uncalibrated): {result['races']} races, window {result['window']}")
    print(pd.DataFrame(table).T.round(4).to_string())
    print(json.dumps({k: result[k] for k in ("objectives", "temperatures", "blend_weights", "best_iterations")}))
    if out_json:
        out_json.write_text(json.dumps(result, indent=2, default=str))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objective", default=None, choices=["binary", "rank", "softmax"])
    parser.add_argument("--n-estimators", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--min-group-size", type=int, default=None)
    parser.add_argument(
        "--win-objective", default=None, help="per library, e.g. lightgbm=rank,xgboost=softmax (others: default)"
    )
    parser.add_argument(
        "--booster-params", default=None, help="JSON {library or library_win: {param: value}} merged over the defaults"
    )
    parser.add_argument("--rank-relevance", default=None, choices=["win", "graded"])
    parser.add_argument(
        "--refit-on-calibration",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cross-fitted calibration: the boosters also learn the calibration slice (RacePipeline's default; "
        "--no-refit-on-calibration for the earlier default)",
    )
    parser.add_argument(
        "--validation-only",
        action="store_true",
        help="fit on races before 2004 and score the 2003 calibration slice (uncalibrated); never touch 2004+",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.validation_only:
        if args.refit_on_calibration:
            # the stored boosters would have learned the very races --validation-only scores
            parser.error("--validation-only scores the calibration slice, which --refit-on-calibration trains on")
        args.refit_on_calibration = False  # the boosters stop before the calibration slice it scores
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent")
        return

    started = time.perf_counter()
    frame = load_frame()
    columns = fundamental_columns(frame)
    print(
        f"features: {len(columns)} fundamental columns, {len(frame)} runners, built in "
        f"{time.perf_counter() - started:.1f} s"
    )
    train = frame[frame["race_date"] < SPLIT]
    test = frame[frame["race_date"] >= SPLIT].copy()
    win_objective = args.objective
    if args.win_objective:
        win_objective = {**DEFAULT_WIN_OBJECTIVE, **dict(kv.split("=", 1) for kv in args.win_objective.split(","))}
    booster_params = None
    if args.booster_params:
        extra = json.loads(args.booster_params)
        booster_params = {lib: {**DEFAULT_BOOSTER_PARAMS.get(lib, {}), **extra.get(lib, {})} for lib in LIBRARIES}
        booster_params.update({k: v for k, v in extra.items() if k not in LIBRARIES})  # e.g. "lightgbm_win"
    overrides = {
        "win_objective": win_objective,
        "booster_params": booster_params,
        "rank_relevance": args.rank_relevance,
        "n_estimators": args.n_estimators,
        "learning_rate": args.learning_rate,
        "min_group_size": args.min_group_size,
        "refit_on_calibration": args.refit_on_calibration,
    }
    pipe = RacePipeline(
        feature_manifest_hash=feature_version(), **{k: v for k, v in overrides.items() if v is not None}
    )
    load_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    t0, cpu0 = time.perf_counter(), time.process_time()
    pipe.fit(train, columns, progress=lambda m: print(f"  [{time.perf_counter() - t0:6.1f} s] {m}"))
    fit_seconds = time.perf_counter() - t0
    # CPU seconds of this process (all its threads): on 2 otherwise idle cores the fit takes about cpu / 2
    fit_cpu_seconds = time.process_time() - cpu0
    if args.validation_only:
        validation_report(pipe, train, fit_seconds, args.json)
        return
    out = pipe.predict(test)
    won = (test["finish_position"] == 1).to_numpy()
    placed = placed_from_positions(test["finish_position"].to_numpy(dtype=float), test["race_id"].to_numpy())
    race = test["race_id"].to_numpy()
    market = test["market_prob"].to_numpy()
    market_place = harville_place_probabilities(market, race, 0.81, 0.65)
    table = {}
    for label, p, pp in (
        ("market", market, market_place),
        ("catboost_win", out["catboost_win"], None),
        ("lightgbm_win", out["lightgbm_win"], None),
        ("xgboost_win", out["xgboost_win"], None),
        ("blend (uncalibrated)", out["win_prob_base"], out["place_prob_base"]),
        ("model (calibrated)", out["win_prob"], out["place_prob"]),
    ):
        table[label] = M.benchmark_metrics(race, p, won, pp, placed if pp is not None else None)
    result = {
        "races": int(test["race_id"].nunique()),
        "params": {k: getattr(pipe, k) for k in inspect.signature(RacePipeline).parameters},
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds": fit_cpu_seconds,
        "metrics": table,
        "validation": pipe.validation_metrics_,
        "training_window": pipe.training_window_,
        "coverage": interval_coverage(out, won, "win") + interval_coverage(out, placed, "place"),
        "machine": {**machine(), "load_average_fit_start": load_start},
    }
    print(
        f"\nHK 2004-2005: {result['races']} races; pipeline fit {fit_seconds:.1f} s wall, "
        f"{fit_cpu_seconds:.1f} s CPU; {result['machine']}"
    )
    print(json.dumps(result["params"], default=str))
    print(pd.DataFrame(table).T.round(4).to_string())
    print(pd.DataFrame(result["coverage"]).round(3).to_string(index=False))
    print(
        json.dumps(
            {
                k: result["validation"][k]
                for k in ("place_log_loss", "place_method", "harville", "blend_weights", "best_iterations")
            },
            default=str,
        )
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
