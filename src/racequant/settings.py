"""Typed settings, read from the environment (RACEQUANT_*) by entry points only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """racequant's settings; every field can be set as RACEQUANT_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="RACEQUANT_", extra="ignore")

    db: Path = Field(default=Path("racequant.duckdb"), description="Path of the DuckDB warehouse.")
    models_dir: Path = Field(default=Path("models"), description="Folder of the model registry.")
    log_level: str = Field(default="INFO", description="Log level of the racequant loggers.")
    features_memory_limit: str | None = Field(
        default="3GB",
        description="DuckDB memory cap of the feature build (it spills to disk beyond it); empty: DuckDB's default.",
    )

    # --- serving and monitoring (issue 7) ---
    host: str = Field(default="127.0.0.1", description="Address `racequant serve` listens on.")
    port: int = Field(default=8001, ge=1, le=65535, description="Port `racequant serve` listens on.")
    model_version: str | None = Field(default=None, description="Registry version the API loads (default: latest).")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="API keys of the mutating endpoints (RACEQUANT_API_KEYS, comma-separated)."
    )
    predlog: Path | None = Field(
        default=None, description="DuckDB file of the prediction log (default: <db stem>.predlog.duckdb beside db)."
    )
    predlog_fsync: bool = Field(
        default=False,
        description="fsync the prediction journal at each append: acknowledged predictions then survive a power "
        "loss too, not only a kill of the server (costs a disk flush per batch of requests).",
    )
    max_runners: int = Field(default=24, ge=1, description="Most runners accepted in one race.")
    max_past_runs: int = Field(default=50, ge=0, description="Most past runs accepted per horse in a request.")
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="Largest request body accepted, in bytes.")
    predict_workers: int | None = Field(
        default=None, ge=1, description="Threads running the model in the API (default: the cores, at least 2)."
    )
    predict_processes: int | None = Field(
        default=None,
        ge=0,
        description="Child processes running the registry model in the API (default 2 on 2+ cores; 0: the threads).",
    )
    predict_max_batch: int = Field(
        default=8, ge=1, description="Most queued race cards one model call takes together in the API (1: none)."
    )
    alert_webhook_url: str | None = Field(default=None, description="Slack-compatible webhook the alerts post to.")
    alert_timeout_s: float = Field(default=5.0, gt=0, description="Timeout of one webhook post, in seconds.")
    alert_retries: int = Field(default=3, ge=0, description="Retries of a failed webhook post.")
    drift_auc_drop: float = Field(default=0.05, ge=0, description="Recent AUC this far below historical flags drift.")
    drift_ece_max: float = Field(default=0.10, ge=0, description="Recent ECE above this flags calibration drift.")
    drift_psi_max: float = Field(default=0.2, ge=0, description="PSI of a feature above this flags feature drift.")
    drift_recent_days: int = Field(default=7, ge=1, description="Days counted as recent by the drift report.")
    interval_coverage_target: float = Field(default=0.9, gt=0, lt=1, description="Nominal coverage of intervals.")
    interval_coverage_tolerance: float = Field(default=0.05, ge=0, description="Coverage shortfall that flags.")
    alert_latency_ms: float = Field(default=500.0, gt=0, description="Mean latency above this raises an alert.")

    # --- qualitative fusion: an OpenAI-compatible chat-completions provider (issue 6) ---
    llm_base_url: str | None = Field(
        default=None, description="Base URL of an OpenAI-compatible API (e.g. https://api.openai.com/v1)."
    )
    llm_model: str = Field(default="gpt-4o-mini", description="Model the qualitative provider asks.")
    llm_api_key: SecretStr | None = Field(default=None, description="Bearer key of the LLM endpoint.")
    llm_timeout_s: float = Field(default=60.0, gt=0, description="Timeout of one chat-completions call, in seconds.")
    llm_retries: int = Field(default=2, ge=0, description="Retries of a failed or malformed LLM answer.")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    def predlog_path(self) -> Path:
        """The prediction log's own DuckDB file: ``predlog`` or ``<db stem>.predlog.duckdb`` beside the warehouse."""
        if self.predlog is not None:
            return Path(self.predlog)
        db = Path(self.db)
        return db.with_name(f"{db.stem}.predlog.duckdb")
