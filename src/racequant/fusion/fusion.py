"""Fusing the base probabilities with qualitative likelihood ratios, within each race.

Product fusion (the seed's rule): P_final_i = P_base_i * LR_i / sum_j P_base_j * LR_j over the runners of the race.
Fitted fusion (log-linear pooling): P_final_i proportional to P_base_i^a * P_market_i^b * prod_k LR_ik^c_k, the
weights fitted by maximum likelihood of the winners; races without qualitative history use a and b alone
(Benter's second stage).

Both are one transformation per race, P_i = exp(a log P_base_i + r_i) / Z. The interval bounds are carried through
it with the rest of the race held at its point values (lower_i -> exp(a log lower_i + r_i) / Z), so a bound moves
exactly as its point does. Place probabilities come from the models' discounted Harville: the base place
probability is scaled by Harville(final win) / Harville(base win) and re-normalised to the places paid, so all
ratios equal to 1 leave every probability unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from racequant.calibration.lifecycle import method_order_error
from racequant.fusion.errors import FusionMismatchError, FusionParameterError
from racequant.fusion.pooling import LogLinearPool
from racequant.fusion.schema import LR_FIELDS, QualitativeRecord
from racequant.models.pipeline import normalise_places
from racequant.models.place import harville_place_probabilities
from racequant.models.race import race_codes

logger = logging.getLogger(__name__)

MODES = ("product", "fitted")
REQUIRED_QUANT_FIELDS = ("race_id", "horse_id", "win_prob_base")
_P_MIN = 1e-12
# discounted-Harville exponents when no fitted ones are given (Benter's Hong Kong values, GLOSSARY.md)
DEFAULT_HARVILLE_G, DEFAULT_HARVILLE_D = 0.81, 0.65


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(p, dtype=float), _P_MIN, None))


def _label(record: Mapping[str, Any]) -> str:
    name = record.get("horse_name")
    return f"horse {record.get('horse_id')}" + (f" ({name})" if name else "")


def validate_for_fusion(quant_records: Sequence[Mapping[str, Any]], qual_records: Sequence[QualitativeRecord]) -> None:
    """Check the two sides can be fused: required fields present and valid, and exactly the same horses per race.

    Raises FusionMismatchError listing every problem (a missing or extra horse is named).
    """
    problems: list[str] = []
    quant_keys: dict[tuple[str, str], Mapping[str, Any]] = {}
    for i, rec in enumerate(quant_records):
        missing = [f for f in REQUIRED_QUANT_FIELDS if rec.get(f) is None]
        if missing:
            problems.append(f"quantitative record {i} ({_label(rec)}): missing field(s) {', '.join(missing)}")
            continue
        p = rec["win_prob_base"]
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 < float(p) <= 1.0:
            problems.append(f"race {rec['race_id']}, {_label(rec)}: win_prob_base must be in (0, 1], got {p!r}")
        key = (str(rec["race_id"]), str(rec["horse_id"]))
        if key in quant_keys:
            problems.append(f"race {key[0]}, {_label(rec)}: listed twice in the quantitative records")
        quant_keys[key] = rec
    qual_keys: dict[tuple[str, str], QualitativeRecord] = {}
    for q in qual_records:
        if not isinstance(q, QualitativeRecord):
            problems.append(f"qualitative record {q!r} is not a validated QualitativeRecord")
            continue
        key = (q.race_id, q.horse_id)
        if key in qual_keys:
            problems.append(
                f"race {q.race_id}, horse {q.horse_id} ({q.horse_name}): listed twice in the qualitative records"
            )
        qual_keys[key] = q
    for key, rec in quant_keys.items():
        if key not in qual_keys:
            problems.append(f"race {key[0]}, {_label(rec)}: missing from the qualitative records")
    for key, q in qual_keys.items():
        if key not in quant_keys:
            problems.append(
                f"race {key[0]}, horse {key[1]} ({q.horse_name}): extra in the qualitative records "
                "(not a runner of the quantitative records)"
            )
    if problems:
        raise FusionMismatchError(
            f"Cannot fuse: {len(problems)} problem(s).\n" + "\n".join(f"  - {p}" for p in problems)
        )


def market_probabilities(win_odds: np.ndarray, race_ids: Sequence[object] | np.ndarray) -> np.ndarray:
    """Normalised market probabilities 1/odds / sum over the race of 1/odds (GLOSSARY.md)."""
    q = 1.0 / np.asarray(win_odds, dtype=float)
    codes, n_races = race_codes(race_ids)
    return q / np.bincount(codes, weights=q, minlength=n_races)[codes]


def _qual_frame(quant: pd.DataFrame, qual_records: Sequence[QualitativeRecord]) -> pd.DataFrame:
    by_key = {(q.race_id, q.horse_id): q for q in qual_records}
    rows = [by_key[(str(r), str(h))] for r, h in zip(quant["race_id"], quant["horse_id"], strict=True)]
    frame = pd.DataFrame({f: [getattr(q, f) for q in rows] for f in LR_FIELDS}, index=quant.index)
    frame["lr_product"] = [q.lr_product for q in rows]
    return frame


def product_fusion(p_base: np.ndarray, lr_product: np.ndarray, race_ids: Sequence[object] | np.ndarray) -> np.ndarray:
    """The seed's rule on arrays: P_final proportional to P_base * lr_product, normalised within each race."""
    scores = _log(p_base) + np.log(np.asarray(lr_product, dtype=float))
    return _softmax(scores, np.asarray(race_ids))[0]


class FittedFusion(BaseEstimator):
    """Log-linear pooling of base, market and the four qualitative ratios (sklearn contract).

    ``fit(frame)`` takes one row per runner with ``race_id``, ``won``, ``win_prob_base``, ``market_prob`` (when
    ``use_market``) and the four ``lr_*`` columns (NaN where a race has no qualitative record). It learns
    ``pool_`` (columns ``columns_``) on the races with qualitative history and ``second_stage_`` (base and market
    only, Benter's second stage) on all races; ``weights_`` reports both.
    """

    def __init__(self, l2: float = 0.0, use_market: bool = True) -> None:
        self.l2 = l2
        self.use_market = use_market

    def _base_columns(self) -> list[str]:
        return ["win_prob_base", "market_prob"] if self.use_market else ["win_prob_base"]

    def _matrix(self, frame: pd.DataFrame, with_lr: bool) -> np.ndarray:
        cols = [_log(frame[c].to_numpy()) for c in self._base_columns()]
        if with_lr:
            cols += [np.log(frame[f].to_numpy(dtype=float)) for f in LR_FIELDS]
        return np.column_stack(cols)

    def fit(self, frame: pd.DataFrame) -> FittedFusion:
        if not isinstance(self.use_market, bool):
            raise FusionParameterError(
                f"The 'use_market' parameter of FittedFusion must be a bool. Got {self.use_market!r} instead."
            )
        needed = ["race_id", "won", *self._base_columns(), *LR_FIELDS]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(f"FittedFusion.fit needs the column(s) {', '.join(missing)}.")
        race = frame["race_id"].to_numpy()
        won = frame["won"].to_numpy()
        self.columns_ = [*self._base_columns(), *LR_FIELDS]
        self.second_stage_ = LogLinearPool(l2=self.l2).fit(self._matrix(frame, False), race, won)
        has_qual = _races_with_qual(frame)
        if has_qual.any():
            sub = frame[has_qual]
            self.pool_: LogLinearPool | None = LogLinearPool(l2=self.l2).fit(
                self._matrix(sub, True), sub["race_id"].to_numpy(), sub["won"].to_numpy()
            )
        else:
            logger.warning("FittedFusion: no race with qualitative history; only the second stage is fitted")
            self.pool_ = None
        self.weights_ = self.report_weights()
        logger.info("FittedFusion weights: %s", self.weights_)
        return self

    def report_weights(self) -> dict[str, Any]:
        """The fitted weights (and standard errors) of both pools, by column."""
        if not hasattr(self, "second_stage_"):
            raise method_order_error("fit", "report_weights")
        out: dict[str, Any] = {
            "second_stage": {
                c: {"coef": float(w), "se": float(s)}
                for c, w, s in zip(
                    self._base_columns(), self.second_stage_.coef_, self.second_stage_.coef_se_, strict=True
                )
            },
            "second_stage_races": self.second_stage_.n_races_,
        }
        if self.pool_ is not None:
            out["with_qualitative"] = {
                c: {"coef": float(w), "se": float(s)}
                for c, w, s in zip(self.columns_, self.pool_.coef_, self.pool_.coef_se_, strict=True)
            }
            out["with_qualitative_races"] = self.pool_.n_races_
        return out

    def transform_logits(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Per runner: the exponent a on log P_base and the rest r of its pooled score (a log P_base + r)."""
        if not hasattr(self, "second_stage_"):
            raise method_order_error("fit", "predict_proba")
        has_qual = _races_with_qual(frame)
        a = np.full(len(frame), float(self.second_stage_.coef_[0]))
        rest = self._matrix(frame, False)[:, 1:] @ self.second_stage_.coef_[1:]
        if self.pool_ is not None and has_qual.any():
            x = self._matrix(frame[has_qual], True)
            a[has_qual] = self.pool_.coef_[0]
            rest[has_qual] = x[:, 1:] @ self.pool_.coef_[1:]
        return a, rest

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        a, rest = self.transform_logits(frame)
        return _softmax(a * _log(frame["win_prob_base"].to_numpy()) + rest, frame["race_id"].to_numpy())[0]

    def save(self, path: str | Path) -> None:
        joblib.dump(self, Path(path))

    @staticmethod
    def load(path: str | Path) -> FittedFusion:
        obj = joblib.load(Path(path))
        if not isinstance(obj, FittedFusion):
            raise FusionParameterError(f"{path} does not hold a FittedFusion (got {type(obj).__name__}).")
        return obj


def _races_with_qual(frame: pd.DataFrame) -> np.ndarray:
    """Per runner: its race has a qualitative record for every runner (any NaN ratio in the race means no)."""
    present = frame[list(LR_FIELDS)].notna().all(axis=1).to_numpy()
    codes, n_races = race_codes(frame["race_id"].to_numpy())
    missing = np.bincount(codes, weights=~present, minlength=n_races) > 0
    return ~missing[codes]


def _softmax(scores: np.ndarray, race_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Race softmax of the scores and, per runner, the race's log normaliser (after the max shift)."""
    codes, n_races = race_codes(race_ids)
    race_max = np.full(n_races, -np.inf)
    np.maximum.at(race_max, codes, scores)
    e = np.exp(scores - race_max[codes])
    log_z = np.log(np.bincount(codes, weights=e, minlength=n_races))[codes] + race_max[codes]
    return np.exp(scores - log_z), log_z


def _place(
    quant: pd.DataFrame, win_base: np.ndarray, win_final: np.ndarray, race: np.ndarray, g: float, d: float
) -> tuple[np.ndarray, np.ndarray]:
    """Final place probability and the per-runner factor applied to the base place probability."""
    h_final = harville_place_probabilities(win_final, race, g, d)
    if "place_prob_base" not in quant.columns or quant["place_prob_base"].isna().any():
        return h_final, np.ones_like(h_final)
    h_base = harville_place_probabilities(win_base, race, g, d)
    base = quant["place_prob_base"].to_numpy(dtype=float)
    scaled = base * h_final / np.clip(h_base, _P_MIN, None)
    final = normalise_places(scaled, race)
    return final, np.divide(final, base, out=np.ones_like(final), where=base > 0)


def fuse_records(
    quant_records: Sequence[Mapping[str, Any]],
    qual_records: Sequence[QualitativeRecord],
    mode: str = "product",
    pool: FittedFusion | None = None,
    harville_g: float = DEFAULT_HARVILLE_G,
    harville_d: float = DEFAULT_HARVILLE_D,
) -> list[dict[str, Any]]:
    """Fuse per-runner quantitative records with qualitative records; one output dict per runner, input order.

    Output: the quantitative record plus ``lr_product`` and the four ratios, ``win_prob_final``,
    ``place_prob_final``, ``win_prob_final_lower``, ``win_prob_final_upper`` (and ``place_prob_final_lower`` /
    ``_upper`` when the record has place bounds) and ``fusion_mode``. ``mode="fitted"`` needs a fitted
    ``pool`` and, when it uses the market, ``market_prob`` or ``win_odds`` in the quantitative records.
    """
    if mode not in MODES:
        raise FusionParameterError(
            f"The 'mode' parameter of fuse_records must be one of {MODES}. Got {mode!r} instead."
        )
    if mode == "fitted" and pool is None:
        raise FusionParameterError("The 'pool' parameter of fuse_records must be a fitted FittedFusion in fitted mode.")
    validate_for_fusion(quant_records, qual_records)
    if not quant_records:
        return []
    quant = pd.DataFrame([dict(r) for r in quant_records])
    quant["race_id"] = quant["race_id"].astype(str)
    quant["horse_id"] = quant["horse_id"].astype(str)
    race = quant["race_id"].to_numpy()
    lrs = _qual_frame(quant, qual_records)
    win_base = quant["win_prob_base"].to_numpy(dtype=float)

    if mode == "product":
        a = np.ones(len(quant))
        rest = np.log(np.prod(lrs[list(LR_FIELDS)].to_numpy(dtype=float), axis=1))
    else:
        assert pool is not None
        frame = pd.concat([quant, lrs[list(LR_FIELDS)]], axis=1)
        if pool.use_market:
            frame["market_prob"] = _market_column(quant)
        a, rest = pool.transform_logits(frame)

    win_final, log_z = _softmax(a * _log(win_base) + rest, race)

    def through(p: np.ndarray) -> np.ndarray:
        """A bound carried through the race's transformation, the rest of the race at its point values."""
        return np.clip(np.exp(a * _log(p) + rest - log_z), 0.0, 1.0)

    place_final, place_factor = _place(quant, win_base, win_final, race, harville_g, harville_d)
    out: list[dict[str, Any]] = []
    for i, rec in enumerate(quant_records):
        row = dict(rec)
        for f in LR_FIELDS:
            row[f] = float(lrs[f].iat[i])
        row["lr_product"] = float(lrs["lr_product"].iat[i])
        row["win_prob_final"] = float(win_final[i])
        row["place_prob_final"] = float(place_final[i])
        row["fusion_mode"] = mode
        out.append(row)
    for side in ("lower", "upper"):
        col = f"win_prob_{side}"
        if col in quant.columns and quant[col].notna().all():
            bound = through(quant[col].to_numpy(dtype=float))
        else:
            bound = win_final
        pick = np.minimum if side == "lower" else np.maximum
        bound = pick(bound, win_final)  # a bound never crosses its point
        pcol = f"place_prob_{side}"
        pbound = None
        if pcol in quant.columns and quant[pcol].notna().all():
            pbound = pick(np.clip(quant[pcol].to_numpy(dtype=float) * place_factor, 0.0, 1.0), place_final)
        for i, row in enumerate(out):
            row[f"win_prob_final_{side}"] = float(bound[i])
            if pbound is not None:
                row[f"place_prob_final_{side}"] = float(pbound[i])
    logger.info("fused %d runners in %d race(s), mode %s", len(out), len(set(race)), mode)
    return out


def _market_column(quant: pd.DataFrame) -> np.ndarray:
    if "market_prob" in quant.columns and quant["market_prob"].notna().all():
        return quant["market_prob"].to_numpy(dtype=float)
    if "win_odds" in quant.columns:
        bad = quant["win_odds"].isna() | (pd.to_numeric(quant["win_odds"], errors="coerce") <= 1.0)
        if bad.any():
            names = ", ".join(f"race {r} horse {h}" for r, h in quant.loc[bad, ["race_id", "horse_id"]].to_numpy())
            raise FusionMismatchError(
                f"Fitted fusion needs win odds above 1 for every runner; missing or invalid: {names}"
            )
        return market_probabilities(quant["win_odds"].to_numpy(dtype=float), quant["race_id"].to_numpy())
    raise FusionMismatchError(
        "Fitted fusion with the market needs 'market_prob' or 'win_odds' in every quantitative record."
    )
