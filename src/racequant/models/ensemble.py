"""Blend of per-model win probabilities: log-linear pooling fitted on later validation races.

c_i = exp(sum_m w_m log p_mi) / sum_j exp(sum_m w_m log p_mj), w_m >= 0, fitted by maximum likelihood of the
winners (the same form as Benter's second stage, here across models). The weights need not sum to one:
their total also acts as a temperature.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize

from racequant.calibration.lifecycle import method_order_error
from racequant.models.race import race_codes, race_softmax, winner_log_likelihood

logger = logging.getLogger(__name__)


class LogLinearPool:
    """Log-linear pooling of several models' race probabilities (sklearn contract)."""

    def __init__(self, names: Sequence[str] | None = None) -> None:
        self.names = names

    def fit(
        self, probabilities: Sequence[np.ndarray], won: np.ndarray, race_ids: Sequence[object] | np.ndarray
    ) -> LogLinearPool:
        logs = np.log(np.clip(np.column_stack(probabilities), 1e-15, None))
        codes, n_races = race_codes(race_ids)
        won = np.asarray(won)

        def nll(w: np.ndarray) -> float:
            return -winner_log_likelihood(race_softmax(logs @ w, codes, n_races), won, codes, n_races)

        m = logs.shape[1]
        res = minimize(nll, np.full(m, 1.0 / m), method="L-BFGS-B", bounds=[(0.0, 5.0)] * m)
        self.weights_ = np.asarray(res.x, dtype=float)
        self.validation_log_likelihood_ = -float(res.fun)
        names = list(self.names) if self.names is not None else [f"model_{i}" for i in range(m)]
        logger.info("blend weights: %s", ", ".join(f"{n}={w:.3f}" for n, w in zip(names, self.weights_, strict=True)))
        return self

    def predict_proba(self, probabilities: Sequence[np.ndarray], race_ids: Sequence[object] | np.ndarray) -> np.ndarray:
        if not hasattr(self, "weights_"):
            raise method_order_error("fit", "predict_proba")
        logs = np.log(np.clip(np.column_stack(probabilities), 1e-15, None))
        codes, n_races = race_codes(race_ids)
        return race_softmax(logs @ self.weights_, codes, n_races)
