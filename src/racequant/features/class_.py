"""Category 19, class ratings: the level the horse runs at, its official rating and how it fares there.

Class is put on one numeric scale (higher is better): G1 10, G2 9.5, G3 9, Listed 8.5, class 1 8, 2 7, 3 6,
4 5, 5 4, Griffin 3.5, 6 3, 7 2. The class par is the mean winning speed figure at a class, from earlier races.
"""

from __future__ import annotations

from racequant.features.manifest import FeatureSpec

CLASS_SCALE_SQL = (
    "CASE race_class WHEN 'G1' THEN 10 WHEN 'G2' THEN 9.5 WHEN 'G3' THEN 9 WHEN 'Listed' THEN 8.5 WHEN '1' THEN 8"
    " WHEN '2' THEN 7 WHEN '3' THEN 6 WHEN '4' THEN 5 WHEN '5' THEN 4 WHEN 'Griffin' THEN 3.5 WHEN '6' THEN 3"
    " WHEN '7' THEN 2 END::DOUBLE"
)

_C = ("race_class", "date", "race_no")

SPECS: tuple[FeatureSpec, ...] = (
    FeatureSpec(
        "class_current", "class", "Today's class on the numeric class scale (higher is better).", ("race_class",)
    ),
    FeatureSpec("rating_today", "class", "Official rating on the race day.", ("rating",)),
    FeatureSpec("rating_change_last", "class", "Official rating today minus at the last run.", ("rating", *_C)),
    FeatureSpec(
        "rating_vs_l5_avg", "class", "Official rating today minus its mean over the last 5 runs.", ("rating", *_C)
    ),
    FeatureSpec("rating_max_career", "class", "Highest official rating carried in an earlier run.", ("rating", *_C)),
    FeatureSpec("class_last", "class", "Class of the last run.", _C),
    FeatureSpec("class_mean_l5", "class", "Mean class of the last 5 runs.", _C),
    FeatureSpec("class_max_l5", "class", "Highest class of the last 5 runs.", _C),
    FeatureSpec("class_max_career", "class", "Highest class run in so far.", _C),
    FeatureSpec("class_drop", "class", "Class of the last run minus today's (positive: dropping in class).", _C),
    FeatureSpec("class_drop_vs_l5", "class", "Mean class of the last 5 runs minus today's.", _C),
    FeatureSpec(
        "class_par_today",
        "class",
        "Mean winning speed figure at today's class in earlier races.",
        ("race_class", "finish_time_s", "finish_position", "distance_m", "track", "going"),
    ),
    FeatureSpec(
        "perf_vs_class_par_last",
        "class",
        "Last run's speed figure minus the class par of that race.",
        ("race_class", "finish_time_s", "finish_position", "margin_lengths", "date"),
    ),
    FeatureSpec(
        "perf_vs_class_par_avg_l5",
        "class",
        "Mean over the last 5 runs of figure minus class par.",
        ("race_class", "finish_time_s", "finish_position", "margin_lengths", "date"),
    ),
    FeatureSpec(
        "speed_l3_vs_class_par_today",
        "class",
        "speed_last_3_avg minus today's class par.",
        ("race_class", "finish_time_s", "finish_position", "margin_lengths"),
    ),
    FeatureSpec(
        "prize_money_career",
        "class",
        "Prize money won so far (HK shares: 57/22/11.5/6/3.5% of the purse).",
        ("prize", "finish_position", "status"),
    ),
    FeatureSpec(
        "prize_money_l5", "class", "Prize money won in the last 5 runs.", ("prize", "finish_position", "status")
    ),
    FeatureSpec("rating_rel_field", "class", "Official rating minus the mean rating of today's field.", ("rating",)),
    FeatureSpec(
        "rating_rank_in_field", "class", "Rank (1 = highest) of the official rating in today's field.", ("rating",)
    ),
    FeatureSpec(
        "rating_vs_band_top",
        "class",
        "Official rating minus the top of today's rating band.",
        ("rating", "rating_band"),
    ),
)

HORSE_EXPRS: tuple[str, ...] = (
    "rating - lag(rating) OVER wh AS rating_change_last",
    "rating - avg(rating) OVER w5 AS rating_vs_l5_avg",
    "max(rating) OVER wa AS rating_max_career",
    "lag(class_num) OVER wh AS class_last",
    "avg(class_num) OVER w5 AS class_mean_l5",
    "max(class_num) OVER w5 AS class_max_l5",
    "max(class_num) OVER wa AS class_max_career",
    "lag(perf_vs_class_par) OVER wh AS perf_vs_class_par_last",
    "avg(perf_vs_class_par) OVER w5 AS perf_vs_class_par_avg_l5",
    "coalesce(sum(prize_won) OVER wa, 0) AS prize_money_career",
    "coalesce(sum(prize_won) OVER w5, 0) AS prize_money_l5",
)

ROW_EXPRS: tuple[str, ...] = (
    "class_num AS class_current",
    "rating AS rating_today",
    "class_last - class_num AS class_drop",
    "class_mean_l5 - class_num AS class_drop_vs_l5",
    "class_par_fig AS class_par_today",
    "speed_last_3_avg - class_par_fig AS speed_l3_vs_class_par_today",
    "rating - band_top AS rating_vs_band_top",
)

FIELD_LISTS: tuple[str, ...] = ("list(rating ORDER BY horse_id) AS l_rating",)

FIELD_EXPRS: tuple[str, ...] = (
    "rating - list_avg(l_rating) AS rating_rel_field",
    "CASE WHEN rating IS NOT NULL THEN 1 + len(list_filter(l_rating, lambda v: v > rating)) END"
    " AS rating_rank_in_field",
)
