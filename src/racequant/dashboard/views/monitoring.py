"""Monitoring: the served predictions' daily metrics over time, drift flags and recent alerts.

Read from the prediction log file (read-only). While a running API holds the log for writing, DuckDB lets no
other process open it: the page then asks that API (``RACEQUANT_API_URL``) for the day metrics and drift.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from racequant.dashboard.common import api_url, fmt, page_header, settings
from racequant.errors import RacequantError

logger = logging.getLogger(__name__)

METRICS = (
    "win_auc",
    "place_auc",
    "win_ece",
    "place_ece",
    "win_brier",
    "place_brier",
    "mean_latency_ms",
    "n_predictions",
    "n_scored",
)
API_DAYS = 14


def drift_flags_frame(report: dict[str, Any]) -> pd.DataFrame:
    """One row per drift check: flagged or not, and what it measured."""
    perf, feats, cov = report["performance"], report["features"], report["interval_coverage"]
    recent_cov = (cov.get("recent") or {}).get("coverage")
    drifted = ", ".join(feats.get("drifted") or []) or "no feature above the limit"
    rows = [
        {
            "check": "performance",
            "flag": "FLAG" if perf["flag"] else "ok",
            "detail": f"recent win AUC {fmt(perf['recent'].get('win_auc'))} vs historical "
            f"{fmt(perf['historical'].get('win_auc'))} (drop limit {perf['auc_drop_max']}); recent win ECE "
            f"{fmt(perf['recent'].get('win_ece'))} (limit {perf['ece_max']})",
        },
        {
            "check": "features (PSI)",
            "flag": "FLAG" if feats["flag"] else "ok",
            "detail": drifted if feats.get("status") == "ok" else str(feats.get("reason", feats.get("status"))),
        },
        {
            "check": "interval coverage",
            "flag": "FLAG" if cov["flag"] else "ok",
            "detail": f"recent coverage {fmt(recent_cov)} (target {cov['target']}, tolerance {cov['tolerance']})",
        },
    ]
    return pd.DataFrame(rows).set_index("check")


def metrics_chart(daily: pd.DataFrame, columns: list[str], title: str) -> alt.Chart:
    long = daily.melt(id_vars=["day"], value_vars=[c for c in columns if c in daily.columns], var_name="metric")
    return (
        alt.Chart(long.dropna())
        .mark_line(point=True)
        .encode(
            x=alt.X("day:T", title=None),
            y=alt.Y("value:Q", title=None),
            color=alt.Color("metric:N", title=None),
            tooltip=["day:T", "metric", alt.Tooltip("value:Q", format=".4f")],
        )
        .properties(title=title, height=260)
    )


def _from_log(log: Path) -> dict[str, Any]:
    from racequant.monitor.drift import drift, drift_thresholds
    from racequant.monitor.metrics import daily_metrics
    from racequant.warehouse.dashboard_queries import monitoring_tables

    s = settings()
    tables = monitoring_tables(log)
    daily = tables["daily_metrics"]
    last_day = tables["last_day"]
    if daily.empty and last_day is not None:  # nobody ran `racequant monitor daily`: compute (not store) recent days
        days = [last_day - timedelta(days=k) for k in range(API_DAYS - 1, -1, -1)]
        daily = pd.DataFrame([daily_metrics(log, d, store=False) for d in days])
        daily = daily[daily["n_predictions"].fillna(0) > 0]
    report = None
    if last_day is not None:
        report = drift(
            log,
            as_of=last_day,
            recent_days=s.drift_recent_days,
            **drift_thresholds(s),
        )
    return {
        "daily": daily,
        "alerts": tables["alerts"],
        "drift": report,
        "n_predictions": tables["n_predictions"],
        "source": f"the prediction log {log}",
    }


def _from_api(url: str) -> dict[str, Any]:
    import httpx

    today = date.today()
    with httpx.Client(base_url=url, timeout=30) as client:
        rows = []
        for k in range(API_DAYS - 1, -1, -1):
            day = (today - timedelta(days=k)).isoformat()
            response = client.get("/api/v1/monitoring/metrics", params={"date": day})
            response.raise_for_status()
            rows.append(response.json())
        drift_response = client.get("/api/v1/monitoring/drift")
        drift_response.raise_for_status()
    daily = pd.DataFrame(rows)
    return {
        "daily": daily[daily["n_predictions"].fillna(0) > 0],
        "alerts": None,
        "drift": drift_response.json(),
        "n_predictions": int(daily["n_predictions"].fillna(0).sum()),
        "source": f"the API at {url}",
    }


def render() -> None:
    s = settings()
    page_header(
        "Monitoring",
        "The served predictions: daily metrics once results are in, drift flags against the "
        "training window and history, and the alerts raised.",
    )
    log = s.predlog_path()
    try:
        data = _from_log(log)
    except RacequantError as exc:
        url = api_url()
        if url is None:
            st.info(f"{exc}\n\nSet RACEQUANT_API_URL to read the monitoring of a running API instead.")
            return
        try:
            data = _from_api(url)
        except Exception as api_exc:  # an unreachable API is reported on the page, not raised
            st.error(f"{exc}\n\nThe API at {url} did not answer either: {api_exc}")
            return
    st.caption(f"Read from {data['source']}: {data['n_predictions']:,} logged predictions.")

    daily = data["daily"]
    st.subheader("Daily metrics")
    if daily.empty:
        st.info("No day with served predictions yet.")
    else:
        daily = daily.assign(day=pd.to_datetime(daily["day"]))
        left, right = st.columns(2)
        left.altair_chart(metrics_chart(daily, ["win_auc", "place_auc"], "AUC"), width="stretch")
        right.altair_chart(
            metrics_chart(daily, ["win_ece", "place_ece", "win_brier", "place_brier"], "Calibration (ECE) and Brier"),
            width="stretch",
        )
        left.altair_chart(metrics_chart(daily, ["mean_latency_ms"], "Mean latency (ms)"), width="stretch")
        right.altair_chart(
            metrics_chart(daily, ["n_predictions", "n_scored"], "Predictions and scored runners"), width="stretch"
        )
        shown = daily[["day", *[c for c in METRICS if c in daily.columns]]].copy()
        shown["day"] = shown["day"].dt.date
        st.dataframe(shown.sort_values("day", ascending=False), hide_index=True)

    st.subheader("Drift")
    report = data["drift"]
    if report is None:
        st.info("No logged predictions to check for drift.")
    else:
        window = report["recent_window"]
        flags = report.get("flags") or []
        message = f"Recent window {window['start']} to {window['end']}: " + (
            "drift flagged in " + ", ".join(flags) if flags else "no drift flagged"
        )
        (st.warning if flags else st.success)(message)
        st.table(drift_flags_frame(report))

    st.subheader("Recent alerts")
    alerts = data["alerts"]
    if alerts is None:
        st.info("Alerts are kept in the prediction log, which the running API holds; see its webhook channel.")
    elif alerts.empty:
        st.success("No alert raised.")
    else:
        st.dataframe(alerts, hide_index=True)
