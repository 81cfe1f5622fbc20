"""Calibration: isotonic maps per group, intervals for the outcome frequency, and the scores (metrics)."""

from racequant.calibration.lifecycle import NotFittedError

__all__ = ["NotFittedError"]
