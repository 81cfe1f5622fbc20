"""Connections: jockey and trainer strike rates (career and rolling), their combination, and the draw bias.

Strike rates are shrunk toward the population rate of earlier races, (wins + m * prior) / (rides + m).
The draw bias is the shrunk win rate of today's stall at track x distance x course variant in earlier races.
"""

from __future__ import annotations

from racequant.features.manifest import FeatureSpec

ROLLING_RIDES = 300

# group name -> (key columns, rolling window in rides or None, default m until it can be fitted: shrinkage.py)
GROUPS: dict[str, tuple[tuple[str, ...], int | None, float]] = {
    "jockey": (("jockey_id",), None, 50.0),
    "jockey_recent": (("jockey_id",), ROLLING_RIDES, 50.0),
    "trainer": (("trainer_id",), None, 50.0),
    "trainer_recent": (("trainer_id",), ROLLING_RIDES, 50.0),
    "jockey_trainer": (("jockey_id", "trainer_id"), None, 30.0),
    "draw": (("track", "distance_m", "course_config", "draw"), None, 100.0),
}

_J = ("jockey_id", "finish_position", "status", "date", "race_no")
_T = ("trainer_id", "finish_position", "status", "date", "race_no")


def _rate(group: str, col: str, prior: str) -> str:
    keys, _, _m_default = GROUPS[group]
    # m: the empirical-Bayes prior strength fitted on earlier races (shrinkage.py)
    m = f"m_{group.removesuffix('_recent')}_{'win' if prior == 'prior_win' else 'place'}"
    present = " AND ".join(f"{k} IS NOT NULL" for k in keys)
    return (
        f"CASE WHEN {present} THEN (coalesce(g_{group}.{col}, 0) + {m} * {prior})"
        f" / (coalesce(g_{group}.n_b, 0) + {m}) END"
    )


SPECS: tuple[FeatureSpec, ...] = (
    FeatureSpec("jockey_rides", "connections", "Jockey's rides before today.", _J),
    FeatureSpec("jockey_win_rate", "connections", "Jockey's career win rate, shrunk (m fitted).", _J),
    FeatureSpec("jockey_place_rate", "connections", "Jockey's career place (top 3) rate, shrunk (m fitted).", _J),
    FeatureSpec(
        "jockey_win_rate_recent", "connections", f"Jockey's win rate over the last {ROLLING_RIDES} rides, shrunk.", _J
    ),
    FeatureSpec(
        "jockey_place_rate_recent",
        "connections",
        f"Jockey's place rate over the last {ROLLING_RIDES} rides, shrunk.",
        _J,
    ),
    FeatureSpec("trainer_runs", "connections", "Trainer's runners before today.", _T),
    FeatureSpec("trainer_win_rate", "connections", "Trainer's career win rate, shrunk (m fitted).", _T),
    FeatureSpec("trainer_place_rate", "connections", "Trainer's career place rate, shrunk (m fitted).", _T),
    FeatureSpec(
        "trainer_win_rate_recent",
        "connections",
        f"Trainer's win rate over the last {ROLLING_RIDES} runners, shrunk.",
        _T,
    ),
    FeatureSpec(
        "trainer_place_rate_recent",
        "connections",
        f"Trainer's place rate over the last {ROLLING_RIDES} runners, shrunk.",
        _T,
    ),
    FeatureSpec(
        "jockey_trainer_runs", "connections", "Earlier runs of this jockey for this trainer.", (*_J, "trainer_id")
    ),
    FeatureSpec(
        "jockey_trainer_win_rate",
        "connections",
        "Win rate of this jockey x trainer pair, shrunk (m fitted).",
        (*_J, "trainer_id"),
    ),
    FeatureSpec("horse_jockey_runs", "connections", "Earlier runs of this horse with today's jockey.", _J),
    FeatureSpec(
        "horse_jockey_win_rate", "connections", "Win rate of this horse with today's jockey (missing if none).", _J
    ),
    FeatureSpec("jockey_change", "connections", "1 if today's jockey differs from the last run's, else 0.", _J),
    FeatureSpec(
        "jockey_win_rate_rank_in_field", "connections", "Rank (1 = best) of jockey_win_rate in today's field.", _J
    ),
    FeatureSpec(
        "trainer_win_rate_rank_in_field", "connections", "Rank (1 = best) of trainer_win_rate in today's field.", _T
    ),
    FeatureSpec(
        "draw_win_rate",
        "connections",
        "Shrunk win rate (m fitted) of today's draw at track x distance x course variant in earlier races.",
        ("draw", "track", "distance_m", "course_config", "finish_position"),
    ),
    FeatureSpec(
        "draw_bias_index",
        "connections",
        "draw_win_rate divided by the population win rate (1 = no bias).",
        ("draw", "track", "distance_m", "course_config", "finish_position"),
    ),
)

HORSE_EXPRS: tuple[str, ...] = (
    "count(has_result) OVER wj AS horse_jockey_runs",
    "avg(won) OVER wj AS horse_jockey_win_rate",
    "CASE WHEN lag(jockey_id) OVER wh IS NULL THEN NULL"
    " WHEN lag(jockey_id) OVER wh = jockey_id THEN 0.0 ELSE 1.0 END AS jockey_change",
)

JOIN_EXPRS: tuple[str, ...] = (
    "CASE WHEN jockey_id IS NOT NULL THEN coalesce(g_jockey.n_b, 0) END AS jockey_rides",
    f"{_rate('jockey', 'w_b', 'prior_win')} AS jockey_win_rate",
    f"{_rate('jockey', 'p_b', 'prior_place')} AS jockey_place_rate",
    f"{_rate('jockey_recent', 'w_b', 'prior_win')} AS jockey_win_rate_recent",
    f"{_rate('jockey_recent', 'p_b', 'prior_place')} AS jockey_place_rate_recent",
    "CASE WHEN trainer_id IS NOT NULL THEN coalesce(g_trainer.n_b, 0) END AS trainer_runs",
    f"{_rate('trainer', 'w_b', 'prior_win')} AS trainer_win_rate",
    f"{_rate('trainer', 'p_b', 'prior_place')} AS trainer_place_rate",
    f"{_rate('trainer_recent', 'w_b', 'prior_win')} AS trainer_win_rate_recent",
    f"{_rate('trainer_recent', 'p_b', 'prior_place')} AS trainer_place_rate_recent",
    "CASE WHEN jockey_id IS NOT NULL AND trainer_id IS NOT NULL THEN coalesce(g_jockey_trainer.n_b, 0) END"
    " AS jockey_trainer_runs",
    f"{_rate('jockey_trainer', 'w_b', 'prior_win')} AS jockey_trainer_win_rate",
    f"{_rate('draw', 'w_b', 'prior_win')} AS draw_win_rate",
    f"{_rate('draw', 'w_b', 'prior_win')} / prior_win AS draw_bias_index",
)

FIELD_LISTS: tuple[str, ...] = (
    "list(jockey_win_rate ORDER BY horse_id) AS l_jockey_wr",
    "list(trainer_win_rate ORDER BY horse_id) AS l_trainer_wr",
)

FIELD_EXPRS: tuple[str, ...] = (
    "CASE WHEN jockey_win_rate IS NOT NULL THEN 1 + len(list_filter(l_jockey_wr, lambda v: v > jockey_win_rate))"
    " END AS jockey_win_rate_rank_in_field",
    "CASE WHEN trainer_win_rate IS NOT NULL THEN 1 + len(list_filter(l_trainer_wr, lambda v: v > trainer_win_rate))"
    " END AS trainer_win_rate_rank_in_field",
)
