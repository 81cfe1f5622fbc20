"""The one prediction path: a race card -> point-in-time features -> the fitted pipeline -> output records.

``Predictor.load(models_dir, version=None)`` loads a registry version once (verified and checked against the
feature definitions at hand). ``predict_card(conn, card, as_of)`` is what ``racequant predict``, the API, fusion
and the demo call: one record per declared runner in the quantitative output schema.

``as_of`` is explicit: only history dated on or before it is used (default: the card's date at its off time).
Inline past runs of a horse become extra history rows seen only by this card's features: the warehouse's
races, runners and horses are copied into a scratch in-memory warehouse with the past runs added as races of
their own (filled to their field size with anonymous runners), and the card's features are built there. That
costs a copy of the history (about a second on a few thousand races), so it happens only for cards that bring
past runs the warehouse does not already hold (same horse, same date).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pydantic_core

from racequant.models.boosters import LIBRARIES
from racequant.models.card import RaceCard, parse_card
from racequant.models.pipeline import RacePipeline
from racequant.models.registry import latest_version, load_model, read_manifest

logger = logging.getLogger(__name__)

SIX_MODELS = tuple(f"{lib}_{target}" for target in ("win", "place") for lib in LIBRARIES)
# the summary figures of the output schema -> the feature columns they are read from (docs/features.md: the
# quant triple's speed, class and sectional signals)
FIGURES = {
    "speed_rating": "speed_last_3_avg",
    "class_rating": "rating_today",
    "sectional_l200": "sectional_l200_avg_l5",
    "quant_triple_scenario": "quant_triple_scenario",
}
OUTPUT_FIELDS = (
    "race_id",
    "horse_id",
    "horse_name",
    "win_prob_base",
    "place_prob_base",
    "win_prob_lower",
    "win_prob_upper",
    "place_prob_lower",
    "place_prob_upper",
    "catboost_win",
    "lightgbm_win",
    "xgboost_win",
    "top_features",
    "speed_rating",
    "class_rating",
    "sectional_l200",
    "quant_triple_scenario",
    "model_version",
    "feature_version",
    "calibration_group",
    "prediction_timestamp",
)


def _clean(value: Any) -> Any:
    """A JSON-ready scalar: NaN and NA become None, numpy scalars plain Python."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_PROBABILITY_COLUMNS = (
    "win_prob",
    "place_prob",
    "win_prob_lower",
    "win_prob_upper",
    "place_prob_lower",
    "place_prob_upper",
)


def _clean_values(column: pd.Series) -> list[Any]:
    """``_clean`` of every value of a column (floats without a per-value type check)."""
    if isinstance(column.dtype, np.dtype) and column.dtype.kind == "f":
        return [v if math.isfinite(v) else None for v in column.to_numpy().tolist()]
    return [_clean(v) for v in column.tolist()]


@functools.lru_cache(maxsize=8)
def _json_template(names: tuple[str, ...]) -> str:
    """'{"name":%s,...}' for ``names`` (a model's feature columns: one template per loaded model)."""
    return "{" + ",".join(json.dumps(str(n)).replace("%", "%%") + ":%s" for n in names) + "}"


def features_json(frame: pd.DataFrame, names: Sequence[str]) -> list[str]:
    """Each row's values of ``names`` as one JSON object (keys in that order; a missing or non-finite value is
    null), as the prediction log stores them for drift monitoring. Built column by column as text: a dict per
    runner, pickled to the server and encoded there, cost ten times more on a card."""
    template = _json_template(tuple(names))
    dtypes = dict(zip(frame.columns, frame.dtypes, strict=True))
    floats = [n for n in names if isinstance(dtypes[n], np.dtype) and dtypes[n].kind == "f"]
    text: dict[str, list[str]] = {}
    if floats:  # one block for the float columns: a column lookup per feature costs more than its encoding
        for n, values in zip(floats, frame[floats].to_numpy(dtype=float).T.tolist(), strict=True):
            text[n] = [repr(v) if math.isfinite(v) else "null" for v in values]
    for n in names:
        if n not in text:
            text[n] = [pydantic_core.to_json(v, fallback=str).decode() for v in _clean_values(frame[n])]
    return [template % row for row in zip(*(text[n] for n in names), strict=True)]


class Predictor:
    """A loaded model version that turns race cards into the quantitative output records."""

    def __init__(self, pipeline: RacePipeline, manifest: Mapping[str, Any], directory: Path | None = None) -> None:
        self.pipeline = pipeline
        self.manifest = dict(manifest)
        self.directory = directory
        self.model_version: str = str(self.manifest.get("version") or (directory.name if directory else "unsaved"))
        self.feature_version: str = str(pipeline.feature_manifest_hash or self.manifest.get("feature_manifest_hash"))
        self.feature_count: int = len(pipeline.feature_columns_)
        loaded = {f"{lib}_win" for lib in pipeline.win_boosters_} | {f"{lib}_place" for lib in pipeline.place_boosters_}
        self.models_loaded: dict[str, bool] = {name: name in loaded for name in SIX_MODELS}
        self.loaded_at = datetime.now(UTC)
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._lock = threading.Lock()

    @classmethod
    def load(cls, models_dir: Path | str = "models", version: str | Path | None = None) -> Predictor:
        """Load ``models_dir/<version>`` (or the path ``version``; the latest version by default).

        Refuses a missing (ArtifactNotFoundError), corrupted (CorruptedArtifactError) or feature-incompatible
        (IncompatibleArtifactError) artifact, with the registry's message.
        """
        from racequant.features.manifest import feature_version

        if version is None:
            directory = latest_version(models_dir)
        else:
            candidate = Path(version)
            directory = candidate if (candidate / "manifest.json").is_file() else Path(models_dir) / str(version)
        pipeline = load_model(directory, feature_version(), None)
        return cls(pipeline, read_manifest(directory), directory)

    @classmethod
    def from_pipeline(cls, pipeline: RacePipeline, model_version: str = "unsaved") -> Predictor:
        """A predictor around a fitted pipeline held in memory (tests, the backtest)."""
        return cls(pipeline, {"version": model_version, "feature_manifest_hash": pipeline.feature_manifest_hash})

    # -- the API's protocol: a held warehouse connection --------------------------------------------------
    def attach(self, conn: duckdb.DuckDBPyConnection) -> Predictor:
        """Hold ``conn`` for ``predict(card, as_of)``. Each calling thread reads through its own cursor of it (a
        DuckDB connection serves one thread at a time; its cursors run in parallel), so concurrent requests are
        not serialised on one connection. ``detach`` closes the cursors."""
        self._conn = conn
        return self

    def detach(self) -> None:
        """Close the threads' cursors and drop the connection (the caller closes the connection itself)."""
        with self._lock:
            cursors, self._cursors = self._cursors, []
            self._conn = None
            self._local = threading.local()
        for cursor in cursors:
            cursor.close()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        if self._conn is None:
            from racequant.errors import ConfigurationError

            raise ConfigurationError("The predictor has no warehouse connection: call attach(conn) first.")
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            with self._lock:
                cursor = self._conn.cursor()
                self._cursors.append(cursor)
            self._local.cursor = cursor
        return cursor

    def warm_up(self) -> Predictor:
        """Build what the first card would otherwise wait for: the boosters' leaf tables (explanations) and their
        compiled look-up kernel (``treeshap._explain``)."""
        started = time.perf_counter()
        for _, booster in self.pipeline.blend_members():  # the boosters the explanations add up
            booster.leaf_tables()
        logger.info("model %s warmed up in %.2f s", self.model_version, time.perf_counter() - started)
        return self

    def predict(self, card: RaceCard | Mapping[str, Any], as_of: datetime | None = None) -> list[dict[str, Any]]:
        """``predict_card`` on the calling thread's cursor of the attached connection, each record with its
        ``_features`` as JSON text (``features_json``: what the API logs for drift monitoring)."""
        return self.predict_card(self._cursor(), card, as_of, with_features=True)

    def predict_many(
        self, cards: Sequence[tuple[RaceCard | Mapping[str, Any], datetime | None]]
    ) -> list[list[dict[str, Any]]]:
        """``predict`` of several (card, as_of) in one pipeline call (``predict_cards``)."""
        return self.predict_cards(self._cursor(), cards, with_features=True)

    # -- the one path -----------------------------------------------------------------------------------
    def features(
        self, conn: duckdb.DuckDBPyConnection, card: RaceCard | Mapping[str, Any], as_of: datetime | date | None = None
    ) -> pd.DataFrame:
        """The card's point-in-time features (inline past runs included), one row per declared runner."""
        race_card = parse_card(card)
        return card_features(conn, race_card, as_of if as_of is not None else race_card.off)

    def predict_card(
        self,
        conn: duckdb.DuckDBPyConnection,
        card: RaceCard | Mapping[str, Any],
        as_of: datetime | date | None = None,
        *,
        with_features: bool = False,
    ) -> list[dict[str, Any]]:
        """One record per declared runner, in card order, with every field of the quantitative output schema.

        ``win_prob_base`` / ``place_prob_base`` are the model's calibrated probabilities (the base that
        qualitative fusion adjusts): they sum to 1 and to the places paid in the race. ``market_prob`` is added
        when the card carries odds; it is never a model input.
        """
        started = time.perf_counter()
        race_card, as_of, frame = self._card_frame(conn, card, as_of)
        records = self._records(race_card, as_of, frame, self.pipeline.predict(frame), with_features)
        logger.info(
            "predicted race %s (%d runners) with model %s in %.1f ms",
            race_card.race_id,
            len(records),
            self.model_version,
            (time.perf_counter() - started) * 1000,
        )
        return records

    def predict_cards(
        self,
        conn: duckdb.DuckDBPyConnection,
        cards: Sequence[tuple[RaceCard | Mapping[str, Any], datetime | date | None]],
        *,
        with_features: bool = False,
    ) -> list[list[dict[str, Any]]]:
        """``predict_card`` of several (card, as_of) at once: each card's features, then one pipeline call for all
        their runners (the boosters' and pandas' fixed costs shared). The same records as card by card: every
        stage works race by race (each card's runners get a race key of their own, so two cards of one race stay
        apart) or runner by runner. Any failure is left to ``predict_card`` to raise for the card that causes it."""
        if len(cards) == 1:
            return [self.predict_card(conn, cards[0][0], cards[0][1], with_features=with_features)]
        started = time.perf_counter()
        prepared = [self._card_frame(conn, card, as_of) for card, as_of in cards]
        batch = pd.concat(
            [frame.assign(**{self.pipeline.race_col: f"{k}:"}) for k, (_, _, frame) in enumerate(prepared)],
            ignore_index=True,
        )
        out = self.pipeline.predict(batch)
        results, offset = [], 0
        for race_card, as_of, frame in prepared:
            part = out.iloc[offset : offset + len(frame)]
            results.append(self._records(race_card, as_of, frame, part, with_features))
            offset += len(frame)
        logger.info(
            "predicted %d races (%d runners) with model %s in %.1f ms",
            len(cards),
            len(batch),
            self.model_version,
            (time.perf_counter() - started) * 1000,
        )
        return results

    def _card_frame(
        self, conn: duckdb.DuckDBPyConnection, card: RaceCard | Mapping[str, Any], as_of: datetime | date | None
    ) -> tuple[RaceCard, datetime | date, pd.DataFrame]:
        """The parsed card, its as_of and its feature frame with the calibration group."""
        race_card = parse_card(card)
        as_of = as_of if as_of is not None else race_card.off
        frame = card_features(conn, race_card, as_of)
        group_col = self.pipeline.calibration_group
        if group_col is not None and group_col not in frame.columns:
            race_values = race_card.model_dump()
            frame = frame.copy()  # one consolidated block: inserting into the fragmented feature frame is slow
            frame[group_col] = race_values.get(group_col, race_card.track)
        return race_card, as_of, frame

    def _records(
        self,
        race_card: RaceCard,
        as_of: datetime | date,
        frame: pd.DataFrame,
        out: pd.DataFrame,
        with_features: bool,
    ) -> list[dict[str, Any]]:
        """The output records of a card from its feature frame and the pipeline's rows for it (same order)."""
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        declared = {h.horse_id: h for h in race_card.declared()}
        has_odds = any(h.win_odds is not None for h in declared.values())
        by_horse = {str(h): i for i, h in enumerate(frame["horse_id"])}
        as_of_text = as_of.isoformat() if isinstance(as_of, date | datetime) else str(as_of)
        # columns as lists once (per-row Series lookups cost more than the boosters on a 14-runner card)
        probs = {c: out[c].to_numpy() for c in _PROBABILITY_COLUMNS}
        result = {
            c: _clean_values(out[c]) for c in ("calibration_group", *(f"{lib}_win" for lib in LIBRARIES)) if c in out
        }
        figures = {name: _clean_values(frame[col]) if col in frame else None for name, col in FIGURES.items()}
        market = _clean_values(frame["market_prob"]) if has_odds and "market_prob" in frame else None
        top = out["top_features"].tolist() if "top_features" in out else None
        features = features_json(frame, self.pipeline.feature_columns_) if with_features else None
        records = []
        for horse_id, horse in declared.items():
            i = by_horse[horse_id]
            record: dict[str, Any] = {
                "race_id": race_card.race_id,
                "horse_id": horse_id,
                "horse_name": horse.horse_name,
                "win_prob_base": float(probs["win_prob"][i]),
                "place_prob_base": float(probs["place_prob"][i]),
                "win_prob_lower": float(probs["win_prob_lower"][i]),
                "win_prob_upper": float(probs["win_prob_upper"][i]),
                "place_prob_lower": float(probs["place_prob_lower"][i]),
                "place_prob_upper": float(probs["place_prob_upper"][i]),
                **{f"{lib}_win": result[f"{lib}_win"][i] if f"{lib}_win" in result else None for lib in LIBRARIES},
                "top_features": top[i] if top is not None else None,
                **{name: values[i] if values is not None else None for name, values in figures.items()},
                "model_version": self.model_version,
                "feature_version": self.feature_version,
                "calibration_group": result["calibration_group"][i],
                "prediction_timestamp": stamp,
                "as_of": as_of_text,
            }
            if has_odds:
                record["market_prob"] = market[i] if market is not None else None
                record["win_odds"] = horse.win_odds
            if features is not None:
                record["_features"] = features[i]
            records.append(record)
        return records


# -- features of a card, with inline past runs -----------------------------------------------------------
def card_features(conn: duckdb.DuckDBPyConnection, card: RaceCard, as_of: datetime | date) -> pd.DataFrame:
    """features_for_card on the warehouse, or on a scratch copy holding the card's new past runs."""
    from racequant.features.build import features_for_card

    feature_card = card.to_feature_card()
    if not any(h.past_runs for h in card.declared()):
        return features_for_card(conn, feature_card, as_of)
    started = time.perf_counter()
    scratch = _scratch_with_past_runs(conn, card)
    if scratch is None:  # every past run is already in the warehouse
        return features_for_card(conn, feature_card, as_of)
    try:
        # a one-off warehouse: loading the compiled card engine (~1 s) would cost more than the SQL path
        frame = features_for_card(scratch, feature_card, as_of, compiled=False)
    finally:
        scratch.close()
    logger.info("race %s: features with inline past runs in %.2f s", card.race_id, time.perf_counter() - started)
    return frame


def _scratch_with_past_runs(conn: duckdb.DuckDBPyConnection, card: RaceCard) -> duckdb.DuckDBPyConnection | None:
    """An in-memory warehouse: the history of ``conn`` plus the card's past runs as races of their own."""
    from racequant.ingest.schema import HORSE_COLUMNS, RACE_COLUMNS, RUNNER_COLUMNS, ParsedResults, conform
    from racequant.warehouse import migrate
    from racequant.warehouse.load import load_results

    races = conn.table("races").df()
    runners = conn.table("runners").df()
    horses = conn.table("horses").df()
    card_ids = {h.horse_id for h in card.declared()}
    known = runners.loc[runners["horse_id"].isin(card_ids), ["race_id", "horse_id"]].merge(
        races[["race_id", "date"]], on="race_id"
    )
    held = {(str(h), pd.Timestamp(d).date()) for h, d in zip(known["horse_id"], known["date"], strict=True)}
    new_races: dict[str, dict[str, Any]] = {}
    new_runners: list[dict[str, Any]] = []
    taken: dict[str, set[int]] = {}
    sizes: dict[str, int] = {}
    for horse in card.declared():
        for k, run in enumerate(horse.past_runs):
            if (horse.horse_id, run.date) in held:
                continue
            race_id = f"past:{run.race_id}" if run.race_id else f"past:{horse.horse_id}:{k}"
            new_races.setdefault(
                race_id,
                {
                    "race_id": race_id,
                    "source": "inline past runs",
                    "date": pd.Timestamp(run.date),
                    "track": run.track or card.track,
                    "country": card.country,
                    "distance_m": run.distance or card.distance,
                    "surface": run.surface or card.surface,
                    "going": run.going,
                    "race_class": run.race_class,
                },
            )
            position = run.finish_position
            new_runners.append(
                {
                    "race_id": race_id,
                    "horse_id": horse.horse_id,
                    "horse_name": horse.horse_name,
                    "draw": run.draw,
                    "jockey_id": run.jockey,
                    "trainer_id": run.trainer,
                    "sex": horse.sex,
                    # a speed figure is weight-adjusted: without the run's weight, today's stands in
                    "carried_weight_lbs": run.weight if run.weight is not None else horse.weight,
                    "rating": run.rating,
                    "status": "finished" if position is not None else "did_not_finish",
                    "finish_position": position,
                    "margin_lengths": 0.0 if position == 1 else run.margin_lengths,
                    "finish_time_s": run.finish_time_s,
                    "win_odds": run.win_odds,
                }
            )
            if position is not None:
                taken.setdefault(race_id, set()).add(position)
            size = run.field_size or max(position or 1, len(card.declared()))
            sizes[race_id] = max(sizes.get(race_id, 0), size)
    if not new_races:
        return None
    # anonymous rivals fill each past race to its field size, so positions and field sizes read true
    for race_id, size in sizes.items():
        own = sum(1 for r in new_runners if r["race_id"] == race_id)
        free = [p for p in range(1, size + 1) if p not in taken.get(race_id, set())]
        for p in free[: max(size - own, 0)]:
            new_runners.append(
                {"race_id": race_id, "horse_id": f"{race_id}:rival{p}", "status": "finished", "finish_position": p}
            )
    new_horses = [
        {
            "horse_id": h.horse_id,
            "horse_name": h.horse_name,
            "sire": h.sire,
            "dam": h.dam,
            "damsire": h.damsire,
            "sex": h.sex,
        }
        for h in card.declared()
        if h.horse_id not in set(horses["horse_id"])
    ]
    parsed = ParsedResults(
        source="inline past runs",
        format="racequant",
        races=conform(pd.concat([races, pd.DataFrame(list(new_races.values()))], ignore_index=True), RACE_COLUMNS),
        runners=conform(pd.concat([runners, pd.DataFrame(new_runners)], ignore_index=True), RUNNER_COLUMNS),
        horses=conform(pd.concat([horses, pd.DataFrame(new_horses)], ignore_index=True), HORSE_COLUMNS),
    )
    scratch = duckdb.connect()
    try:
        migrate(scratch)
        load_results(scratch, parsed, "inline past runs")
    except Exception:
        scratch.close()
        raise
    logger.debug("scratch warehouse: %d past races added for race %s", len(new_races), card.race_id)
    return scratch


__all__ = ["FIGURES", "OUTPUT_FIELDS", "SIX_MODELS", "Predictor", "card_features"]
