"""Shared builders for the fusion tests: valid raw qualitative records, quantitative records and race cards."""

from __future__ import annotations

import math
from typing import Any

NARRATIVE = (
    "A steadily run handicap: the leaders should go evenly, the rail is fair and the ground is good. Those drawn "
    "low with tactical speed are favoured; the closers need luck in running."
)
assert 150 <= len(NARRATIVE) <= 300


def raw_record(race_id: str = "R1", horse_id: str = "H1", horse_name: str = "Alpha", **changes: Any) -> dict[str, Any]:
    """A valid raw qualitative record (LRs 1.2, 1.0, 0.9, 1.1), with fields replaced by ``changes``."""
    lrs: dict[str, Any] = {"lr_form_fitness": 1.2, "lr_conditions": 1.0, "lr_tactics": 0.9, "lr_context": 1.1}
    # the stated product follows the valid ratios only, so one bad ratio makes one problem
    valid = {
        k: v
        for k, v in changes.items()
        if k in lrs and isinstance(v, int | float) and not isinstance(v, bool) and 0.1 <= v <= 10
    }
    product = math.prod({**lrs, **valid}.values())
    lrs.update({k: v for k, v in changes.items() if k in lrs})
    record: dict[str, Any] = {
        "race_id": race_id,
        "horse_id": horse_id,
        "horse_name": horse_name,
        **lrs,
        "lr_product": round(product, 4),
        "key_strengths": ["won last start", "suits the distance"],
        "key_concerns": ["wide draw"],
        "race_narrative": NARRATIVE,
        "qualitative_confidence": 0.7,
        "model_chain": "analyst-team",
        "prediction_timestamp": "2024-05-01T12:30:00+08:00",
    }
    record.update(changes)
    return record


def race_records(race_id: str, lrs: dict[str, float]) -> list[dict[str, Any]]:
    """Raw records of one race, one per horse, with the overall ratio all in lr_form_fitness."""
    return [
        raw_record(race_id, h, f"Horse {h}", lr_form_fitness=lr, lr_conditions=1.0, lr_tactics=1.0, lr_context=1.0)
        for h, lr in lrs.items()
    ]


def quant_records(race_id: str, probs: dict[str, float], **extra: Any) -> list[dict[str, Any]]:
    """Quantitative records with win_prob_base and +-20 % bounds."""
    return [
        {
            "race_id": race_id,
            "horse_id": h,
            "horse_name": f"Horse {h}",
            "win_prob_base": p,
            "win_prob_lower": 0.8 * p,
            "win_prob_upper": min(1.0, 1.2 * p),
            "model_version": "test",
            **extra,
        }
        for h, p in probs.items()
    ]


def race_card(race_id: str, horses: list[str]) -> dict[str, Any]:
    return {
        "race_id": race_id,
        "date": "2024-05-01",
        "track": "Sha Tin",
        "distance_m": 1200,
        "runners": [{"horse_id": h, "horse_name": f"Horse {h}", "draw": i + 1} for i, h in enumerate(horses)],
    }
