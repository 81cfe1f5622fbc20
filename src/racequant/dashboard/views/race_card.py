"""Race card: each runner's win and place probability with its interval, base versus fused, beside the market."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from racequant.dashboard.common import db_missing, fmt, load_predictor, page_header, settings, warehouse
from racequant.errors import RacequantError

logger = logging.getLogger(__name__)

STORED, UPLOAD = "Stored race", "Upload a card"
SERIES_ORDER = ["model (base)", "fused", "market (odds)"]
SERIES_COLOURS = ["#1f77b4", "#ff7f0e", "#7f7f7f"]


@st.cache_data(show_spinner="Predicting the race", max_entries=64)
def predict_records(
    db: str, db_mtime: float, models_dir: str, version: str | None, card_json: str
) -> list[dict[str, Any]]:
    """The Predictor's records of one card (cached by warehouse file state, model and card)."""
    predictor = load_predictor(models_dir, version)
    with warehouse(Path(db)) as conn:
        return predictor.predict_card(conn, json.loads(card_json))


def fused_records(
    records: list[dict[str, Any]], db: Path, race_id: str, uploaded: bytes | None
) -> tuple[list[dict[str, Any]] | None, str]:
    """Product fusion with the uploaded qualitative records, else those stored for the race; None without any."""
    from racequant.fusion.api import fuse_card, qualitative_from_warehouse
    from racequant.fusion.schema import records_from_json

    if uploaded is not None:
        qual = records_from_json(json.loads(uploaded), source="uploaded file", race_id=race_id)
        origin = "the uploaded qualitative records"
    else:
        try:
            qual = qualitative_from_warehouse(db, [race_id])
        except RacequantError as exc:
            logger.info("no stored qualitative records for %s: %s", race_id, exc)
            qual = []
        origin = "the qualitative records stored in the warehouse"
    if not qual:
        return None, "No qualitative records for this race: the fused probabilities equal the model's."
    return fuse_card(records, qual, mode="product"), f"Fused (product of likelihood ratios) with {origin}."


def probability_frame(records: list[dict[str, Any]], fused: list[dict[str, Any]] | None) -> pd.DataFrame:
    """Long form for the charts: horse, kind (win/place), series, value and the base interval."""
    final = {r["horse_id"]: r for r in fused or []}
    rows = []
    for r in records:
        name = str(r.get("horse_name") or r["horse_id"])
        f = final.get(r["horse_id"], {})
        for kind in ("win", "place"):
            base = r[f"{kind}_prob_base"]
            rows.append(
                {
                    "horse": name,
                    "kind": kind,
                    "series": "model (base)",
                    "value": base,
                    "lower": r[f"{kind}_prob_lower"],
                    "upper": r[f"{kind}_prob_upper"],
                }
            )
            rows.append(
                {
                    "horse": name,
                    "kind": kind,
                    "series": "fused",
                    "value": f.get(f"{kind}_prob_final", base),
                    "lower": None,
                    "upper": None,
                }
            )
        if r.get("market_prob") is not None:
            rows.append(
                {
                    "horse": name,
                    "kind": "win",
                    "series": "market (odds)",
                    "value": r["market_prob"],
                    "lower": None,
                    "upper": None,
                }
            )
    return pd.DataFrame(rows)


def probability_chart(frame: pd.DataFrame, kind: str, order: list[str]) -> alt.LayerChart:
    """Grouped horizontal bars per runner (base, fused, market) with the base's 90% interval as a line."""
    data = frame[frame["kind"] == kind]
    y = alt.Y("horse:N", sort=order, title=None)
    bars = (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("value:Q", title=f"{kind} probability", axis=alt.Axis(format=".0%")),
            y=y,
            yOffset=alt.YOffset("series:N", sort=SERIES_ORDER),
            color=alt.Color(
                "series:N",
                scale=alt.Scale(domain=SERIES_ORDER, range=SERIES_COLOURS),
                legend=alt.Legend(orient="bottom", title=None),
            ),
            tooltip=["horse", "series", alt.Tooltip("value:Q", format=".3f")],
        )
    )
    interval = (
        alt.Chart(data[data["series"] == "model (base)"])
        .mark_rule(color="black", strokeWidth=2)
        .encode(
            x="lower:Q",
            x2="upper:Q",
            y=y,
            tooltip=["horse", alt.Tooltip("lower:Q", format=".3f"), alt.Tooltip("upper:Q", format=".3f")],
        )
    )
    return (bars + interval).properties(height=max(220, 34 * len(order)), title=f"{kind.title()} probability")


def _top_features(record: dict[str, Any], n: int = 3) -> str:
    items = record.get("top_features") or []
    return ", ".join(f"{t['feature']} ({t['importance']:+.2f})" for t in items[:n]) or "-"


def runner_table(
    records: list[dict[str, Any]], fused: list[dict[str, Any]] | None, results: pd.DataFrame | None
) -> pd.DataFrame:
    """One row per runner, highest win probability first, every figure as text (a plain HTML table)."""
    final = {r["horse_id"]: r for r in fused or []}
    finish = {} if results is None else dict(zip(results["horse_id"], results["finish_position"], strict=True))
    rows = []
    for r in sorted(records, key=lambda r: -r["win_prob_base"]):
        f = final.get(r["horse_id"], {})
        row = {
            "horse": str(r.get("horse_name") or r["horse_id"]),
            "win": fmt(r["win_prob_base"]),
            "win 90% interval": f"{fmt(r['win_prob_lower'])}-{fmt(r['win_prob_upper'])}",
            "win fused": fmt(f.get("win_prob_final", r["win_prob_base"])),
            "market": fmt(r.get("market_prob")),
            "odds": fmt(r.get("win_odds"), 1),
            "place": fmt(r["place_prob_base"]),
            "place 90% interval": f"{fmt(r['place_prob_lower'])}-{fmt(r['place_prob_upper'])}",
            "place fused": fmt(f.get("place_prob_final", r["place_prob_base"])),
            "top features": _top_features(r),
        }
        if finish:
            position = finish.get(r["horse_id"])
            row["finished"] = "-" if position is None or pd.isna(position) else str(int(position))
        rows.append(row)
    return pd.DataFrame(rows)


def _pick_stored_race(db: Path) -> tuple[Any, pd.DataFrame | None] | None:
    from racequant.models.card import card_from_results
    from racequant.warehouse.dashboard_queries import race_dates, race_results, races_on, stored_race

    with warehouse(db) as conn:
        days = race_dates(conn)
    if not days:
        st.info("The warehouse holds no races yet: run `racequant ingest` (or `racequant demo`).")
        return None
    c1, c2, c3 = st.columns(3)
    day = c1.selectbox("Date", days, index=0, key="race_day")
    with warehouse(db) as conn:
        races = races_on(conn, day)
    track = c2.selectbox("Track", sorted(races["track"].unique()), key="race_track")
    on_track = races[races["track"] == track].reset_index(drop=True)
    labels = {
        row.race_id: f"{'?' if pd.isna(row.race_no) else int(row.race_no)}: {row.distance_m} m, class "
        f"{row.race_class}, {row.runners} runners"
        for row in on_track.itertuples()
    }
    by_label = {label: race_id for race_id, label in labels.items()}
    race_id = by_label[c3.selectbox("Race number", list(by_label), key="race_no")]
    with warehouse(db) as conn:
        stored = stored_race(conn, race_id)
        results = race_results(conn, race_id)
    card = card_from_results(stored["race"], stored["runners"], stored["horses"])
    has_result = results["finish_position"].notna().any()
    return card, results if has_result else None


def _uploaded_card() -> Any:
    from racequant.models.card import parse_card

    upload = st.file_uploader("Race card (JSON, the schema of examples/README.md)", type=["json"], key="card_file")
    if upload is None:
        st.info("Upload a race card to predict it.")
        return None
    return parse_card(json.loads(upload.getvalue()))


def render() -> None:
    s = settings()
    page_header(
        "Race card",
        "Calibrated win and place probabilities per runner, their 90% intervals, the fused "
        "probabilities and the market's odds-implied probability beside them.",
    )
    if db_missing(s.db):
        return
    source = st.radio("Race", [STORED, UPLOAD], horizontal=True, key="card_source", label_visibility="collapsed")
    try:
        if source == STORED:
            picked = _pick_stored_race(Path(s.db))
            if picked is None:
                return
            card, results = picked
        else:
            card, results = _uploaded_card(), None
            if card is None:
                return
        qual_upload = st.file_uploader("Qualitative records (JSON, optional)", type=["json"], key="qual_file")
        records = predict_records(
            str(s.db), Path(s.db).stat().st_mtime, str(s.models_dir), s.model_version, card.model_dump_json()
        )
        fused, fusion_note = fused_records(
            records, Path(s.db), card.race_id, None if qual_upload is None else qual_upload.getvalue()
        )
    except (RacequantError, ValueError) as exc:
        st.error(str(exc))
        return

    first = records[0]
    st.subheader(f"{card.race_id}: {card.track}, {card.date}, {card.distance} m, class {card.race_class or '-'}")
    st.caption(
        f"Model {first['model_version']} (features {first['feature_version']}), as of {first['as_of']}. " + fusion_note
    )
    favourite = max(records, key=lambda r: r["win_prob_base"])
    m1, m2, m3 = st.columns(3)
    m1.metric(
        "Model's top pick",
        str(favourite.get("horse_name") or favourite["horse_id"]),
        f"win {favourite['win_prob_base']:.1%}",
        delta_color="off",
    )
    m2.metric("Runners", len(records))
    market = [r for r in records if r.get("market_prob") is not None]
    if market:
        fav = max(market, key=lambda r: r["market_prob"])
        m3.metric(
            "Market favourite",
            str(fav.get("horse_name") or fav["horse_id"]),
            f"implied {fav['market_prob']:.1%}",
            delta_color="off",
        )
    else:
        m3.metric("Market", "no odds on the card")

    table = runner_table(records, fused, results)
    frame = probability_frame(records, fused)
    order = table["horse"].tolist()
    left, right = st.columns(2)
    left.altair_chart(probability_chart(frame, "win", order), width="stretch")
    right.altair_chart(probability_chart(frame, "place", order), width="stretch")
    st.table(table.set_index("horse"))

    names = {str(r.get("horse_name") or r["horse_id"]): r for r in records}
    chosen = st.selectbox("Top features of", order, key="features_of")
    top = pd.DataFrame(names[chosen].get("top_features") or [])
    if not top.empty:
        st.bar_chart(top.set_index("feature")["importance"], horizontal=True)
