"""The backtest's files: metrics.json, predictions.parquet, bankroll.csv and a self-contained report.html.

The report embeds its charts as base64 PNG (matplotlib, Agg backend), so it is one file that opens
anywhere: the headline table with the market beside the model, reliability diagrams of model, market and
combined probabilities, the cumulative bankroll, ROI by odds band, the figures per fold over time, and
the breakdowns by track and class.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from racequant.backtest.engine import BacktestResult, headline_rows

logger = logging.getLogger(__name__)


def json_safe(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, dates -> ISO strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def metrics_document(result: BacktestResult) -> dict[str, Any]:
    """What metrics.json holds: the headline keys at the top level, then breakdowns, folds and parameters."""
    return json_safe({"run_id": result.run_id, **result.metrics, "params": result.params})


def write_outputs(result: BacktestResult, out_dir: Path | str) -> dict[str, Path]:
    """Write metrics.json, predictions.parquet, bankroll.csv and report.html into ``out_dir``; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": out / "metrics.json",
        "predictions": out / "predictions.parquet",
        "bankroll": out / "bankroll.csv",
        "report": out / "report.html",
    }
    paths["metrics"].write_text(json.dumps(metrics_document(result), indent=2, allow_nan=False) + "\n")
    result.predictions.to_parquet(paths["predictions"], index=False)
    result.bankroll.to_csv(paths["bankroll"], index=False)
    paths["report"].write_text(render_report(result), encoding="utf-8")
    logger.info("backtest outputs written to %s", out)
    return paths


def store_result(conn: Any, result: BacktestResult) -> str:
    """Store the run in the warehouse (``racequant.warehouse.backtest_store``); stakes of the chosen source."""
    from racequant.warehouse.backtest_store import save_backtest_run

    src = result.params["betting"]["probabilities"]
    pred = result.predictions.rename(
        columns={
            f"stake_win_{src}": "stake_win",
            f"return_win_{src}": "return_win",
            f"stake_place_{src}": "stake_place",
            f"return_place_{src}": "return_place",
        }
    )
    doc = metrics_document(result)
    doc.pop("params", None)
    return save_backtest_run(
        conn,
        run_id=result.run_id,
        params=json_safe(result.params),
        metrics=doc,
        folds=result.fold_info,
        predictions=pred,
        seconds=result.seconds,
    )


# -- charts -------------------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}"/>'


def _use_agg() -> None:
    import matplotlib

    matplotlib.use("Agg")


def _figure(width: float = 6.5, height: float = 4.0) -> tuple[Any, Any]:
    _use_agg()
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _reliability_chart(metrics: dict[str, Any]) -> str:
    fig, ax = _figure(5.5, 5.0)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    top = 0.05
    for name, rows in metrics.get("reliability", {}).items():
        if not rows:
            continue
        x = [r["mean_predicted"] for r in rows]
        y = [r["observed"] for r in rows]
        top = max(top, *x, *y)
        ax.plot(x, y, marker="o", label=name)
    ax.set_xlim(0, min(1, top * 1.05))
    ax.set_ylim(0, min(1, top * 1.05))
    ax.set_xlabel("mean predicted win probability")
    ax.set_ylabel("observed win frequency")
    ax.set_title("Reliability (test races)")
    ax.legend()
    return _png(fig)


def _bankroll_chart(result: BacktestResult) -> str:
    b = result.bankroll
    _use_agg()
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9.0, 6.5), sharex=True)
    dates = pd.to_datetime(b["date"])
    for col in [c for c in b.columns if c.startswith("bankroll_")]:
        ax1.plot(dates, b[col], label=col.removeprefix("bankroll_").replace("_", " "))
    ax1.axhline(result.params["betting"]["initial_bankroll"], color="grey", lw=1, ls="--")
    ax1.set_yscale("log")
    ax1.set_ylabel("bankroll (log scale)")
    ax1.set_title("Fractional Kelly bankroll, race by race")
    ax1.legend(fontsize=8)
    for col in [c for c in b.columns if c.startswith("flat_")]:
        ax2.plot(dates, b[col], label=col.removesuffix("_profit").replace("_", " "))
    ax2.axhline(0, color="grey", lw=1, ls="--")
    ax2.set_ylabel("cumulative profit (1 unit a race)")
    ax2.set_title("Flat stakes for reference")
    ax2.legend(fontsize=8)
    return _png(fig)


def _odds_band_chart(metrics: dict[str, Any]) -> str:
    rows = metrics.get("roi_by_odds_band", [])
    fig, ax = _figure(6.5, 3.5)
    labels = [f"{r['band']}\n({r['n_bets']} bets)" for r in rows]
    values = [r["roi"] if r["roi"] is not None and math.isfinite(r["roi"]) else 0.0 for r in rows]
    ax.bar(labels, values, color=["tab:green" if v >= 0 else "tab:red" for v in values])
    ax.axhline(0, color="grey", lw=1)
    ax.set_ylabel("ROI")
    ax.set_title(f"Kelly win bets ({metrics.get('betting_probabilities')}) by win odds")
    return _png(fig)


def _folds_chart(metrics: dict[str, Any]) -> str:
    folds = metrics.get("folds", [])
    by_fold = metrics.get("by_fold", {})
    fig, ax = _figure(9.0, 3.8)
    x = [pd.Timestamp(f["test_start"]) for f in folds]
    for key, label in (("pseudo_r2", "model"), ("market_pseudo_r2", "market"), ("combined_pseudo_r2", "combined")):
        y = [by_fold.get(str(f["index"]), {}).get(key) for f in folds]
        y = [v if v is not None and math.isfinite(v) else np.nan for v in y]
        ax.plot(x, y, marker=".", label=label)
    ax.set_ylabel("pseudo-R2")
    ax.set_title("Pseudo-R2 per fold (test window start)")
    ax.legend()
    return _png(fig)


# -- tables -------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def _ci(lo: Any, hi: Any) -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "–"
    return f"[{lo:+.3f}, {hi:+.3f}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def headline_table_html(metrics: dict[str, Any]) -> str:
    rows = [
        [
            html.escape(r["row"]),
            _fmt(r["races"]),
            _fmt(r["pseudo_r2"]),
            _fmt(r["winner_logloss"]),
            _fmt(r["ece"]),
            _fmt(r["top_pick"], 3),
            _fmt(r["roi_kelly"], 3),
            _ci(*r["roi_ci"]),
            _fmt(r["n_bets"]),
        ]
        for r in headline_rows(metrics)
    ]
    header = ["", "races", "pseudo-R2", "winner log loss", "ECE", "top pick wins", "ROI", "ROI 95% CI", "bets"]
    return _table(header, rows)


def _group_table(groups: dict[str, dict[str, Any]], label: str) -> str:
    rows = [
        [
            html.escape(name),
            _fmt(m.get("n_races")),
            _fmt(m.get("pseudo_r2")),
            _fmt(m.get("market_pseudo_r2")),
            _fmt(m.get("combined_pseudo_r2")),
            _fmt(m.get("delta_r2")),
            _fmt(m.get("ece")),
            _fmt(m.get("roi_kelly_win"), 3),
            _fmt(m.get("n_bets")),
        ]
        for name, m in groups.items()
    ]
    header = [label, "races", "model R2", "market R2", "combined R2", "delta R2", "ECE", "Kelly win ROI", "bets"]
    return _table(header, rows)


def _folds_table(metrics: dict[str, Any]) -> str:
    rows = [
        [
            _fmt(f["index"]),
            f"{f['train_start']} – {f['train_end']}",
            f"{f['validation_start']} – {f['validation_end']}",
            f"{f['calibration_start']} – {f['calibration_end']}",
            f"{f['test_start']} – {f['test_end']}",
            _fmt(f.get("n_test_races")),
            _fmt(f.get("a"), 3),
            _fmt(f.get("b"), 3),
            _fmt(f.get("b_market_only"), 3),
            _fmt(f.get("fit_seconds"), 1),
        ]
        for f in metrics.get("folds", [])
    ]
    header = ["fold", "train", "validation", "calibration", "test", "test races", "a", "b", "b (market only)", "fit s"]
    return _table(header, rows)


_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead { background: #f3f3f3; }
.note { color: #555; font-size: 0.9em; }
img { max-width: 100%; }
"""


def render_report(result: BacktestResult) -> str:
    """The whole report as one HTML string (charts embedded)."""
    m = result.metrics
    p = result.params
    sp = p["splitter"]
    delta = (
        f"Combined minus market pseudo-R2 on the {_fmt(m.get('n_races_combined'))} races where the second stage "
        f"applied: <b>{_fmt(m.get('delta_r2'))}</b>, 95% CI {_ci(m.get('delta_r2_ci_low'), m.get('delta_r2_ci_high'))}"
        f" (race-level bootstrap). The market recalibrated the same way gains "
        f"{_fmt(m.get('market_recal_gain_r2'))} by itself; combined minus recalibrated market: "
        f"{_fmt(m.get('delta_r2_vs_recal_market'))}, 95% CI "
        f"{_ci(m.get('delta_r2_vs_recal_market_ci_low'), m.get('delta_r2_vs_recal_market_ci_high'))}."
    )
    stage = m.get("second_stage", {})
    src = p["betting"]["probabilities"]
    place_ci = _ci(m.get("roi_kelly_place_ci_low"), m.get("roi_kelly_place_ci_high"))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>racequant backtest</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Walk-forward backtest {html.escape(result.run_id)}</h1>",
        f"<p class='note'>Test windows {sp['start']} to {sp['end']}; "
        f"{'expanding' if sp['expanding'] else str(sp['train_window_days']) + '-day rolling'} training window, "
        f"{sp['test_window_days']}-day test windows, retrained every {sp['retrain_every_days']} days; "
        f"{len(result.folds)} folds; estimator {html.escape(str(p['estimator']))} on {p['n_features']} features; "
        f"{result.seconds:.0f} s.</p>",
        "<h2>Headline</h2>",
        headline_table_html(m),
        f"<p>{delta}</p>",
        f"<p class='note'>Second stage c ~ exp(a log p_model + b log p_market), refitted before each fold on the "
        f"earlier folds' out-of-sample predictions; last fold a = {_fmt(stage.get('a_last'), 3)}, "
        f"b = {_fmt(stage.get('b_last'), 3)}. Kelly: fraction {p['betting']['staking']['fraction']}, minimum edge "
        f"{p['betting']['staking']['min_edge']}, at most {p['betting']['staking']['max_stake']} of the bankroll a "
        f"bet, stakes sized together per race; betting on {html.escape(p['betting']['probabilities'])} "
        f"probabilities. ROI: the whole Kelly betting run of the row (win and place bets, one bankroll, ending at "
        f"{_fmt(m.get('final_bankroll_' + src), 3)}); market row: one unit on the favourite every race. "
        f"Win bets {_fmt(m.get('n_bets_win_' + src))}, Kelly win ROI {_fmt(m.get('roi_kelly_win'), 3)} "
        f"{_ci(m.get('roi_ci_low'), m.get('roi_ci_high'))}; "
        f"place bets {_fmt(m.get('n_bets_place_' + src))}, Kelly place ROI "
        f"{_fmt(m.get('roi_kelly_place'), 3)} {place_ci}; "
        f"flat top-pick ROI {_fmt(m.get('roi_flat_top_pick'), 3)}; interval coverage (win) "
        f"{_fmt(m.get('interval_coverage_win'), 3)}.</p>",
        "<h2>Reliability</h2>",
        _reliability_chart(m),
        "<h2>Bankroll</h2>",
        _bankroll_chart(result),
        "<h2>ROI by odds band</h2>",
        _odds_band_chart(m),
        "<h2>Per fold</h2>",
        _folds_chart(m),
        _folds_table(m),
        "<h2>By track</h2>",
        _group_table(m.get("by_track", {}), "track"),
        "<h2>By class</h2>",
        _group_table(m.get("by_class", {}), "class"),
        "</body></html>",
    ]
    return "\n".join(parts)
