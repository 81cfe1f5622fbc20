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

FIELD_LISTS: tuple[str, ...] = ("list(CASE WHEN win_odds > 0 THEN win_odds END ORDER BY horse_id) AS l_odds",)

FIELD_EXPRS: tuple[str, ...] = (
    "CASE WHEN win_odds > 0 THEN (1.0 / win_odds) / list_sum(list_transform(l_odds, lambda v: 1.0 / v)) END"
    " AS market_prob",
    "list_sum(list_transform(l_odds, lambda v: 1.0 / v)) AS market_overround",
    "CASE WHEN win_odds > 0 THEN 1 + len(list_filter(l_odds, lambda v: v < win_odds)) END AS market_rank",
)
