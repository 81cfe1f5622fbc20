"""The model registry: ``models/<version>/`` holding every fitted stage and a manifest that vouches for it.

Layout of a version directory:

    manifest.json                 version, created_at, feature manifest hash, feature columns, training window,
                                  validation metrics, library versions, sha256 and size of every file, checksum
    pipeline.joblib               the pipeline's own learned state (softmax, blend, Harville, settings)
    boosters/<lib>_<target>.joblib   each fitted booster (its library's model inside)
    boosters/<lib>_<target>.<ext> the same booster in its library's native format, for inspection
    calibrators.joblib            the isotonic calibrators (win, place)
    intervals.joblib              the interval estimators (win, place)

Loading verifies every checksum before unpickling anything and refuses a corrupted, truncated or
feature-incompatible artifact with an error naming what is wrong. Only load artifacts you trust: the
components are pickles.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import joblib

from racequant.errors import RacequantError
from racequant.models.pipeline import RacePipeline

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_LIBRARIES = ("racequant", "numpy", "pandas", "scikit-learn", "catboost", "lightgbm", "xgboost", "joblib")
# a different major version of these cannot be trusted to read the pickled models
_MAJOR_CHECKED = ("scikit-learn", "catboost", "lightgbm", "xgboost")
_COMPONENTS = (
    "win_boosters_",
    "place_boosters_",
    "win_calibrator_",
    "place_calibrator_",
    "win_intervals_",
    "place_intervals_",
)


class ArtifactError(RacequantError):
    """A model artifact cannot be used."""


class ArtifactNotFoundError(ArtifactError):
    """No artifact at the given place."""


class CorruptedArtifactError(ArtifactError):
    """An artifact's files are missing, truncated or altered."""


class IncompatibleArtifactError(ArtifactError):
    """An intact artifact that does not fit the features or libraries at hand."""


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files_checksum(files: dict[str, dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _export_native(booster: Any, path_stem: Path) -> Path | None:
    """Write a booster in its library's own format (informational; loading uses the joblib files)."""
    model = booster.model_
    try:
        if booster.library == "lightgbm":
            out = path_stem.with_suffix(".txt")
            model.save_model(str(out))
        elif booster.library == "xgboost":
            out = path_stem.with_suffix(".ubj")
            model.save_model(str(out))
        else:
            out = path_stem.with_suffix(".cbm")
            model.save_model(str(out))
    except Exception as exc:  # a native export is a convenience; the artifact stays valid without it
        logger.warning("could not export %s natively: %s", path_stem.name, exc)
        return None
    return out


def new_version() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def save_model(
    pipeline: RacePipeline, root: Path | str = "models", version: str | None = None, extra: dict[str, Any] | None = None
) -> Path:
    """Write a fitted pipeline to ``root/<version>/`` with its manifest; returns the version directory."""
    if not hasattr(pipeline, "win_calibrator_"):
        raise ArtifactError("Only a fitted pipeline can be saved: call fit before save_model.")
    version = version or new_version()
    directory = Path(root) / version
    if directory.exists() and any(directory.iterdir()):
        raise ArtifactError(f"Model version {version!r} already exists at {directory}; choose another version.")
    (directory / "boosters").mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for target, boosters in (("win", pipeline.win_boosters_), ("place", pipeline.place_boosters_)):
        for lib, booster in boosters.items():
            stem = directory / "boosters" / f"{lib}_{target}"
            joblib.dump(booster, stem.with_suffix(".joblib"))
            written.append(stem.with_suffix(".joblib"))
            native = _export_native(booster, stem)
            if native is not None:
                written.append(native)
    joblib.dump(
        {"win": pipeline.win_calibrator_, "place": pipeline.place_calibrator_}, directory / "calibrators.joblib"
    )
    joblib.dump({"win": pipeline.win_intervals_, "place": pipeline.place_intervals_}, directory / "intervals.joblib")
    shell = copy.copy(pipeline)
    for name in _COMPONENTS:
        delattr(shell, name)
    shell.booster_keys_ = {"win": list(pipeline.win_boosters_), "place": list(pipeline.place_boosters_)}
    joblib.dump(shell, directory / "pipeline.joblib")
    written += [directory / "calibrators.joblib", directory / "intervals.joblib", directory / "pipeline.joblib"]
    files = {
        p.relative_to(directory).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in sorted(written)
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "feature_manifest_hash": pipeline.feature_manifest_hash,
        "feature_columns": pipeline.feature_columns_,
        "training_window": pipeline.training_window_,
        "calibrated_until": pipeline.calibrated_until_,
        "validation_metrics": pipeline.validation_metrics_,
        "params": {k: v for k, v in vars(pipeline).items() if not k.endswith("_") and _jsonable(v)},
        "library_versions": library_versions(),
        "files": files,
        "checksum": _files_checksum(files),
        **({"extra": extra} if extra else {}),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    logger.info("saved model %s to %s", version, directory)
    return directory


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def read_manifest(directory: Path | str) -> dict[str, Any]:
    """The manifest of a version directory, refusing a missing or damaged one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactNotFoundError(f"No model artifact at {directory}.")
    path = directory / MANIFEST
    if not path.is_file():
        raise CorruptedArtifactError(f"The model artifact {directory} has no {MANIFEST}.")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptedArtifactError(f"{path} is not valid JSON (truncated or altered?): {exc}") from exc
    for key in ("format_version", "files", "checksum", "feature_columns"):
        if key not in manifest:
            raise CorruptedArtifactError(f"{path} lacks the field {key!r}.")
    if manifest["format_version"] != FORMAT_VERSION:
        raise IncompatibleArtifactError(
            f"{path} has format version {manifest['format_version']}; this racequant reads version {FORMAT_VERSION}."
        )
    if _files_checksum(manifest["files"]) != manifest["checksum"]:
        raise CorruptedArtifactError(
            f"{path}: the list of files does not match its checksum (the manifest was altered)."
        )
    return manifest


def verify_artifact(directory: Path | str) -> dict[str, Any]:
    """Check every file against the manifest (presence, size, sha256); return the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    for rel, meta in manifest["files"].items():
        path = directory / rel
        if not path.is_file():
            raise CorruptedArtifactError(f"The model artifact {directory} is missing the file {rel}.")
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise CorruptedArtifactError(
                f"{rel} in {directory} is truncated or altered: {size} bytes, the manifest says {meta['bytes']}."
            )
        if _sha256(path) != meta["sha256"]:
            raise CorruptedArtifactError(f"{rel} in {directory} is corrupted: its sha256 differs from the manifest.")
    return manifest


def check_compatibility(
    manifest: dict[str, Any],
    feature_manifest_hash: str | None = None,
    available_columns: list[str] | None = None,
) -> None:
    """Refuse a model trained on other feature definitions, needing absent columns, or other major libraries."""
    trained = manifest.get("feature_manifest_hash")
    if feature_manifest_hash is not None and trained is not None and trained != feature_manifest_hash:
        raise IncompatibleArtifactError(
            f"The model was trained on feature version {trained} but the features at hand are version "
            f"{feature_manifest_hash}; retrain the model (racequant train) or rebuild the features it expects."
        )
    if available_columns is not None:
        missing = [c for c in manifest["feature_columns"] if c not in set(available_columns)]
        if missing:
            raise IncompatibleArtifactError(
                f"The model needs {len(missing)} feature column(s) the features at hand lack: {missing[:20]}"
            )
    saved = manifest.get("library_versions", {})
    now = library_versions()
    for lib in _MAJOR_CHECKED:
        a, b = str(saved.get(lib, "absent")), now.get(lib, "absent")
        if a.split(".")[0] != b.split(".")[0]:
            raise IncompatibleArtifactError(f"The model was saved with {lib} {a}; this environment has {lib} {b}.")
        if a != b:
            logger.warning("model saved with %s %s, loading with %s", lib, a, b)


def load_model(
    directory: Path | str,
    feature_manifest_hash: str | None = None,
    available_columns: list[str] | None = None,
) -> RacePipeline:
    """Load a verified, compatible pipeline from a version directory."""
    directory = Path(directory)
    manifest = verify_artifact(directory)
    check_compatibility(manifest, feature_manifest_hash, available_columns)
    try:
        pipeline = joblib.load(directory / "pipeline.joblib")
        keys = pipeline.booster_keys_
        pipeline.win_boosters_ = {lib: joblib.load(directory / "boosters" / f"{lib}_win.joblib") for lib in keys["win"]}
        pipeline.place_boosters_ = {
            lib: joblib.load(directory / "boosters" / f"{lib}_place.joblib") for lib in keys["place"]
        }
        calibrators = joblib.load(directory / "calibrators.joblib")
        intervals = joblib.load(directory / "intervals.joblib")
    except Exception as exc:  # checksums passed, so this is a library or class mismatch
        raise IncompatibleArtifactError(f"The model artifact {directory} could not be read: {exc}") from exc
    pipeline.win_calibrator_, pipeline.place_calibrator_ = calibrators["win"], calibrators["place"]
    pipeline.win_intervals_, pipeline.place_intervals_ = intervals["win"], intervals["place"]
    if not isinstance(pipeline, RacePipeline):
        raise IncompatibleArtifactError(f"{directory}/pipeline.joblib does not hold a RacePipeline.")
    logger.info("loaded model %s from %s", manifest.get("version"), directory)
    return pipeline


def latest_version(root: Path | str = "models") -> Path:
    """The most recent version directory under ``root`` (versions sort by time)."""
    root = Path(root)
    versions = sorted(p for p in root.glob("*") if (p / MANIFEST).is_file()) if root.is_dir() else []
    if not versions:
        raise ArtifactNotFoundError(f"No model under {root}; run racequant train first.")
    return versions[-1]
