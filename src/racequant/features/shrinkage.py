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
point-in-time (each w^2/n term is rounded once to 12 decimals before the exact sums). Until a group has
DEFAULT_MIN_ENTITIES entities and DEFAULT_MIN_RUNS runs the fixed default m of the group is used. Rolling
(``*_recent``) rates use the m of their career group; mean speed figures keep a fixed m (docs/features.md).
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
    # integers below 2**53 are exact in DOUBLE; each term is rounded once to DECIMAL, then summed exactly
    ratio = f"CAST({w} AS DOUBLE) * CAST({w} AS DOUBLE) / nullif(CAST({n} AS DOUBLE), 0)"
    return f"coalesce(CAST({ratio} AS DECIMAL(38, 12)), 0)"


def fitted_exprs() -> list[str]:
    """m_<group>_<win|place> of every fitted group from the running totals ``c`` (a row of ``_fx_momc``)."""
    fitted = []
    for g, m_default in fitted_groups().items():
        K, N, N2 = (f"coalesce(c.{g}_{c}, 0)" for c in ("K", "N", "N2"))
        for what, col in (("win", "W"), ("place", "P")):
            p = f"(c.{g}_{col} / c.{g}_N)"
            tau2 = f"((c.{g}_Q{col} - {p} * {p} * {N} - ({K} - 1) * {p} * (1 - {p})) / ({N} - {N2} / {N}))"
            fitted.append(f"""CASE WHEN {K} < {DEFAULT_MIN_ENTITIES} OR {N} < {DEFAULT_MIN_RUNS} OR {N2} >= {N} * {N}
                THEN {m_default} WHEN {tau2} <= 0 THEN {M_MAX}
                ELSE least(greatest({p} * (1 - {p}) / {tau2} - 1, {M_MIN}), {M_MAX}) END AS m_{g}_{what}""")
    return fitted


def steps(mom_aggs: str = "_fx_moma", mom_cum: str = "_fx_momc") -> list[tuple[str, str]]:
    """_fx_moma: per race and group, the change of the moment sums; _fx_momc: their running totals over
    ``mom_aggs``; _fx_mom: m per target race and group, from the last running total (of ``mom_cum``) before it.
    """
    parts = []
    for g in fitted_groups():
        n_b = "CAST(coalesce(n_b, 0) AS BIGINT)"
        n_a, w_a, p_a = f"({n_b} + n_own)", "(coalesce(w_b, 0) + w_own)", "(coalesce(p_b, 0) + p_own)"
        parts.append(f"""
        SELECT k_race_seq AS race_seq, '{g}' AS grp,
               sum(CASE WHEN coalesce(n_b, 0) = 0 THEN 1 ELSE 0 END) AS dk, sum(n_own) AS dn,
               sum(w_own) AS dw, sum(p_own) AS dp, sum({n_a} * {n_a} - {n_b} * {n_b}) AS dn2,
               sum({_term(w_a, n_a)} - {_term("w_b", "n_b")}) AS dqw,
               sum({_term(p_a, n_a)} - {_term("p_b", "n_b")}) AS dqp
        FROM _fx_g_{g}
        WHERE n_own > 0 AND k_race_seq IN (SELECT race_seq FROM _fx_race)
        GROUP BY k_race_seq""")
    moma = " UNION ALL ".join(parts)
    wide, cum = [], []
    for g in fitted_groups():
        for c in _SUMS:
            wide.append(f"sum(CASE WHEN grp = '{g}' THEN d{c.lower()} END) AS {g}_d{c}")
            cum.append(f"CAST(sum({g}_d{c}) OVER w AS DOUBLE) AS {g}_{c}")
    fitted = fitted_exprs()
    # totals up to and including each race with changes; a target race takes the last one strictly before it
    momc = f"""
    WITH wide AS (SELECT race_seq, {", ".join(wide)} FROM {mom_aggs} GROUP BY race_seq)
    SELECT race_seq, {", ".join(cum)} FROM wide WINDOW w AS (ORDER BY race_seq ROWS UNBOUNDED PRECEDING)
    """
    mom = f"""
    WITH t AS (SELECT race_seq FROM _fx_race WHERE race_id IN (SELECT race_id FROM _fx_tgt))
    SELECT t.race_seq, {", ".join(fitted)}
    FROM t ASOF LEFT JOIN {mom_cum} c ON t.race_seq > c.race_seq
    """
    return [("_fx_moma", moma), ("_fx_momc", momc), ("_fx_mom", mom)]
