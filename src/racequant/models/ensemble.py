"""Blend of per-model win probabilities: a conditional logit over the models' log-probabilities.

c_i = exp(sum_m w_m log p_mi) / sum_j exp(sum_m w_m log p_mj), fitted by maximum likelihood of the winners on
validation races (the same form as Benter's second stage, here across models). The optimiser is the one of
``racequant.fusion.pooling.LogLinearPool`` (exact gradient, dead heats counted once); a small ridge keeps the
weights of three highly correlated boosters from trading off against each other. The weights need not sum to
one: their total also acts as a temperature.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from racequant.calibration.lifecycle import method_order_error
from racequant.models.race import race_codes, race_softmax

logger = logging.getLogger(__name__)


def _logs(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    return np.log(np.clip(np.column_stack(probabilities), 1e-15, None))


class LogLinearPool:
    """Log-linear pooling of several models' race probabilities (sklearn contract).

    ``fit(probabilities, won, race_ids)`` learns ``weights_`` (one per model) and ``coef_se_``.
    """

    def __init__(self, names: Sequence[str] | None = None, l2: float = 1.0) -> None:
        self.names = names
        self.l2 = l2

    def fit(
        self, probabilities: Sequence[np.ndarray], won: np.ndarray, race_ids: Sequence[object] | np.ndarray
    ) -> LogLinearPool:
        # imported here: racequant.fusion imports racequant.models.race, so a module-level import would be circular
        from racequant.fusion.pooling import LogLinearPool as ConditionalLogit

        pool = ConditionalLogit(l2=self.l2).fit(_logs(probabilities), race_ids, won)
        self.weights_ = np.asarray(pool.coef_, dtype=float)
        self.coef_se_ = np.asarray(pool.coef_se_, dtype=float)
        self.validation_log_likelihood_ = float(pool.log_likelihood_)
        names = list(self.names) if self.names is not None else [f"model_{i}" for i in range(len(self.weights_))]
        logger.info("blend weights: %s", ", ".join(f"{n}={w:.3f}" for n, w in zip(names, self.weights_, strict=True)))
        return self

    def predict_proba(self, probabilities: Sequence[np.ndarray], race_ids: Sequence[object] | np.ndarray) -> np.ndarray:
        if not hasattr(self, "weights_"):
            raise method_order_error("fit", "predict_proba")
        codes, n_races = race_codes(race_ids)
        return race_softmax(_logs(probabilities) @ self.weights_, codes, n_races)
