"""Context: draw, weights, age, freshness, experience and the horse's own win and place record.

Win and place rates are raw shares of earlier runs (missing before the first run); ``runs_*`` counts say
how much evidence stands behind them.
"""

from __future__ import annotations

from racequant.features.manifest import FeatureSpec

_R = ("finish_position", "status", "date", "race_no")

SPECS: tuple[FeatureSpec, ...] = (
    FeatureSpec("draw", "context", "Barrier / stall.", ("draw",)),
    FeatureSpec("draw_rel_field", "context", "Draw divided by the field size.", ("draw",)),
    FeatureSpec("field_size", "context", "Number of runners (withdrawn horses excluded).", ("status",)),
    FeatureSpec("carried_weight", "context", "Weight carried, pounds.", ("carried_weight_lbs",)),
    FeatureSpec(
        "carried_weight_change",
        "context",
        "Weight carried today minus at the last run.",
        ("carried_weight_lbs", "date", "race_no"),
    ),
    FeatureSpec("carried_weight_rel_field", "context", "Weight carried minus the field mean.", ("carried_weight_lbs",)),
    FeatureSpec("horse_weight", "context", "Declared body weight, pounds.", ("horse_weight_lbs",)),
    FeatureSpec(
        "horse_weight_change",
        "context",
        "Body weight today minus at the last run.",
        ("horse_weight_lbs", "date", "race_no"),
    ),
    FeatureSpec(
        "age",
        "context",
        "Age in years on the race day (the runner's, else race year - the horse's foaled year).",
        ("age", "horses.foaled_year", "date"),
    ),
    FeatureSpec(
        "is_gelding",
        "context",
        "1 if the horse is a gelding, 0 if another sex, missing if unknown (runner's sex, else the horse's).",
        ("sex", "horses.sex"),
    ),
    FeatureSpec("days_since_last_run", "context", "Days since the horse's last run.", ("date",)),
    FeatureSpec("runs_count", "context", "Number of earlier runs.", _R),
    FeatureSpec("first_start", "context", "1 if this is the horse's first run in the data, else 0.", _R),
    FeatureSpec("wins_count", "context", "Number of earlier wins.", _R),
    FeatureSpec("win_rate_career", "context", "Share of earlier runs won.", _R),
    FeatureSpec("place_rate_career", "context", "Share of earlier runs placed (top 3).", _R),
    FeatureSpec("win_rate_l5", "context", "Share of the last 5 runs won.", _R),
    FeatureSpec("place_rate_l5", "context", "Share of the last 5 runs placed.", _R),
    FeatureSpec(
        "finish_pct_avg_l5", "context", "Mean of (position - 1) / (field size - 1) over the last 5 runs (0 = won).", _R
    ),
    FeatureSpec("finish_pos_last", "context", "Finishing position in the last run.", _R),
    FeatureSpec("margin_last", "context", "Lengths behind the winner in the last run.", (*_R, "margin_lengths")),
    FeatureSpec(
        "margin_avg_l5", "context", "Mean lengths behind the winner over the last 5 runs.", (*_R, "margin_lengths")
    ),
    FeatureSpec("runs_at_dist", "context", "Earlier runs at today's distance band.", (*_R, "distance_m")),
    FeatureSpec("win_rate_at_dist", "context", "Win rate at today's distance band.", (*_R, "distance_m")),
    FeatureSpec("place_rate_at_dist", "context", "Place rate at today's distance band.", (*_R, "distance_m")),
    FeatureSpec("runs_at_track", "context", "Earlier runs at today's track.", (*_R, "track")),
    FeatureSpec("win_rate_at_track", "context", "Win rate at today's track.", (*_R, "track")),
    FeatureSpec("place_rate_at_track", "context", "Place rate at today's track.", (*_R, "track")),
    FeatureSpec("win_rate_at_going", "context", "Win rate on today's going.", (*_R, "going")),
    FeatureSpec("place_rate_at_going", "context", "Place rate on today's going.", (*_R, "going")),
    FeatureSpec("win_rate_at_surface", "context", "Win rate on today's surface.", (*_R, "surface")),
    FeatureSpec("distance_change", "context", "Today's distance minus the last run's, metres.", ("distance_m", "date")),
    FeatureSpec("gear_change", "context", "1 if the gear differs from the last run's, else 0.", ("gear", "date")),
    FeatureSpec(
        "field_speed_mean_rivals",
        "context",
        "Mean speed_last_3_avg of today's rivals (strength of the field).",
        ("finish_time_s", "margin_lengths", "finish_position"),
    ),
    FeatureSpec(
        "field_speed_max_rivals",
        "context",
        "Best speed_last_3_avg among today's rivals.",
        ("finish_time_s", "margin_lengths", "finish_position"),
    ),
    FeatureSpec("field_rating_mean", "context", "Mean official rating of today's field.", ("rating",)),
    FeatureSpec("place_rate_l5_rank_in_field", "context", "Rank (1 = best) of place_rate_l5 in today's field.", _R),
)

HORSE_EXPRS: tuple[str, ...] = (
    "carried_weight_lbs - lag(carried_weight_lbs) OVER wh AS carried_weight_change",
    "horse_weight_lbs - lag(horse_weight_lbs) OVER wh AS horse_weight_change",
    "(date - lag(date) OVER wh)::DOUBLE AS days_since_last_run",
    "count(has_result) OVER wa AS runs_count",
    "coalesce(sum(won) OVER wa, 0) AS wins_count",
    "avg(won) OVER wa AS win_rate_career",
    "avg(placed) OVER wa AS place_rate_career",
    "avg(won) OVER w5 AS win_rate_l5",
    "avg(placed) OVER w5 AS place_rate_l5",
    "avg(finish_pct) OVER w5 AS finish_pct_avg_l5",
    "lag(finish_position) OVER wh AS finish_pos_last",
    "lag(margin_lengths) OVER wh AS margin_last",
    "avg(margin_lengths) OVER w5 AS margin_avg_l5",
    "count(has_result) OVER wd AS runs_at_dist",
    "avg(won) OVER wd AS win_rate_at_dist",
    "avg(placed) OVER wd AS place_rate_at_dist",
    "count(has_result) OVER wt AS runs_at_track",
    "avg(won) OVER wt AS win_rate_at_track",
    "avg(placed) OVER wt AS place_rate_at_track",
    "avg(won) OVER wg AS win_rate_at_going",
    "avg(placed) OVER wg AS place_rate_at_going",
    "avg(won) OVER ws AS win_rate_at_surface",
    "distance_m - lag(distance_m) OVER wh AS distance_change",
    "CASE WHEN count(*) OVER wa = 0 THEN NULL WHEN lag(gear) OVER wh IS NOT DISTINCT FROM gear THEN 0.0 ELSE 1.0 END"
    " AS gear_change",
)

ROW_EXPRS: tuple[str, ...] = (
    "draw::DOUBLE AS draw",
    "draw / field_size AS draw_rel_field",
    "field_size::DOUBLE AS field_size",
    "carried_weight_lbs AS carried_weight",
    "horse_weight_lbs AS horse_weight",
    "age::DOUBLE AS age",
    "CASE WHEN sex IS NULL THEN NULL WHEN sex = 'G' THEN 1.0 ELSE 0.0 END AS is_gelding",
    "CASE WHEN runs_count = 0 THEN 1.0 ELSE 0.0 END AS first_start",
)

FIELD_LISTS: tuple[str, ...] = (
    "list(carried_weight_lbs ORDER BY horse_id) AS l_carried",
    "list(place_rate_l5 ORDER BY horse_id) AS l_place5",
    "list(horse_id ORDER BY horse_id) AS l_horse",
)

# rivals: today's field without the runner itself (l_horse is aligned with the other lists)
_RIVALS_SPEED = "list_filter(l_speed3, lambda v, i: l_horse[i] <> horse_id)"

FIELD_EXPRS: tuple[str, ...] = (
    "carried_weight_lbs - list_avg(l_carried) AS carried_weight_rel_field",
    f"list_avg({_RIVALS_SPEED}) AS field_speed_mean_rivals",
    f"list_max({_RIVALS_SPEED}) AS field_speed_max_rivals",
    "list_avg(l_rating) AS field_rating_mean",
    "CASE WHEN place_rate_l5 IS NOT NULL THEN 1 + len(list_filter(l_place5, lambda v: v > place_rate_l5)) END"
    " AS place_rate_l5_rank_in_field",
)
