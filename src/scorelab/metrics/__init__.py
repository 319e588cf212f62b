"""Sample-quality metrics: exact toy measures, Fréchet distances (FID, domain metrics), KID."""
from .evaluation import SampleEvaluator, extract_features, to_uint8
from .frechet import FeatureStats, StatsMismatchError, frechet_distance
from .toy import (
    energy_distance,
    energy_distance_2d,
    exact_nll,
    mode_weight_error,
    mode_weights,
    toy_metrics,
)

__all__ = ["FeatureStats", "SampleEvaluator", "StatsMismatchError", "energy_distance", "energy_distance_2d",
           "exact_nll", "extract_features", "frechet_distance", "mode_weight_error", "mode_weights",
           "to_uint8", "toy_metrics"]
