"""Composites from the seed: how speed, class and sectionals agree.

Each of three signals is turned into a z-score within today's field (value minus the field mean, over the
field's standard deviation; missing with fewer than 2 values or no spread):
  speed     = speed_last_3_avg                     (higher is better)
  class     = rating_today (official rating)       (higher is better)
  sectional = -sectional_l200_avg_l5               (a faster final 200 m is better)
``quant_triple_score`` is the mean of the available z-scores. ``quant_triple_scenario``:
  elite        all three z >= 0.5
  over_rated   class z >= 0.5 but speed z < 0 and sectional z < 0 (rated above what it shows)
  under_rated  class z < 0 but speed z >= 0.5 and sectional z >= 0 (shows more than its rating)
  questionable all three z <= -0.5
  mixed        anything else, including any signal missing
``speed_class_ratio`` = speed_last_3_avg / class_par_today (above 1: recent figures beat today's class par).
"""

from __future__ import annotations

from racequant.features.manifest import FeatureSpec

_SP = ("finish_time_s", "margin_lengths", "finish_position", "carried_weight_lbs", "distance_m", "going")

SPECS: tuple[FeatureSpec, ...] = (
    FeatureSpec("speed_class_ratio", "composite", "speed_last_3_avg / class_par_today.", (*_SP, "race_class")),
    FeatureSpec("speed_z_in_field", "composite", "z-score of speed_last_3_avg within today's field.", _SP),
    FeatureSpec("class_z_in_field", "composite", "z-score of the official rating within today's field.", ("rating",)),
    FeatureSpec(
        "sectional_z_in_field",
        "composite",
        "z-score of -sectional_l200_avg_l5 within today's field.",
        ("section_times_s", "section_distances_m"),
    ),
    FeatureSpec(
        "quant_triple_score",
        "composite",
        "Mean of the speed, class and sectional z-scores.",
        (*_SP, "rating", "section_times_s", "section_distances_m"),
    ),
    FeatureSpec(
        "quant_triple_scenario",
        "composite",
        "elite | over_rated | under_rated | questionable | mixed (rule in the module docstring and docs/features.md).",
        (*_SP, "rating", "section_times_s"),
        "varchar",
    ),
)


FIELD_LISTS: tuple[str, ...] = ()


def _z(expr: str, values: str, sign: str = "") -> str:
    """z-score of ``expr`` in today's field (``values``: the field's list of the same value, unsigned)."""
    sd = f"list_stddev_samp({values})"
    return f"CASE WHEN list_count({values}) >= 2 AND {sd} > 0 THEN {sign}({expr} - list_avg({values})) / {sd} END"


FIELD_EXPRS: tuple[str, ...] = (
    f"{_z('speed_last_3_avg', 'l_speed3')} AS speed_z_in_field",
    f"{_z('rating', 'l_rating')} AS class_z_in_field",
    # a faster (smaller) final 200 m is better: the z-score of -l200 is minus the z-score of l200
    f"{_z('sectional_l200_avg_l5', 'l_l200', '-')} AS sectional_z_in_field",
)

ROW_EXPRS: tuple[str, ...] = (
    "CASE WHEN class_par_today > 0 THEN speed_last_3_avg / class_par_today END AS speed_class_ratio",
    "CASE WHEN coalesce(speed_z_in_field, class_z_in_field, sectional_z_in_field) IS NOT NULL THEN"
    " (coalesce(speed_z_in_field, 0) + coalesce(class_z_in_field, 0) + coalesce(sectional_z_in_field, 0))"
    " / ((speed_z_in_field IS NOT NULL)::INTEGER + (class_z_in_field IS NOT NULL)::INTEGER"
    " + (sectional_z_in_field IS NOT NULL)::INTEGER) END AS quant_triple_score",
    "CASE WHEN speed_z_in_field >= 0.5 AND class_z_in_field >= 0.5 AND sectional_z_in_field >= 0.5 THEN 'elite'"
    " WHEN class_z_in_field >= 0.5 AND speed_z_in_field < 0 AND sectional_z_in_field < 0 THEN 'over_rated'"
    " WHEN class_z_in_field < 0 AND speed_z_in_field >= 0.5 AND sectional_z_in_field >= 0 THEN 'under_rated'"
    " WHEN speed_z_in_field <= -0.5 AND class_z_in_field <= -0.5 AND sectional_z_in_field <= -0.5 THEN 'questionable'"
    " ELSE 'mixed' END AS quant_triple_scenario",
)
