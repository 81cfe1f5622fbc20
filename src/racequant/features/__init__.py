"""Point-in-time features: every runner's vector from what was known before its race started."""

from racequant.features.build import FeatureBuildError, build_features, features_for_card
from racequant.features.manifest import all_specs, feature_version, fundamental_specs

__all__ = [
    "FeatureBuildError",
    "all_specs",
    "build_features",
    "feature_version",
    "features_for_card",
    "fundamental_specs",
]
