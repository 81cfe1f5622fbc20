"""The shared first stage: races in strict start order, one row per run, pars and speed figures.

Everything learned from results (pars, the class par, population rates) is a cumulative statistic over
races strictly earlier in the start order (date, race_no, off_time, race_id), so a run's figure and every
later feature depend only on what was known before the race.

Bit-identical rebuilds: floating-point sums depend on the order of the terms, and a window's evaluation
order can change with the length of its partition. So every per-run value that is later averaged is
stored as a DECIMAL (fixed point, exact sums), and aggregates over several runners of one race are
summed in a fixed order (by horse_id). A rebuild on fewer races then gives bit-identical features.
A time more than 15% away from par is a timing error: its figure is dropped.
"""

from __future__ import annotations

from racequant.features.class_ import CLASS_SCALE_SQL

SECONDS_PER_LENGTH = 0.17
# Handicappers' rule of thumb: one length per 2.5 lb over a mile, scaled by distance.
LENGTHS_PER_LB_AT_MILE = 1 / 2.5
REFERENCE_WEIGHT_LBS = 126.0
GOING_SHRINK_RACES = 5.0

BEFORE = "ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING"


Step = tuple[str, str]  # (relation name, SELECT statement defining it)


def card_base_steps(races: str, runners: str, horses: str, *, last_seq: int) -> list[Step]:
    """``base_steps`` for one race card that follows the stored races with race_seq <= ``last_seq``.

    The card's race is the last in the start order, so each cumulative window of ``_fx_rt`` / ``_fx_cp``
    (frame: every earlier row of the partition) is, for the card's row, a plain aggregate over the stored
    rows of the bulk build (``feature_state_rt`` / ``feature_state_cpa``) of its partition: the same
    aggregates over the same rows (sums are DECIMAL / integer, so exact in any order) give the same values.
    """
    tds = " AND ".join(f"h.{c} IS NOT DISTINCT FROM a.{c}" for c in ("track", "distance_m", "surface"))
    tsg = " AND ".join(f"h.{c} IS NOT DISTINCT FROM a.{c}" for c in ("track", "surface", "going"))
    race_totals = f"""
        SELECT a.*, s.* FROM _fx_rta a CROSS JOIN (
            SELECT avg(h.winner_time) FILTER (WHERE {tds}) AS par_tds,
                   avg(h.race_early200) FILTER (WHERE {tds}) AS par_early200,
                   coalesce(sum(CAST((h.winner_time - h.par_tds) / h.distance_m AS DECIMAL(18, 9))) FILTER (WHERE {tsg})
                            / (count(h.winner_time - h.par_tds) FILTER (WHERE {tsg}) + {GOING_SHRINK_RACES}), 0)
                       AS going_adj_per_m,
                   sum(h.n_won) / sum(h.n_res) AS prior_win,
                   sum(h.n_placed) / sum(h.n_res) AS prior_place
            FROM feature_state_rt h, (SELECT track, distance_m, surface, going FROM _fx_rta) a
            WHERE h.race_seq <= {int(last_seq)}
        ) s
        """
    class_totals = f"""
        SELECT a.race_id, CASE WHEN a.class_num IS NOT NULL THEN s.class_par_fig END AS class_par_fig, s.prior_fig
        FROM _fx_cpa a CROSS JOIN (
            SELECT avg(h.winner_fig) FILTER (WHERE h.class_num = a.class_num) AS class_par_fig,
                   sum(h.fig_sum) / sum(h.fig_n) AS prior_fig
            FROM feature_state_cpa h, (SELECT class_num FROM _fx_cpa) a
            WHERE h.race_seq <= {int(last_seq)}
        ) s
        """
    replaced = {"_fx_rt": race_totals, "_fx_cp": class_totals}
    return [(name, replaced.get(name, sql)) for name, sql in base_steps(races, runners, horses, seq_offset=last_seq)]


def base_steps(
    races: str,
    runners: str,
    horses: str,
    *,
    seq_offset: int = 0,
    race_aggs: str = "_fx_rta",
    class_aggs: str = "_fx_cpa",
) -> list[Step]:
    """The relations _fx_race, _fx_run0, _fx_rta, _fx_rt, _fx_run1, _fx_cpa, _fx_cp, _fx_run from the sources.

    ``race_aggs`` / ``class_aggs`` are the per-race aggregates the cumulative pars are accumulated over: the
    bulk build passes its own (``_fx_rta`` / ``_fx_cpa``); a race card passes the stored aggregates of the
    races before it followed by its own, so the same window SQL gives the card the values of the bulk build.
    ``seq_offset`` is added to the start-order number (a card's race follows the stored history).
    """
    s_per_lb = SECONDS_PER_LENGTH * LENGTHS_PER_LB_AT_MILE
    return [
        (
            "_fx_race",
            f"""
        SELECT race_id, date, race_no, off_time, track, distance_m, surface, coalesce(going, 'UNKNOWN') AS going,
               coalesce(course_config, '') AS course_config, prize, section_distances_m,
               TRY_CAST(split_part(rating_band, '-', 1) AS DOUBLE) AS band_top,
               {CLASS_SCALE_SQL} AS class_num,
               CASE WHEN distance_m <= 1200 THEN 'sprint' WHEN distance_m <= 1650 THEN 'mile'
                    WHEN distance_m <= 2000 THEN 'middle' ELSE 'staying' END AS dist_band,
               {seq_offset} + row_number() OVER (ORDER BY date, race_no NULLS LAST, off_time NULLS LAST, race_id)
                   AS race_seq
        FROM {races}
        """,
        ),
        (
            "_fx_run0",
            f"""
        WITH u AS (
            -- age and sex on the race card, else from the horse record (age = race year - foaled year)
            SELECT u.* REPLACE (coalesce(u.age, year(r.date) - h.foaled_year) AS age, coalesce(u.sex, h.sex) AS sex),
                   r.race_seq, r.date, r.track, r.distance_m, r.surface, r.going, r.dist_band, r.class_num,
                   r.course_config, r.prize, r.band_top, r.section_distances_m AS sec_m,
                   h.sire, h.dam, h.damsire,
                   count(*) OVER (PARTITION BY u.race_id) AS field_size,
                   min(u.finish_time_s) FILTER (WHERE u.status = 'finished' AND u.finish_position = 1)
                       OVER (PARTITION BY u.race_id) AS winner_time_s
            FROM {runners} u
            JOIN _fx_race r USING (race_id)
            LEFT JOIN (SELECT horse_id, any_value(sire) AS sire, any_value(dam) AS dam, any_value(damsire) AS damsire,
                              any_value(sex) AS sex, any_value(foaled_year) AS foaled_year
                       FROM {horses} GROUP BY horse_id) h USING (horse_id)
            WHERE u.status IS DISTINCT FROM 'withdrawn'
        ), v AS (
            SELECT *,
                   CASE WHEN status IS NOT NULL THEN 1 END AS has_result,
                   CASE WHEN status IS NULL THEN NULL
                        WHEN status = 'finished' AND finish_position = 1 THEN 1.0 ELSE 0.0 END AS won,
                   CASE WHEN status IS NULL THEN NULL
                        WHEN status = 'finished' AND finish_position <= 3 THEN 1.0 ELSE 0.0 END AS placed,
                   CASE WHEN status = 'finished' AND field_size > 1
                        THEN (finish_position - 1) / (field_size - 1) END AS finish_pct,
                   CASE WHEN status = 'finished' THEN coalesce(prize, 0) * CASE finish_position
                        WHEN 1 THEN 0.57 WHEN 2 THEN 0.22 WHEN 3 THEN 0.115 WHEN 4 THEN 0.06 WHEN 5 THEN 0.035
                        ELSE 0 END END AS prize_won,
                   CASE WHEN status = 'finished'
                        THEN coalesce(finish_time_s, winner_time_s + margin_lengths * {SECONDS_PER_LENGTH}) END
                        AS run_time,
                   CASE WHEN len(section_times_s) = len(sec_m) AND len(sec_m) >= 2
                             AND list_count(section_times_s) = len(sec_m) AND status = 'finished'
                        THEN 1 ELSE 0 END AS sec_ok,
                   CASE WHEN len(running_positions) >= 1 AND running_positions[1] IS NOT NULL
                        THEN running_positions[1] END AS first_call
            FROM u
        )
        SELECT * EXCLUDE (sec_ok, first_call, section_times_s, running_positions),
               run_time - (carried_weight_lbs - {REFERENCE_WEIGHT_LBS}) * {s_per_lb} * distance_m / 1609.0
                   AS adj_time,
               CASE WHEN sec_ok = 1 THEN section_times_s[-1] * 200.0 / sec_m[-1] END AS l200,
               CASE WHEN sec_ok = 1 THEN (list_sum(section_times_s) - section_times_s[-1]) * 200.0
                    / (list_sum(sec_m) - sec_m[-1]) END AS early200,
               CASE WHEN status = 'finished' THEN first_call / field_size END AS early_pos,
               CASE WHEN status = 'finished' AND len(running_positions) >= 2
                    THEN running_positions[(len(running_positions) + 1) // 2] / field_size END AS mid_pos,
               CASE WHEN status = 'finished' AND first_call IS NOT NULL
                    THEN (first_call = 1)::DOUBLE END AS led_early,
               CASE WHEN status = 'finished' THEN (first_call - finish_position)::DOUBLE END AS pos_gained,
               row_number() OVER (PARTITION BY horse_id ORDER BY race_seq) AS race_seq_h
        FROM v
        """,
        ),
        # One row per race: what its result says about pars (winner time, field pace, field final sections).
        (
            "_fx_rta",
            """
        WITH a AS (
            SELECT race_id,
                   CAST(min(run_time) FILTER (WHERE won = 1) AS DECIMAL(18, 6)) AS winner_time,
                   CAST(list_avg(list(l200 ORDER BY horse_id) FILTER (WHERE l200 IS NOT NULL)) AS DECIMAL(18, 6))
                       AS race_l200,
                   CAST(list_avg(list(early200 ORDER BY horse_id) FILTER (WHERE early200 IS NOT NULL))
                        AS DECIMAL(18, 6)) AS race_early200,
                   count(*) AS n_runners,
                   sum(has_result) AS n_res, sum(won) AS n_won, sum(placed) AS n_placed
            FROM _fx_run0 GROUP BY race_id
        )
        SELECT r.race_id, r.race_seq, r.track, r.distance_m, r.surface, r.going, r.class_num,
               a.* EXCLUDE (race_id)
        FROM _fx_race r JOIN a USING (race_id)
        """,
        ),
        (
            "_fx_rt",
            f"""
        WITH b AS (
            SELECT *, avg(winner_time) OVER w_tds AS par_tds, avg(race_early200) OVER w_tds AS par_early200
            FROM {race_aggs}
            WINDOW w_tds AS (PARTITION BY track, distance_m, surface ORDER BY race_seq {BEFORE})
        )
        SELECT *,
               coalesce(sum(CAST((winner_time - par_tds) / distance_m AS DECIMAL(18, 9))) OVER w_g
                        / (count(winner_time - par_tds) OVER w_g + {GOING_SHRINK_RACES}), 0)
                   AS going_adj_per_m,
               -- population rates of earlier races: the priors of every shrunk rate
               sum(n_won) OVER w_all / sum(n_res) OVER w_all AS prior_win,
               sum(n_placed) OVER w_all / sum(n_res) OVER w_all AS prior_place
        FROM b
        WINDOW w_g AS (PARTITION BY track, surface, going ORDER BY race_seq {BEFORE}),
               w_all AS (ORDER BY race_seq {BEFORE})
        """,
        ),
        (
            "_fx_run1",
            """
        SELECT u.*, t.race_l200, t.prior_win, t.prior_place,
               t.par_tds + t.going_adj_per_m * u.distance_m AS par_time,
               CAST(CASE WHEN abs(u.adj_time / (t.par_tds + t.going_adj_per_m * u.distance_m) - 1) <= 0.15
                    THEN 100 + 1000 * (t.par_tds + t.going_adj_per_m * u.distance_m - u.adj_time)
                         / (t.par_tds + t.going_adj_per_m * u.distance_m) END AS DECIMAL(18, 6)) AS fig,
               u.l200 - t.race_l200 AS kick,
               1000 * (t.par_early200 - u.early200) / t.par_early200 AS early_fig,
               1000 * (t.par_early200 - t.race_early200) / t.par_early200 AS race_pace_fig
        FROM _fx_run0 u JOIN _fx_rt t USING (race_id)
        """,
        ),
        # Class par: the mean winning figure at a class over earlier races; the population mean figure.
        (
            "_fx_cpa",
            """
            SELECT race_id, any_value(race_seq) AS race_seq, any_value(class_num) AS class_num,
                   max(fig) FILTER (WHERE won = 1) AS winner_fig,  -- DECIMAL: exact cumulative sums
                   sum(fig) AS fig_sum,  -- DECIMAL: exact whatever the order
                   count(fig) AS fig_n
            FROM _fx_run1 GROUP BY race_id
        """,
        ),
        (
            "_fx_cp",
            f"""
        SELECT race_id,
               CASE WHEN class_num IS NOT NULL THEN avg(winner_fig) OVER w_c END AS class_par_fig,
               sum(fig_sum) OVER w_all / sum(fig_n) OVER w_all AS prior_fig
        FROM {class_aggs}
        WINDOW w_c AS (PARTITION BY class_num ORDER BY race_seq {BEFORE}),
               w_all AS (ORDER BY race_seq {BEFORE})
        """,
        ),
        (
            "_fx_run",
            """
        WITH q AS (
            SELECT u.* REPLACE (
                                              CAST(u.l200 AS DECIMAL(18, 6)) AS l200,
                       CAST(u.kick AS DECIMAL(18, 6)) AS kick, CAST(u.early_fig AS DECIMAL(18, 6)) AS early_fig,
                       CAST(u.race_pace_fig AS DECIMAL(18, 6)) AS race_pace_fig,
                       CAST(u.prize_won AS DECIMAL(18, 2)) AS prize_won,
                       CAST(u.finish_pct AS DECIMAL(18, 6)) AS finish_pct,
                       CAST(u.early_pos AS DECIMAL(18, 6)) AS early_pos, CAST(u.mid_pos AS DECIMAL(18, 6)) AS mid_pos,
                       CAST(u.margin_lengths AS DECIMAL(18, 4)) AS margin_lengths,
                       CAST(u.rating AS DECIMAL(18, 4)) AS rating,
                       CAST(u.carried_weight_lbs AS DECIMAL(18, 4)) AS carried_weight_lbs,
                       CAST(u.horse_weight_lbs AS DECIMAL(18, 4)) AS horse_weight_lbs),
                   CAST(c.class_par_fig AS DECIMAL(18, 6)) AS class_par_fig, c.prior_fig
            FROM _fx_run1 u JOIN _fx_cp c USING (race_id)
        )
        SELECT *, fig - class_par_fig AS perf_vs_class_par,
               CAST(fig AS DECIMAL(38, 6)) * CAST(fig AS DECIMAL(38, 6)) AS fig2,
               CASE WHEN fig IS NOT NULL THEN race_seq_h END AS fig_x,
               CASE WHEN fig IS NOT NULL THEN race_seq_h * race_seq_h END AS fig_x2,
               race_seq_h * fig AS fig_xy
        FROM q
        """,
        ),
    ]
