"""What every page shares: settings from the environment, the cached predictor, read-only connections, formats.

The dashboard is an entry point: it reads ``RACEQUANT_DB``, ``RACEQUANT_MODELS_DIR`` and
``RACEQUANT_MODEL_VERSION`` (and ``RACEQUANT_API_URL``, the API whose model status the Models page shows).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import streamlit as st

from racequant.settings import Settings

logger = logging.getLogger(__name__)

API_URL_ENV = "RACEQUANT_API_URL"


def settings() -> Settings:
    """The settings of this session, read from the environment (RACEQUANT_*)."""
    return Settings()


def api_url() -> str | None:
    """The racequant API the dashboard asks for its model status, if one is configured."""
    return os.environ.get(API_URL_ENV) or None


@contextmanager
def warehouse(db: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the warehouse for one page run."""
    from racequant.warehouse import connect_read_only

    with connect_read_only(db) as conn:
        yield conn


@st.cache_resource(show_spinner="Loading the model")
def load_predictor(models_dir: str, version: str | None) -> Any:
    """The registry's Predictor (latest version unless ``version``), loaded once per process."""
    from racequant.models.predictor import Predictor

    return Predictor.load(Path(models_dir), version)


def db_missing(db: Path) -> bool:
    """Say so on the page (and return True) when the warehouse file does not exist."""
    if Path(db).exists():
        return False
    st.warning(f"There is no warehouse at `{db}`. Set RACEQUANT_DB (or `racequant dashboard --db PATH`).")
    return True


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell: fixed digits, '-' for missing or non-finite values."""
    if value is None:
        return "-"
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number):
            return "-"
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else f"{number:.{digits}f}"
    return str(value)


def page_header(title: str, caption: str) -> None:
    st.title(title)
    st.caption(caption)
