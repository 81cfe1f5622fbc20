"""Logging set-up for entry points (CLI, API, dashboard). Library modules only call getLogger."""

from __future__ import annotations

import logging as _logging

from rich.console import Console
from rich.logging import RichHandler


def configure_logging(level: str = "INFO") -> None:
    """Send racequant's log records to stderr through rich (stdout stays for results); entry points only."""
    root = _logging.getLogger("racequant")
    root.setLevel(level.upper())
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        handler = RichHandler(
            console=Console(stderr=True, soft_wrap=True), show_path=False, rich_tracebacks=False, markup=False
        )
        handler.setFormatter(_logging.Formatter("%(message)s"))
        root.addHandler(handler)
