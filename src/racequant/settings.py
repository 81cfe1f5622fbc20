"""Typed settings, read from the environment (RACEQUANT_*) by entry points only."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """racequant's settings; every field can be set as RACEQUANT_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="RACEQUANT_", extra="ignore")

    db: Path = Field(default=Path("racequant.duckdb"), description="Path of the DuckDB warehouse.")
    models_dir: Path = Field(default=Path("models"), description="Folder of the model registry.")
    log_level: str = Field(default="INFO", description="Log level of the racequant loggers.")
