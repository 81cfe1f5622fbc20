"""Synthetic qualitative signals for benchmarks, tests and the demo (never for real predictions).

The simulator knows each runner's true win probability. A synthetic analyst reads part of it: its log
likelihood ratio is ``strength`` times the runner's true log-probability (centred in the race) plus noise,
split unevenly over the four factors (form carries most, context is nearly noise). Because the analyst reads
the horse's overall merit, which the base model and the market also see, multiplying the raw ratios into the
base probability double-counts; a fitted pool learns how much of each to keep.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from racequant.fusion.schema import LR_FIELDS, LR_MAX, LR_MIN, QualitativeRecord
from racequant.models.race import race_codes

logger = logging.getLogger(__name__)

# share of the informative signal and noise sd of each factor's log ratio
FACTOR_SHARES = {"lr_form_fitness": 0.55, "lr_conditions": 0.3, "lr_tactics": 0.15, "lr_context": 0.0}
FACTOR_NOISE = {"lr_form_fitness": 0.25, "lr_conditions": 0.25, "lr_tactics": 0.25, "lr_context": 0.2}


def _centre(x: np.ndarray, codes: np.ndarray, n_races: int) -> np.ndarray:
    mean = np.bincount(codes, weights=x, minlength=n_races) / np.bincount(codes, minlength=n_races)
    return x - mean[codes]


def synthetic_likelihood_ratios(
    true_win_prob: np.ndarray,
    race_ids: Sequence[object] | np.ndarray,
    strength: float = 0.6,
    seed: int = 0,
) -> pd.DataFrame:
    """The four synthetic ratios (clipped to the schema's range) and their product, one row per runner."""
    rng = np.random.default_rng(seed)
    codes, n_races = race_codes(race_ids)
    signal = _centre(np.log(np.clip(np.asarray(true_win_prob, float), 1e-6, None)), codes, n_races)
    out = {}
    for field in LR_FIELDS:
        log_lr = strength * FACTOR_SHARES[field] * signal + rng.normal(0.0, FACTOR_NOISE[field], len(signal))
        out[field] = np.round(np.clip(np.exp(log_lr), LR_MIN, LR_MAX), 3)
    frame = pd.DataFrame(out)
    frame["lr_product"] = np.round(frame[list(LR_FIELDS)].prod(axis=1), 4).clip(0.01, 100.0)
    return frame


def synthetic_qualitative_records(
    race_ids: Sequence[object] | np.ndarray,
    horse_ids: Sequence[object] | np.ndarray,
    horse_names: Sequence[object] | np.ndarray,
    true_win_prob: np.ndarray,
    strength: float = 0.6,
    seed: int = 0,
    timestamp: datetime | None = None,
) -> list[QualitativeRecord]:
    """Validated QualitativeRecords carrying the synthetic signal (for the demo and examples)."""
    lrs = synthetic_likelihood_ratios(true_win_prob, race_ids, strength, seed)
    ts = timestamp or datetime.now(UTC)
    records = []
    for i, (race, horse, name) in enumerate(zip(race_ids, horse_ids, horse_names, strict=True)):
        row = lrs.iloc[i]
        strengths = [f"{f.removeprefix('lr_').replace('_', ' ')} in its favour" for f in LR_FIELDS if row[f] > 1.15]
        concerns = [f"{f.removeprefix('lr_').replace('_', ' ')} against it" for f in LR_FIELDS if row[f] < 0.87]
        narrative = (
            f"Synthetic reading of race {race}: the simulated analyst sees part of each runner's true merit "
            f"through form, conditions and tactics, with noise; {name} gets an overall ratio of "
            f"{row['lr_product']:.2f}."
        )
        records.append(
            QualitativeRecord(
                race_id=str(race),
                horse_id=str(horse),
                horse_name=str(name),
                lr_form_fitness=float(row["lr_form_fitness"]),
                lr_conditions=float(row["lr_conditions"]),
                lr_tactics=float(row["lr_tactics"]),
                lr_context=float(row["lr_context"]),
                lr_product=float(row["lr_product"]),
                key_strengths=strengths,
                key_concerns=concerns,
                race_narrative=narrative[:300],
                qualitative_confidence=0.5,
                model_chain="synthetic-analyst",
                prediction_timestamp=ts,
            )
        )
    return records
