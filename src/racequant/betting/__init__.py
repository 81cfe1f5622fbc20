"""Staking (fractional Kelly sized per race) and settlement with the real win and place odds."""

from racequant.betting.kelly import KellyStaking, race_kelly_fractions
from racequant.betting.settlement import settle_place, settle_win

__all__ = ["KellyStaking", "race_kelly_fractions", "settle_place", "settle_win"]
