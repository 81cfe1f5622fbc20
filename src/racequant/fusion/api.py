"""The functions ``racequant fuse``, ``racequant qual import`` and the API call: no CLI logic here."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from racequant.fusion.errors import FusionParameterError, QualitativeValidationError
from racequant.fusion.fusion import FittedFusion, fuse_records
from racequant.fusion.interface import FusionInterface, QuantitativePredictor
from racequant.fusion.providers import SubmittedProvider
from racequant.fusion.schema import QualitativeRecord, load_qualitative_file, records_from_json
from racequant.warehouse import connect, connect_read_only
from racequant.warehouse.qualitative_store import load_qualitative, store_qualitative

logger = logging.getLogger(__name__)

__all__ = [
    "fuse_card",
    "fuse_files",
    "import_qualitative",
    "load_qualitative_file",
    "qualitative_from_warehouse",
    "store_submitted",
]


def import_qualitative(db: Path | str, path: Path | str, source: str | None = None) -> dict[str, Any]:
    """``racequant qual import FILE``: validate every record of the file, then store them all in one transaction."""
    records = load_qualitative_file(path)
    with connect(db) as conn:
        return store_qualitative(conn, records, source=source or f"file:{Path(path).name}")


def store_submitted(db: Path | str, payload: Any, source: str = "api") -> dict[str, Any]:
    """The API's submission: parsed JSON (a list of records or ``{"records": [...]}``), validated, then stored."""
    records = records_from_json(payload, source=f"{source} submission")
    with connect(db) as conn:
        return store_qualitative(conn, records, source=source)


def qualitative_from_warehouse(
    db: Path | str, race_ids: Sequence[str] | None = None, model_chain: str | None = None
) -> list[QualitativeRecord]:
    """Stored records, validated again on the way out."""
    with connect_read_only(db) as conn:
        raw = load_qualitative(conn, race_ids, model_chain)
    return records_from_json(raw, source=f"warehouse {db}")


def _is_quant_records(card: Any) -> bool:
    return isinstance(card, list) and bool(card) and all(isinstance(r, Mapping) and "win_prob_base" in r for r in card)


def fuse_card(
    card: Mapping[str, Any] | list[dict[str, Any]],
    qual_records: Sequence[QualitativeRecord],
    mode: str = "product",
    pool: FittedFusion | None = None,
    quantitative: QuantitativePredictor | None = None,
    notes: str | None = None,
) -> list[dict[str, Any]]:
    """Fuse one race card (or ready quantitative records, e.g. the output of ``racequant predict``).

    With a card, ``quantitative(card)`` gives the quantitative records; it runs concurrently with the lookup of
    the qualitative records (FusionInterface).
    """
    if _is_quant_records(card):
        return fuse_records(card, qual_records, mode, pool)  # type: ignore[arg-type]
    if not isinstance(card, Mapping):
        raise FusionParameterError(
            "The race card must be a JSON object with race_id and runners, or a list of quantitative records."
        )
    if quantitative is None:
        raise FusionParameterError("Fusing a race card needs a quantitative predictor (predict_race(card)).")
    interface = FusionInterface(quantitative, SubmittedProvider(qual_records), mode=mode, pool=pool)
    return interface.predict_race_sync(card, notes)


def fuse_files(
    card_path: Path | str,
    qual_path: Path | str,
    mode: str = "product",
    pool_path: Path | str | None = None,
    quantitative: Callable[[Mapping[str, Any]], list[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """``racequant fuse RACECARD.json --qual QUAL.json [--mode product|fitted] [--pool POOL.joblib]``."""
    try:
        card = json.loads(Path(card_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise QualitativeValidationError([f"cannot read the race card: {exc}"], source=str(card_path)) from exc
    qual = load_qualitative_file(qual_path)
    pool = FittedFusion.load(pool_path) if pool_path is not None else None
    if mode == "fitted" and pool is None:
        raise FusionParameterError("--mode fitted needs a fitted pool (--pool FILE, saved by FittedFusion.save).")
    return fuse_card(card, qual, mode=mode, pool=pool, quantitative=quantitative)


def demo_fuse_race(
    results: Any,
    race_id: str | None = None,
    quant_records: list[dict[str, Any]] | None = None,
    seed: int = 0,
    strength: float = 0.3,
) -> dict[str, Any]:
    """``racequant demo``'s fusion step on one simulated race (the last with 7+ runners unless ``race_id``).

    ``results`` is the simulator's SimulatedResults; the qualitative records are synthetic, read from its true
    probabilities (racequant.fusion.synthetic). Without ``quant_records`` (the trained model's output for the race)
    a noisy stand-in of the base model is used. Returns the race id, the qualitative and the fused records.
    """
    import numpy as np

    from racequant.fusion.synthetic import synthetic_qualitative_records
    from racequant.models.place import harville_place_probabilities

    runners = results.runners[results.runners["status"].astype(str) != "withdrawn"]
    runners = runners.merge(results.truth[["race_id", "horse_id", "true_win_prob"]], on=["race_id", "horse_id"])
    if race_id is None:
        sizes = runners.groupby("race_id", sort=False).size()
        race_id = str(sizes[sizes >= 7].index[-1])
    race = runners[runners["race_id"] == race_id]
    if race.empty:
        raise FusionParameterError(f"Race {race_id} is not among the simulated races.")
    true_p = race["true_win_prob"].to_numpy(dtype=float)
    if quant_records is None:
        rng = np.random.default_rng(seed)
        score = 0.75 * np.log(np.clip(true_p, 1e-6, None)) + rng.normal(0.0, 0.45, len(race))
        p = np.exp(score - score.max())
        p /= p.sum()
        place = harville_place_probabilities(p, np.zeros(len(p)))
        quant_records = [
            {
                "race_id": race_id,
                "horse_id": str(h),
                "horse_name": str(n),
                "win_prob_base": float(pi),
                "place_prob_base": float(pl),
                "model_version": "demo-stand-in",
            }
            for h, n, pi, pl in zip(race["horse_id"], race["horse_name"], p, place, strict=True)
        ]
    qual = synthetic_qualitative_records(
        race["race_id"].to_numpy(), race["horse_id"].to_numpy(), race["horse_name"].to_numpy(), true_p, strength, seed
    )
    fused = fuse_records(quant_records, qual, "product")
    return {"race_id": race_id, "qualitative": [q.to_json_dict() for q in qual], "fused": fused}
