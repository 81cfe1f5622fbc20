"""Category 20, sectional data: how the horse finishes, where it races early, and the pace it met.

The last section per 200 m is last_section_time * 200 / last_section_length (Hong Kong times each 400 m
from the finish backwards). Early position is the first running position divided by the field size.
Running style from the mean early position over the last 5 runs: leader (<= 0.2 and led at least 40% of
them at the first call), on_pace (<= 0.4), midfield (<= 0.7), closer (otherwise).
"""

from __future__ import annotations

from racequant.features.manifest import FeatureSpec

_S = ("section_times_s", "section_distances_m", "date", "race_no")
_P = ("running_positions", "date", "race_no")

SPECS: tuple[FeatureSpec, ...] = (
    FeatureSpec("sectional_l200_last", "sectionals", "Time per 200 m through the final section in the last run.", _S),
    FeatureSpec(
        "sectional_l200_avg_l5", "sectionals", "Time per 200 m through the final section, mean of the last 5 runs.", _S
    ),
    FeatureSpec("sectional_l200_best_l5", "sectionals", "Fastest final-section time per 200 m in the last 5 runs.", _S),
    FeatureSpec(
        "finish_kick_last",
        "sectionals",
        "Last run's final section per 200 m minus the race mean (negative: finished faster than the field).",
        _S,
    ),
    FeatureSpec("finish_kick_avg_l5", "sectionals", "Mean finishing kick over the last 5 runs.", _S),
    FeatureSpec(
        "early_pace_last",
        "sectionals",
        "Early-pace figure of the last run: own time per 200 m before the final"
        " section against the par for track x distance x surface (positive: faster).",
        (*_S, "track", "distance_m"),
    ),
    FeatureSpec(
        "early_pace_avg_l5", "sectionals", "Mean early-pace figure over the last 5 runs.", (*_S, "track", "distance_m")
    ),
    FeatureSpec("early_position_last", "sectionals", "First running position / field size in the last run.", _P),
    FeatureSpec(
        "early_position_avg_l5", "sectionals", "Mean early position (fraction of the field) over the last 5 runs.", _P
    ),
    FeatureSpec(
        "mid_position_avg_l5", "sectionals", "Mean mid-race position (fraction of the field), last 5 runs.", _P
    ),
    FeatureSpec("led_early_rate_l5", "sectionals", "Share of the last 5 runs led at the first call.", _P),
    FeatureSpec(
        "running_style",
        "sectionals",
        "leader | on_pace | midfield | closer, from the early positions of the last 5 runs.",
        _P,
        "varchar",
    ),
    FeatureSpec(
        "running_style_code", "sectionals", "running_style as a number: 1 leader, 2 on_pace, 3 midfield, 4 closer.", _P
    ),
    FeatureSpec(
        "positions_gained_last",
        "sectionals",
        "First-call position minus finishing position, last run.",
        (*_P, "finish_position"),
    ),
    FeatureSpec(
        "positions_gained_avg_l5",
        "sectionals",
        "Mean positions gained from the first call, last 5 runs.",
        (*_P, "finish_position"),
    ),
    FeatureSpec(
        "race_pace_avg_l5",
        "sectionals",
        "Mean early-pace figure of the races (their field average) the horse ran in, last 5 runs.",
        (*_S, "track", "distance_m"),
    ),
    FeatureSpec(
        "sectional_l200_rank_in_field",
        "sectionals",
        "Rank (1 = fastest) of sectional_l200_avg_l5 in today's field.",
        _S,
    ),
    FeatureSpec(
        "field_leaders_count",
        "sectionals",
        "Number of today's runners whose running style is leader (pace pressure).",
        _P,
    ),
    FeatureSpec("field_on_pace_count", "sectionals", "Number of today's runners whose style is leader or on_pace.", _P),
)

HORSE_EXPRS: tuple[str, ...] = (
    "lag(l200) OVER wh AS sectional_l200_last",
    "avg(l200) OVER w5 AS sectional_l200_avg_l5",
    "min(l200) OVER w5 AS sectional_l200_best_l5",
    "lag(kick) OVER wh AS finish_kick_last",
    "avg(kick) OVER w5 AS finish_kick_avg_l5",
    "lag(early_fig) OVER wh AS early_pace_last",
    "avg(early_fig) OVER w5 AS early_pace_avg_l5",
    "lag(early_pos) OVER wh AS early_position_last",
    "avg(early_pos) OVER w5 AS early_position_avg_l5",
    "avg(mid_pos) OVER w5 AS mid_position_avg_l5",
    "avg(led_early) OVER w5 AS led_early_rate_l5",
    "lag(pos_gained) OVER wh AS positions_gained_last",
    "avg(pos_gained) OVER w5 AS positions_gained_avg_l5",
    "avg(race_pace_fig) OVER w5 AS race_pace_avg_l5",
)

_STYLE_CODE = (
    "CASE WHEN early_position_avg_l5 IS NULL THEN NULL"
    " WHEN early_position_avg_l5 <= 0.2 AND led_early_rate_l5 >= 0.4 THEN 1"
    " WHEN early_position_avg_l5 <= 0.4 THEN 2 WHEN early_position_avg_l5 <= 0.7 THEN 3 ELSE 4 END"
)

ROW_EXPRS: tuple[str, ...] = (
    f"({_STYLE_CODE})::DOUBLE AS running_style_code",
    f"CASE {_STYLE_CODE} WHEN 1 THEN 'leader' WHEN 2 THEN 'on_pace' WHEN 3 THEN 'midfield' WHEN 4 THEN 'closer' END"
    " AS running_style",
)

FIELD_LISTS: tuple[str, ...] = (
    "list(sectional_l200_avg_l5 ORDER BY horse_id) AS l_l200",
    "list(running_style_code ORDER BY horse_id) AS l_style",
)

FIELD_EXPRS: tuple[str, ...] = (
    "CASE WHEN sectional_l200_avg_l5 IS NOT NULL"
    " THEN 1 + len(list_filter(l_l200, lambda v: v < sectional_l200_avg_l5)) END AS sectional_l200_rank_in_field",
    "len(list_filter(l_style, lambda v: v = 1)) AS field_leaders_count",
    "len(list_filter(l_style, lambda v: v <= 2)) AS field_on_pace_count",
)
