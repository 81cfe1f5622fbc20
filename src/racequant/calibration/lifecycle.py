"""The error for learnable stages used before they are fitted, or out of order (MAPIE style)."""

from __future__ import annotations

from racequant.errors import RacequantError


class NotFittedError(RacequantError):
    """A learnable stage was used before it was fitted (or its steps were called out of order)."""


def method_order_error(first: str, then: str) -> NotFittedError:
    """``Incorrect method order: call fit before calling predict.``"""
    return NotFittedError(f"Incorrect method order: call {first} before calling {then}.")
