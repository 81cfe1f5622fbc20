"""The market, kept apart: odds-implied probabilities, stored but never part of the fundamental features.

Later stages use them only as the baseline and in the second-stage blend with the model.
"""

from __future__ import annotations

from racequant.features.manifest import FeatureSpec

SPECS: tuple[FeatureSpec, ...] = (
    FeatureSpec(
        "market_prob",
        "market",
        "Odds-implied win probability normalised within the race: (1/odds) / sum(1/odds).",
        ("win_odds",),
    ),
    FeatureSpec("market_overround", "market", "Sum of 1/odds over the race (about 1.2 in Hong Kong).", ("win_odds",)),
    FeatureSpec("market_rank", "market", "Rank of the runner in the market (1 = favourite).", ("win_odds",)),
)

FIELD_EXPRS: tuple[str, ...] = (
    "CASE WHEN win_odds > 0 THEN (1.0 / win_odds) / sum(CASE WHEN win_odds > 0 THEN 1.0 / win_odds END) OVER fr END"
    " AS market_prob",
    "sum(CASE WHEN win_odds > 0 THEN 1.0 / win_odds END) OVER fr AS market_overround",
    "CASE WHEN win_odds > 0 THEN rank() OVER (PARTITION BY race_id"
    " ORDER BY win_odds ASC NULLS LAST) END AS market_rank",
)
