"""Benchmark fusion on simulated races: base model, market, product fusion, second stage and fitted fusion.

Run as ``python benchmarks/bench_fusion.py [--races N] [--seed S] [--json]``. The simulator's true win
probabilities give (1) a base-model proxy, deliberately noisy and too flat, (2) a synthetic qualitative signal that
reads part of the true merit (racequant.fusion.synthetic); the market comes from the simulated win odds. Weights
are fitted on the earlier 60 % of races (with qualitative history on half of them) and every method is scored by
winner log loss on the later 40 %.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import pandas as pd

from racequant.calibration.metrics import pseudo_r2, winner_log_loss
from racequant.fusion.fusion import FittedFusion, market_probabilities, product_fusion
from racequant.fusion.schema import LR_FIELDS
from racequant.fusion.synthetic import synthetic_likelihood_ratios
from racequant.ingest.simulator import simulate
from racequant.models.race import race_codes, race_softmax


def build_frame(n_races: int, seed: int, base_slope: float, base_noise: float, strength: float) -> pd.DataFrame:
    results = simulate(n_races, seed=seed)
    runners = results.runners
    runners = runners[runners["status"].astype(str) != "withdrawn"]
    frame = runners[["race_id", "horse_id", "finish_position", "win_odds"]].merge(
        results.truth[["race_id", "horse_id", "true_win_prob"]], on=["race_id", "horse_id"]
    )
    frame = frame.merge(results.races[["race_id", "date"]], on="race_id")
    frame["win_odds"] = pd.to_numeric(frame["win_odds"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    frame = frame.dropna(subset=["win_odds"]).sort_values(["date", "race_id"], kind="stable").reset_index(drop=True)
    race = frame["race_id"].astype(str).to_numpy()
    frame["race_id"] = race
    position = pd.to_numeric(frame["finish_position"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    frame["won"] = (position == 1).astype(int)
    codes, n = race_codes(race)
    rng = np.random.default_rng(seed + 1)
    true_p = frame["true_win_prob"].to_numpy(dtype=float)
    # base-model proxy: too flat (slope < 1) and noisy
    score = base_slope * np.log(np.clip(true_p, 1e-6, None)) + rng.normal(0.0, base_noise, len(frame))
    frame["win_prob_base"] = race_softmax(score, codes, n)
    frame["market_prob"] = market_probabilities(frame["win_odds"].to_numpy(dtype=float), race)
    lrs = synthetic_likelihood_ratios(true_p, race, strength=strength, seed=seed + 2)
    for col in [*LR_FIELDS, "lr_product"]:
        frame[col] = lrs[col].to_numpy()
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--races", type=int, default=12_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-slope", type=float, default=0.75)
    parser.add_argument("--base-noise", type=float, default=0.45)
    parser.add_argument("--strength", type=float, default=0.6)
    parser.add_argument("--qual-history-share", type=float, default=0.5, help="training races with qualitative data")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    t0 = time.perf_counter()
    frame = build_frame(args.races, args.seed, args.base_slope, args.base_noise, args.strength)
    t_build = time.perf_counter() - t0
    races = pd.unique(frame["race_id"])
    cut = int(0.6 * len(races))
    train_races, test_races = set(races[:cut]), set(races[cut:])
    train = frame[frame["race_id"].isin(train_races)].copy()
    test = frame[frame["race_id"].isin(test_races)].copy()
    # qualitative history on only part of the training races: the rest fit the second stage alone
    rng = np.random.default_rng(args.seed + 3)
    no_qual = set(rng.choice(races[:cut], int((1 - args.qual_history_share) * cut), replace=False))
    train.loc[train["race_id"].isin(no_qual), list(LR_FIELDS)] = np.nan

    t0 = time.perf_counter()
    fitted = FittedFusion().fit(train)
    t_fit = time.perf_counter() - t0
    no_market = FittedFusion(use_market=False).fit(train)

    race, won = test["race_id"].to_numpy(), test["won"].to_numpy()
    n_test = len(np.unique(race))
    sizes = test.groupby("race_id")["race_id"].transform("size").to_numpy()
    test_no_qual = test.copy()
    test_no_qual[list(LR_FIELDS)] = np.nan
    methods = {
        "uniform (1/n)": 1.0 / sizes,
        "true probability (simulator)": test["true_win_prob"].to_numpy(),
        "base model proxy": test["win_prob_base"].to_numpy(),
        "market (1/odds normalised)": test["market_prob"].to_numpy(),
        "product fusion (base x lr_product)": product_fusion(
            test["win_prob_base"].to_numpy(), test["lr_product"].to_numpy(), race
        ),
        "second stage (base^a market^b)": fitted.predict_proba(test_no_qual),
        "fitted fusion, no market (base^a LR^c)": no_market.predict_proba(test),
        "fitted fusion (base^a market^b LR^c)": fitted.predict_proba(test),
    }
    rows = [
        {"method": name, "winner_log_loss": winner_log_loss(race, p, won), "pseudo_r2": pseudo_r2(race, p, won)}
        for name, p in methods.items()
    ]
    by = {r["method"]: r["winner_log_loss"] for r in rows}
    fitted_ll = by["fitted fusion (base^a market^b LR^c)"]
    gains = {
        f"vs {m}": by[m] - fitted_ll
        for m in (
            "base model proxy",
            "market (1/odds normalised)",
            "product fusion (base x lr_product)",
            "second stage (base^a market^b)",
        )
    }
    # paired standard error of the gain over product fusion, race by race
    codes, n = race_codes(race)
    per_race = {}
    for name in ("product fusion (base x lr_product)", "fitted fusion (base^a market^b LR^c)", "base model proxy"):
        p_win = np.bincount(codes[won > 0], weights=methods[name][won > 0], minlength=n)
        per_race[name] = -np.log(np.clip(p_win, 1e-15, None))
    diff = per_race["product fusion (base x lr_product)"] - per_race["fitted fusion (base^a market^b LR^c)"]
    diff_base = per_race["base model proxy"] - per_race["fitted fusion (base^a market^b LR^c)"]
    report = {
        "races": len(races),
        "runners": len(frame),
        "train_races": len(train_races),
        "train_races_with_qualitative": len(train_races) - len(no_qual),
        "test_races": n_test,
        "settings": vars(args),
        "methods": rows,
        "gain_of_fitted_in_winner_log_loss": gains,
        "gain_se_vs_product": float(diff.std(ddof=1) / np.sqrt(len(diff))),
        "gain_se_vs_base": float(diff_base.std(ddof=1) / np.sqrt(len(diff_base))),
        "weights": fitted.weights_,
        "weights_no_market": no_market.weights_,
        "seconds": {"simulate_and_build": round(t_build, 2), "fit_both_pools": round(t_fit, 3)},
        "machine": {
            "nproc": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
    }
    if args.json:
        print(json.dumps(report, indent=2, default=float))
        return
    print(
        f"{report['races']:,} races ({report['runners']:,} runners); fit on {report['train_races']:,} "
        f"({report['train_races_with_qualitative']:,} with qualitative), scored on {n_test:,} later races"
    )
    print(f"{'method':<42} {'winner log loss':>16} {'pseudo-R2':>10}")
    for r in rows:
        print(f"{r['method']:<42} {r['winner_log_loss']:>16.4f} {r['pseudo_r2']:>10.4f}")
    for k, v in gains.items():
        print(f"fitted fusion gain {k}: {v:+.4f} nats per race")
    print(
        f"paired SE of the gain vs product fusion: {report['gain_se_vs_product']:.4f}; "
        f"vs base: {report['gain_se_vs_base']:.4f}"
    )
    print("weights (with qualitative):", json.dumps(fitted.weights_.get("with_qualitative"), default=float))
    print("weights (second stage):", json.dumps(fitted.weights_["second_stage"], default=float))
    print(f"fit time {t_fit:.3f} s; simulate and build {t_build:.1f} s")


if __name__ == "__main__":
    main()
