"""The registry of every feature: name, category, description and the warehouse columns it reads.

The manifest hash is the ``feature_version``: any change to a feature's name, category, description,
columns read, or to the build's SQL revision gives a new version, so stored features and models trained
on them can say exactly which definitions they used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

# Bump when the SQL of an existing feature changes without a change to its spec.
SQL_REVISION = 3

CATEGORIES = ("speed", "class", "sectionals", "pedigree", "context", "connections", "composite", "market")
FUNDAMENTAL_CATEGORIES = tuple(c for c in CATEGORIES if c != "market")


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: what it is and which warehouse columns it is computed from."""

    name: str
    category: str
    description: str
    columns_read: tuple[str, ...]
    dtype: str = "double"  # "double" or "varchar"

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["columns_read"] = list(self.columns_read)
        return out


def _registry() -> tuple[FeatureSpec, ...]:
    from racequant.features import class_, composites, connections, context, market, pedigree, sectionals, speed

    specs: list[FeatureSpec] = []
    for module in (speed, class_, sectionals, pedigree, context, connections, composites, market):
        specs.extend(module.SPECS)
    names = [s.name for s in specs]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise ValueError(f"Duplicated feature names in the manifest: {sorted(duplicated)}")
    for spec in specs:
        if spec.category not in CATEGORIES:
            raise ValueError(f"Feature {spec.name} has an unknown category {spec.category!r}.")
    return tuple(specs)


_CACHE: dict[str, tuple[FeatureSpec, ...]] = {}


def all_specs() -> tuple[FeatureSpec, ...]:
    """Every feature, market included, in a stable order."""
    if "specs" not in _CACHE:
        _CACHE["specs"] = _registry()
    return _CACHE["specs"]


def fundamental_specs() -> tuple[FeatureSpec, ...]:
    """The features a model may learn from: everything except the market."""
    return tuple(s for s in all_specs() if s.category in FUNDAMENTAL_CATEGORIES)


def feature_names(*, include_market: bool = True) -> list[str]:
    specs = all_specs() if include_market else fundamental_specs()
    return [s.name for s in specs]


_VERSION: dict[str, str] = {}


def feature_version() -> str:
    """A stable short hash of the manifest and the SQL revision."""
    if "version" in _VERSION:
        return _VERSION["version"]
    payload = json.dumps(
        {"sql_revision": SQL_REVISION, "specs": [s.as_dict() for s in all_specs()]}, sort_keys=True
    ).encode()
    _VERSION["version"] = "f" + hashlib.sha256(payload).hexdigest()[:12]
    return _VERSION["version"]
