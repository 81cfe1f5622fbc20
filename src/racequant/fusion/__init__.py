"""Fusion: qualitative likelihood ratios (schema, providers), LR fusion, fitted log-linear pooling with the market."""

from racequant.fusion.pooling import LogLinearPool, benter_second_stage

__all__ = ["LogLinearPool", "benter_second_stage"]
