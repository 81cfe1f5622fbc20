"""Backtest: a stored walk-forward run's headline table (market row included), reliability, bankroll, ROI by odds
band, per track and class, and per fold over time."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from racequant.dashboard.common import db_missing, fmt, page_header, settings, warehouse
from racequant.errors import RacequantError

logger = logging.getLogger(__name__)

GROUP_FIGURES = (
    "n_races",
    "pseudo_r2",
    "market_pseudo_r2",
    "combined_pseudo_r2",
    "delta_r2",
    "ece",
    "top_pick_strike_rate",
    "favourite_strike_rate",
    "roi_kelly_win",
    "n_bets",
)


def headline_frame(metrics: dict[str, Any]) -> pd.DataFrame:
    """The backtest's headline rows (model, market, market recalibrated, combined) as text."""
    from racequant.backtest.engine import headline_rows

    rows = []
    for r in headline_rows(metrics):
        lo, hi = r["roi_ci"]
        rows.append(
            {
                "": r["row"],
                "races": fmt(r["races"]),
                "pseudo-R2": fmt(r["pseudo_r2"], 4),
                "winner log loss": fmt(r["winner_logloss"]),
                "ECE": fmt(r["ece"], 4),
                "top pick": fmt(r["top_pick"]),
                "ROI": fmt(r["roi_kelly"]),
                "ROI 95% CI": "-" if lo is None else f"[{fmt(lo)}, {fmt(hi)}]",
            }
        )
    return pd.DataFrame(rows).set_index("")


def reliability_chart(metrics: dict[str, Any]) -> alt.LayerChart:
    rows = [
        {**point, "source": source} for source, points in (metrics.get("reliability") or {}).items() for point in points
    ]
    data = pd.DataFrame(rows, columns=["bin", "n", "mean_predicted", "observed", "source"])
    diagonal = (
        alt.Chart(pd.DataFrame({"p": [0.0, 1.0]})).mark_line(color="grey", strokeDash=[4, 4]).encode(x="p:Q", y="p:Q")
    )
    top = float(max(data["mean_predicted"].max(), data["observed"].max(), 0.05)) if len(data) else 1.0
    points = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=alt.X("mean_predicted:Q", title="mean predicted win probability", scale=alt.Scale(domain=[0, top])),
            y=alt.Y("observed:Q", title="observed win frequency", scale=alt.Scale(domain=[0, top])),
            color=alt.Color("source:N", title=None),
            tooltip=[
                "source",
                "n",
                alt.Tooltip("mean_predicted:Q", format=".3f"),
                alt.Tooltip("observed:Q", format=".3f"),
            ],
        )
    )
    return (diagonal + points).properties(title="Reliability diagram", height=320)


def bankroll_frame(returns: pd.DataFrame, initial: float) -> pd.DataFrame:
    """Bankroll after each race: the stakes compounded, so the bankroll is the start plus the running profit."""
    frame = returns.copy()
    frame["win bets"] = initial + (frame["return_win"] - frame["stake_win"]).cumsum()
    frame["place bets"] = initial + (frame["return_place"] - frame["stake_place"]).cumsum()
    frame["race"] = range(1, len(frame) + 1)
    return frame


def groups_frame(groups: dict[str, dict[str, Any]], label: str) -> pd.DataFrame:
    rows = [
        {label: name, **{k: fmt(m.get(k), 4 if "r2" in k or k == "ece" else 3) for k in GROUP_FIGURES}}
        for name, m in groups.items()
    ]
    return pd.DataFrame(rows).set_index(label) if rows else pd.DataFrame()


def folds_frame(metrics: dict[str, Any], folds: pd.DataFrame) -> pd.DataFrame:
    """Pseudo-R2 of model, market and combined per fold, at each fold's test start (long form)."""
    by_fold = metrics.get("by_fold") or {}
    rows = []
    for fold in folds.itertuples():
        figures = by_fold.get(str(fold.fold), {})
        for key, source in (("pseudo_r2", "model"), ("market_pseudo_r2", "market"), ("combined_pseudo_r2", "combined")):
            value = figures.get(key)
            if value is not None:
                rows.append(
                    {
                        "test_start": pd.Timestamp(fold.test_start),
                        "fold": fold.fold,
                        "source": source,
                        "pseudo_r2": value,
                    }
                )
    return pd.DataFrame(rows, columns=["test_start", "fold", "source", "pseudo_r2"])


def render() -> None:
    from racequant.warehouse.backtest_store import list_backtest_runs
    from racequant.warehouse.dashboard_queries import backtest_race_returns, backtest_run, has_backtest_runs

    s = settings()
    page_header(
        "Backtest",
        "Walk-forward runs stored in the warehouse: the model beside the market, on the same "
        "races, bet with the real odds.",
    )
    if db_missing(s.db):
        return
    try:
        with warehouse(Path(s.db)) as conn:
            runs = list_backtest_runs(conn) if has_backtest_runs(conn) else []
            if not runs:
                st.info("No backtest run in the warehouse yet: run `racequant backtest --start D --end D --out DIR`.")
                return
            labels = {
                r["run_id"]: f"{r['run_id']} ({r['test_start']} to {r['test_end']}, {r['n_races']} races)" for r in runs
            }
            run_id = st.selectbox("Run", list(labels), format_func=labels.get, key="run_id")
            run = backtest_run(conn, run_id)
            returns = backtest_race_returns(conn, run_id)
    except RacequantError as exc:
        st.error(str(exc))
        return
    metrics = run["metrics"]
    st.caption(
        f"{run['n_folds']} folds, {run['n_races']} test races from {run['test_start']} to {run['test_end']}, "
        f"win bets on the {metrics.get('betting_probabilities', '?')} probabilities; run in "
        f"{run['seconds']:.0f} s."
    )

    st.subheader("Headline")
    st.table(headline_frame(metrics))
    st.write(
        f"Gain of combined over the market: **{fmt(metrics.get('delta_r2'), 4)}** pseudo-R2 "
        f"[{fmt(metrics.get('delta_r2_ci_low'), 4)}, {fmt(metrics.get('delta_r2_ci_high'), 4)}] (95% CI); "
        f"Kelly ROI win {fmt(metrics.get('roi_kelly_win'))}, place {fmt(metrics.get('roi_kelly_place'))}, "
        f"{metrics.get('n_bets', '-')} bets."
    )

    left, right = st.columns(2)
    left.altair_chart(reliability_chart(metrics), width="stretch")
    bands = pd.DataFrame(metrics.get("roi_by_odds_band") or [], columns=["band", "n_bets", "staked", "roi"])
    right.altair_chart(
        alt.Chart(bands)
        .mark_bar()
        .encode(
            x=alt.X("band:N", sort=None, title="win odds"),
            y=alt.Y("roi:Q", title="ROI"),
            color=alt.condition("datum.roi >= 0", alt.value("#2ca02c"), alt.value("#d62728")),
            tooltip=["band", "n_bets", alt.Tooltip("staked:Q", format=".2f"), alt.Tooltip("roi:Q", format=".3f")],
        )
        .properties(title="Kelly win bets: ROI by odds band", height=320),
        width="stretch",
    )

    st.subheader("Bankroll")
    initial = float(((run["params"].get("betting") or {}).get("initial_bankroll")) or 1.0)
    bankroll = bankroll_frame(returns, initial)
    curve = bankroll.melt(
        id_vars=["race", "date"], value_vars=["win bets", "place bets"], var_name="bets", value_name="bankroll"
    )
    st.altair_chart(
        alt.Chart(curve)
        .mark_line()
        .encode(
            x=alt.X("race:Q", title="test race"),
            y=alt.Y("bankroll:Q", title="bankroll"),
            color=alt.Color("bets:N", title=None),
            tooltip=["date:T", "race", alt.Tooltip("bankroll:Q", format=".3f")],
        )
        .properties(title=f"Fractional Kelly bankroll race by race (start {initial:g})", height=300),
        width="stretch",
    )

    st.subheader("Per fold over time")
    per_fold = folds_frame(metrics, run["folds"])
    if not per_fold.empty:
        st.altair_chart(
            alt.Chart(per_fold)
            .mark_line(point=True)
            .encode(
                x=alt.X("test_start:T", title="test window start"),
                y=alt.Y("pseudo_r2:Q", title="pseudo-R2"),
                color=alt.Color("source:N", title=None),
                tooltip=["fold", "source", "pseudo_r2"],
            )
            .properties(height=260),
            width="stretch",
        )
    st.dataframe(run["folds"], hide_index=True)

    by_track, by_class = st.columns(2)
    with by_track:
        st.subheader("By track")
        st.table(groups_frame(metrics.get("by_track") or {}, "track"))
    with by_class:
        st.subheader("By class")
        st.table(groups_frame(metrics.get("by_class") or {}, "class"))
