"""racequant: honest, calibrated win and place probabilities for horse races, beside the market."""

from __future__ import annotations

import logging

from racequant.errors import RacequantError

__all__ = ["RacequantError", "__version__"]
__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
