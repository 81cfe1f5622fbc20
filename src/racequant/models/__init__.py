"""Models: booster wrappers, race-level probabilities, place (Harville), ensemble, the pipeline, the registry."""

from racequant.models.pipeline import FeatureContractError, RacePipeline

__all__ = ["FeatureContractError", "RacePipeline"]
