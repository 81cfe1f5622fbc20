"""Models: the registry's versions, which one is loaded, their training windows and validation metrics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from racequant.dashboard.common import api_url, fmt, load_predictor, page_header, settings
from racequant.errors import RacequantError

logger = logging.getLogger(__name__)


def registry_versions(models_dir: Path) -> list[dict[str, Any]]:
    """Every version folder under ``models_dir``, newest first: its manifest, or the reason it cannot be read."""
    from racequant.models.registry import MANIFEST, read_manifest

    out = []
    folders = sorted((p for p in models_dir.glob("*") if (p / MANIFEST).is_file()), reverse=True)
    for folder in folders:
        try:
            out.append({"folder": folder, "manifest": read_manifest(folder), "problem": None})
        except RacequantError as exc:
            out.append({"folder": folder, "manifest": {}, "problem": str(exc)})
    return out


def versions_frame(versions: list[dict[str, Any]], loaded: str | None) -> pd.DataFrame:
    rows = []
    for v in versions:
        m = v["manifest"]
        window = m.get("training_window") or {}
        races = window.get("races") or {}
        metrics = (m.get("validation_metrics") or {}).get("calibration_races_uncalibrated") or {}
        rows.append(
            {
                "version": v["folder"].name,
                "loaded": "yes" if v["folder"].name == loaded else "",
                "created": m.get("created_at", "-"),
                "training window": f"{window.get('start', '-')} to {window.get('end', '-')}",
                "races (train/val/cal)": "/".join(
                    str(races.get(k, "-")) for k in ("train", "validation", "calibration")
                ),
                "pseudo-R2": fmt(metrics.get("pseudo_r2"), 4),
                "winner log loss": fmt(metrics.get("winner_log_loss")),
                "ECE": fmt(metrics.get("ece"), 4),
                "features": len(m.get("feature_columns") or []),
                "feature version": m.get("feature_manifest_hash", "-"),
                "problem": v["problem"] or "",
            }
        )
    return pd.DataFrame(rows).set_index("version")


def _api_status(url: str) -> dict[str, Any] | str:
    import httpx

    try:
        response = httpx.get(f"{url.rstrip('/')}/api/v1/model/status", timeout=5)
        response.raise_for_status()
        return dict(response.json())
    except Exception as exc:  # an unreachable API is shown on the page
        return f"The API at {url} did not answer: {exc}"


def render() -> None:
    s = settings()
    page_header(
        "Models",
        "The model registry: versions, training windows and validation metrics (on the "
        "calibration races, held back from the boosters).",
    )
    models_dir = Path(s.models_dir)
    versions = registry_versions(models_dir) if models_dir.is_dir() else []
    if not versions:
        st.info(f"No model under `{models_dir}`: run `racequant train` (or set RACEQUANT_MODELS_DIR).")
        return
    loaded_version: str | None = None
    try:
        predictor = load_predictor(str(models_dir), s.model_version)
        loaded_version = predictor.directory.name if predictor.directory else predictor.model_version
        models = ", ".join(f"{k} {'✓' if ok else '✗'}" for k, ok in predictor.models_loaded.items())
        st.success(
            f"The dashboard predicts with **{loaded_version}** "
            f"({'pinned by RACEQUANT_MODEL_VERSION' if s.model_version else 'the latest version'}): "
            f"{predictor.feature_count} features, feature version {predictor.feature_version}; {models}."
        )
    except RacequantError as exc:
        st.error(f"The dashboard cannot load a model: {exc}")
    url = api_url()
    if url:
        status = _api_status(url)
        if isinstance(status, str):
            st.warning(status)
        else:
            st.info(
                f"The API at {url} serves **{status.get('model_version')}** ({status.get('status')}), "
                f"loaded at {status.get('loaded_at')}."
            )

    st.subheader("Registry")
    st.table(versions_frame(versions, loaded_version))

    names = [v["folder"].name for v in versions]
    default = names.index(loaded_version) if loaded_version in names else 0
    chosen = st.selectbox("Details of version", names, index=default, key="model_version")
    manifest = next(v["manifest"] for v in versions if v["folder"].name == chosen)
    metrics = manifest.get("validation_metrics") or {}
    left, right = st.columns(2)
    with left:
        st.markdown("**Training window**")
        st.json(manifest.get("training_window") or {})
        st.markdown("**Library versions**")
        st.json(manifest.get("library_versions") or {})
    with right:
        st.markdown("**Validation metrics**")
        st.json(metrics)
    per_model = metrics.get("per_model_pseudo_r2") or {}
    if per_model:
        st.bar_chart(pd.Series(per_model, name="pseudo-R2"), horizontal=True)
