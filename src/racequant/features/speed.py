"""Category 18, speed ratings: a speed figure for every past run and the horse's form in figures.

A run's figure compares its weight-adjusted time with the par of its track x distance x surface x going,
learned from earlier races only (see ``_base.py``): 100 is par, every 1% slower than par costs 10 points.
"""

from __future__ import annotations

from racequant.features.manifest import FeatureSpec

_FIG = (
    "finish_time_s",
    "margin_lengths",
    "finish_position",
    "carried_weight_lbs",
    "track",
    "distance_m",
    "surface",
    "going",
    "date",
    "race_no",
)


def _spec(name: str, description: str, extra: tuple[str, ...] = ()) -> FeatureSpec:
    return FeatureSpec(name, "speed", description, _FIG + extra)


SPECS: tuple[FeatureSpec, ...] = (
    _spec("speed_last", "Speed figure of the horse's last run (missing if it did not finish)."),
    _spec("speed_last_3_avg", "Mean speed figure over the last 3 runs."),
    _spec("speed_last_5_avg", "Mean speed figure over the last 5 runs."),
    _spec("speed_best_l5", "Best speed figure in the last 5 runs."),
    _spec("speed_worst_l5", "Worst speed figure in the last 5 runs."),
    _spec("speed_std_l5", "Standard deviation of the speed figures of the last 5 runs (consistency)."),
    _spec("speed_trend", "Slope of the speed figure per run over the last 5 runs (needs 3 figures)."),
    _spec("speed_best_career", "Best speed figure of the career so far."),
    _spec("speed_career_avg", "Mean speed figure of the career so far."),
    _spec("speed_last_vs_career", "Last figure minus the career mean (current form against the norm)."),
    _spec("speed_figure_runs", "Number of past runs with a speed figure."),
    _spec("speed_at_dist_avg", "Mean figure at today's distance band (sprint/mile/middle/staying)."),
    _spec("speed_at_dist_best", "Best figure at today's distance band."),
    _spec("speed_at_track_avg", "Mean figure at today's track."),
    _spec("speed_at_going_avg", "Mean figure on today's going."),
    _spec("speed_at_surface_avg", "Mean figure on today's surface."),
    _spec("speed_l3_rank_in_field", "Rank (1 = best) of speed_last_3_avg among today's runners."),
    _spec("speed_l3_vs_field", "speed_last_3_avg minus the mean of today's field."),
    _spec("speed_best_l5_rank_in_field", "Rank (1 = best) of speed_best_l5 among today's runners."),
    _spec("speed_best_l5_gap_to_top", "speed_best_l5 minus the best speed_best_l5 in today's field."),
)

# Computed over the horse's own earlier runs (named windows are defined in build.py).
HORSE_EXPRS: tuple[str, ...] = (
    "lag(fig) OVER wh AS speed_last",
    "avg(fig) OVER w3 AS speed_last_3_avg",
    "avg(fig) OVER w5 AS speed_last_5_avg",
    "max(fig) OVER w5 AS speed_best_l5",
    "min(fig) OVER w5 AS speed_worst_l5",
    # standard deviation and slope from exact (DECIMAL) sums, not from order-dependent online updates
    "CASE WHEN count(fig) OVER w5 >= 2 THEN sqrt(greatest(0, (sum(fig2) OVER w5 - sum(fig) OVER w5 * sum(fig) OVER w5"
    " / count(fig) OVER w5)::DOUBLE / (count(fig) OVER w5 - 1))) END AS speed_std_l5",
    "CASE WHEN count(fig) OVER w5 >= 3 THEN ((count(fig) OVER w5 * sum(fig_xy) OVER w5 - sum(fig_x) OVER w5"
    " * sum(fig) OVER w5)::DOUBLE / (count(fig) OVER w5 * sum(fig_x2) OVER w5"
    " - sum(fig_x) OVER w5 * sum(fig_x) OVER w5))"
    " END AS speed_trend",
    "max(fig) OVER wa AS speed_best_career",
    "avg(fig) OVER wa AS speed_career_avg",
    "count(fig) OVER wa AS speed_figure_runs",
    "avg(fig) OVER wd AS speed_at_dist_avg",
    "max(fig) OVER wd AS speed_at_dist_best",
    "avg(fig) OVER wt AS speed_at_track_avg",
    "avg(fig) OVER wg AS speed_at_going_avg",
    "avg(fig) OVER ws AS speed_at_surface_avg",
)

# Computed after the horse stage, on today's row.
ROW_EXPRS: tuple[str, ...] = ("speed_last - speed_career_avg AS speed_last_vs_career",)

# Computed across today's field: one list per race of each value, ordered by horse_id (build.py), so sums
# over the field have a fixed order; a rank is 1 + the number of rivals with a better value (ties share it).
FIELD_LISTS: tuple[str, ...] = (
    "list(speed_last_3_avg ORDER BY horse_id) AS l_speed3",
    "list(speed_best_l5 ORDER BY horse_id) AS l_best5",
)

FIELD_EXPRS: tuple[str, ...] = (
    "CASE WHEN speed_last_3_avg IS NOT NULL THEN 1 + len(list_filter(l_speed3, lambda v: v > speed_last_3_avg)) END"
    " AS speed_l3_rank_in_field",
    "speed_last_3_avg - list_avg(l_speed3) AS speed_l3_vs_field",
    "CASE WHEN speed_best_l5 IS NOT NULL THEN 1 + len(list_filter(l_best5, lambda v: v > speed_best_l5)) END"
    " AS speed_best_l5_rank_in_field",
    "speed_best_l5 - list_max(l_best5) AS speed_best_l5_gap_to_top",
)
