"""Category 21, pedigree: the progeny records of the sire, dam and damsire as of the race.

Every progeny run before the race counts. Rates and mean figures are shrunk toward the population by
empirical Bayes, (x + m * prior) / (n + m), with the prior the population value over earlier races, so a
first-time starter by a known sire still gets signal. A horse with no recorded sire (or a data set
without pedigree) gets missing values, not zeros.
"""

from __future__ import annotations

from racequant.features.manifest import FeatureSpec

# group name -> (key columns, default m for rates until it can be fitted (shrinkage.py), fixed m for the mean figure)
GROUPS: dict[str, tuple[tuple[str, ...], float, float]] = {
    "sire": (("sire",), 30.0, 15.0),
    "dam": (("dam",), 5.0, 5.0),
    "damsire": (("damsire",), 30.0, 15.0),
    "sire_dist": (("sire", "dist_band"), 30.0, 15.0),
    "sire_going": (("sire", "going"), 30.0, 15.0),
    "sire_surface": (("sire", "surface"), 30.0, 15.0),
    "damsire_dist": (("damsire", "dist_band"), 30.0, 15.0),
}

_PED = ("horses.sire", "horses.dam", "horses.damsire", "finish_position", "status", "date", "race_no")
_FIGCOLS = ("finish_time_s", "margin_lengths", "carried_weight_lbs", "track", "distance_m", "surface", "going")

SPECS: list[FeatureSpec] = []
EXPRS: list[str] = []


def _add(group: str, what: str, label: str) -> None:
    keys, m_rate, m_fig = GROUPS[group]
    name = f"{group}_{what}"
    present = " AND ".join(f"{k} IS NOT NULL" for k in keys[:1])
    if what == "runs":
        expr = f"CASE WHEN {present} THEN coalesce(g_{group}.n_b, 0) END"
        desc = f"Number of earlier runs by the {label}."
        cols = _PED
    elif what == "speed_avg":
        expr = (
            f"CASE WHEN {present} THEN (coalesce(g_{group}.fs_b, 0) + {m_fig} * prior_fig)"
            f" / (coalesce(g_{group}.fn_b, 0) + {m_fig}) END"
        )
        desc = f"Mean speed figure of the {label}, shrunk to the population mean (m = {m_fig:g})."
        cols = _PED + _FIGCOLS
    else:
        col, prior = {"win_rate": ("w_b", "prior_win"), "place_rate": ("p_b", "prior_place")}[what]
        m = f"m_{group}_{what.removesuffix('_rate')}"  # fitted on earlier races (shrinkage.py)
        expr = (
            f"CASE WHEN {present} THEN (coalesce(g_{group}.{col}, 0) + {m} * {prior})"
            f" / (coalesce(g_{group}.n_b, 0) + {m}) END"
        )
        desc = (
            f"{'Win' if what == 'win_rate' else 'Place (top 3)'} rate of the {label}, shrunk"
            f" (m fitted on earlier races, default {m_rate:g})."
        )
        cols = _PED
    SPECS.append(FeatureSpec(name, "pedigree", desc, cols))
    EXPRS.append(f"{expr} AS {name}")


for _g, _label in (("sire", "sire's progeny"), ("dam", "dam's progeny"), ("damsire", "damsire's daughters' progeny")):
    for _w in ("runs", "win_rate", "place_rate", "speed_avg"):
        _add(_g, _w, _label)
for _g, _label in (
    ("sire_dist", "sire's progeny at today's distance band"),
    ("damsire_dist", "damsire's line at today's distance band"),
):
    for _w in ("win_rate", "place_rate", "speed_avg"):
        _add(_g, _w, _label)
_add("sire_going", "win_rate", "sire's progeny on today's going")
_add("sire_going", "speed_avg", "sire's progeny on today's going")
_add("sire_surface", "win_rate", "sire's progeny on today's surface")
_add("sire_surface", "speed_avg", "sire's progeny on today's surface")
SPECS = tuple(SPECS)  # type: ignore[assignment]
EXPRS = tuple(EXPRS)  # type: ignore[assignment]
