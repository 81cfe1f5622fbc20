"""The registry saves every stage with checksums and refuses corrupted, truncated or incompatible artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from racequant.models.pipeline import RacePipeline
from racequant.models.registry import (
    ArtifactNotFoundError,
    CorruptedArtifactError,
    IncompatibleArtifactError,
    load_model,
    save_model,
    verify_artifact,
)
from racequant.models.synthetic import make_synthetic_runners

FEATURES = [f"f{j}" for j in range(8)] + ["going"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RacePipeline, pd.DataFrame]:
    frame = make_synthetic_runners(500, seed=5).rename(columns={"date": "race_date"})
    cut = frame["race_date"].quantile(0.85)
    pipe = RacePipeline(
        n_estimators=10, max_depth=3, n_bootstrap=5, min_group_size=400, feature_manifest_hash="fabc"
    ).fit(frame[frame["race_date"] <= cut], FEATURES)
    directory = save_model(pipe, tmp_path_factory.mktemp("models"), "v1")
    return directory, pipe, frame[frame["race_date"] > cut]


def _copy(directory: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(directory, target)
    return target


def test_a_saved_model_loads_and_predicts_the_same(saved: tuple[Path, RacePipeline, pd.DataFrame]) -> None:
    directory, pipe, test = saved
    manifest = json.loads((directory / "manifest.json").read_text())
    assert {"feature_manifest_hash", "training_window", "validation_metrics", "library_versions", "checksum"} <= set(
        manifest
    )
    assert any(name.startswith("boosters/catboost_win") for name in manifest["files"])
    loaded = load_model(directory, feature_manifest_hash="fabc", available_columns=list(test.columns))
    a = pipe.predict(test, explain=False)
    b = loaded.predict(test, explain=False)
    np.testing.assert_allclose(a["win_prob"], b["win_prob"])


def test_a_flipped_byte_is_refused_naming_the_file(
    saved: tuple[Path, RacePipeline, pd.DataFrame], tmp_path: Path
) -> None:
    directory = _copy(saved[0], tmp_path)
    target = directory / "calibrators.joblib"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(CorruptedArtifactError, match=r"calibrators\.joblib .* is corrupted: its sha256 differs"):
        load_model(directory)


def test_a_truncated_booster_is_refused(saved: tuple[Path, RacePipeline, pd.DataFrame], tmp_path: Path) -> None:
    directory = _copy(saved[0], tmp_path)
    target = directory / "boosters" / "lightgbm_win.joblib"
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(CorruptedArtifactError, match=r"boosters/lightgbm_win\.joblib .* is truncated or altered"):
        load_model(directory)


def test_a_missing_file_is_refused(saved: tuple[Path, RacePipeline, pd.DataFrame], tmp_path: Path) -> None:
    directory = _copy(saved[0], tmp_path)
    (directory / "intervals.joblib").unlink()
    with pytest.raises(CorruptedArtifactError, match=r"missing the file intervals\.joblib"):
        verify_artifact(directory)


def test_a_truncated_manifest_is_refused(saved: tuple[Path, RacePipeline, pd.DataFrame], tmp_path: Path) -> None:
    directory = _copy(saved[0], tmp_path)
    path = directory / "manifest.json"
    path.write_text(path.read_text()[:200])
    with pytest.raises(CorruptedArtifactError, match="is not valid JSON"):
        load_model(directory)


def test_an_edited_manifest_is_refused(saved: tuple[Path, RacePipeline, pd.DataFrame], tmp_path: Path) -> None:
    directory = _copy(saved[0], tmp_path)
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"]["pipeline.joblib"]["bytes"] += 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(CorruptedArtifactError, match="does not match its checksum"):
        load_model(directory)


def test_other_feature_definitions_are_refused(saved: tuple[Path, RacePipeline, pd.DataFrame]) -> None:
    with pytest.raises(IncompatibleArtifactError, match=r"trained on feature version fabc .* version fxyz"):
        load_model(saved[0], feature_manifest_hash="fxyz")


def test_missing_feature_columns_are_refused(saved: tuple[Path, RacePipeline, pd.DataFrame]) -> None:
    with pytest.raises(IncompatibleArtifactError, match=r"lack: \['f7'\]"):
        load_model(saved[0], available_columns=[f"f{j}" for j in range(7)] + ["going"])


def test_a_missing_artifact_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFoundError, match="No model artifact"):
        load_model(tmp_path / "nope")
