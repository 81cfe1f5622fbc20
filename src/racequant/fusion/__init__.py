"""Fusion: qualitative likelihood ratios (schema, providers), LR fusion, fitted log-linear pooling with the market."""

from racequant.fusion.errors import FusionMismatchError, ProviderError, QualitativeValidationError
from racequant.fusion.pooling import LogLinearPool, benter_second_stage

__all__ = [
    "FusionMismatchError",
    "LogLinearPool",
    "ProviderError",
    "QualitativeValidationError",
    "benter_second_stage",
]
