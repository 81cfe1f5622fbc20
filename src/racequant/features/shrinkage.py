"""Empirical-Bayes prior strengths m for the shrunk rates, fitted point-in-time by the method of moments.

A rate is shrunk as (wins + m * prior) / (runs + m). With entities e (jockeys, trainers, sires, draws...)
that had n_e runs and w_e wins before a race, N = sum n_e, p = sum w_e / N, the weighted spread of the raw
rates is S = sum n_e (w_e / n_e - p)^2 = sum w_e^2 / n_e - p^2 N. Binomial noise alone gives
E[S] = (K - 1) p (1 - p) for K entities, so the between-entity variance of the true rates is
    tau^2 = (S - (K - 1) p (1 - p)) / (N - sum n_e^2 / N),
and a beta prior with that mean and variance has m = p (1 - p) / tau^2 - 1 (clipped to [1, 1000]; 1000 when
tau^2 <= 0, i.e. no visible spread). Every sum is over races strictly before the target race: each
(entity, race) row of a group's totals adds the change of its entity's terms, those changes are summed per
race (``_fx_moma``) and accumulated over earlier races (``_fx_mom``), in DECIMAL, so the fit is exact and
point-in-time. Until a group has DEFAULT_MIN_ENTITIES entities and DEFAULT_MIN_RUNS runs the fixed default
m of the group is used. Rolling (``*_recent``) rates use the m of their career group; mean speed figures
keep a fixed m (see docs/features.md).
"""

from __future__ import annotations

from racequant.features import connections, pedigree

M_MIN = 1.0
M_MAX = 1000.0
DEFAULT_MIN_ENTITIES = 20
DEFAULT_MIN_RUNS = 500


def fitted_groups() -> dict[str, float]:
    """Career groups whose m is fitted -> their default m (used before there is enough history)."""
    out: dict[str, float] = {}
    for name, (_keys, rolling, m) in connections.GROUPS.items():
        if rolling is None:
            out[name] = m
    for name, (_keys, m_rate, _m_fig) in pedigree.GROUPS.items():
        out[name] = m_rate
    return out


def m_column(group: str, what: str) -> str:
    """The column holding the fitted m of ``group`` (``*_recent`` use their career group) for win or place."""
    return f"m_{group.removesuffix('_recent')}_{what}"


_SUMS = ("K", "N", "W", "P", "N2", "QW", "QP")


def _term(w: str, n: str) -> str:
    return f"coalesce(CAST({w} * {w} / nullif({n}, 0) AS DECIMAL(38, 12)), 0)"


def steps(mom_aggs: str = "_fx_moma") -> list[tuple[str, str]]:
    """_fx_moma: per race and group, the change of the moment sums; _fx_mom: m per target race and group."""
    parts = []
    for g in fitted_groups():
        n_a, w_a, p_a = "(coalesce(n_b, 0) + n_own)", "(coalesce(w_b, 0) + w_own)", "(coalesce(p_b, 0) + p_own)"
        parts.append(f"""
        SELECT k_race_seq AS race_seq, '{g}' AS grp,
               sum(CASE WHEN coalesce(n_b, 0) = 0 THEN 1 ELSE 0 END) AS dk, sum(n_own) AS dn,
               sum(w_own) AS dw, sum(p_own) AS dp,
               sum(CAST({n_a} * {n_a} - coalesce(n_b, 0) * coalesce(n_b, 0) AS HUGEINT)) AS dn2,
               sum({_term(w_a, n_a)} - {_term("w_b", "n_b")}) AS dqw,
               sum({_term(p_a, n_a)} - {_term("p_b", "n_b")}) AS dqp
        FROM _fx_g_{g}
        WHERE n_own > 0 AND k_race_seq IN (SELECT race_seq FROM _fx_race)
        GROUP BY k_race_seq""")
    moma = " UNION ALL ".join(parts)
    groups = ", ".join(f"('{g}', {m})" for g, m in fitted_groups().items())
    m_sql = []
    for what, col in (("win", "W"), ("place", "P")):
        p = f"({col} / N)"
        tau2 = f"((Q{col} - {p} * {p} * N - (K - 1) * {p} * (1 - {p})) / (N - N2 / N))"
        m_sql.append(f"""CASE WHEN K < {DEFAULT_MIN_ENTITIES} OR N < {DEFAULT_MIN_RUNS} OR N2 >= N * N THEN m_default
                 WHEN {tau2} <= 0 THEN {M_MAX}
                 ELSE least(greatest({p} * (1 - {p}) / {tau2} - 1, {M_MIN}), {M_MAX}) END AS m_{what}""")
    pivot = ", ".join(
        f"max(CASE WHEN grp = '{g}' THEN m_{w} END) AS m_{g}_{w}" for g in fitted_groups() for w in ("win", "place")
    )
    mom = f"""
    WITH targets AS (
        SELECT r.race_seq, g.grp, g.m_default, 0 AS is_delta, 0 AS dk, 0 AS dn, 0 AS dw, 0 AS dp,
               CAST(0 AS HUGEINT) AS dn2, CAST(0 AS DECIMAL(38, 12)) AS dqw, CAST(0 AS DECIMAL(38, 12)) AS dqp
        FROM _fx_race r CROSS JOIN (VALUES {groups}) g(grp, m_default)
        WHERE r.race_id IN (SELECT race_id FROM _fx_tgt)
    ), rows AS (
        SELECT * FROM targets
        UNION ALL BY NAME SELECT *, NULL AS m_default, 1 AS is_delta FROM {mom_aggs}
    ), cum AS (
        SELECT race_seq, grp, m_default, is_delta,
               {", ".join(f"coalesce(CAST(sum(d{c.lower()}) OVER w AS DOUBLE), 0) AS {c}" for c in _SUMS)}
        FROM rows
        WINDOW w AS (PARTITION BY grp ORDER BY race_seq, is_delta ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
    ), fitted AS (
        SELECT race_seq, grp, {", ".join(m_sql)} FROM cum WHERE is_delta = 0
    )
    SELECT race_seq, {pivot} FROM fitted GROUP BY race_seq
    """
    return [("_fx_moma", moma), ("_fx_mom", mom)]
