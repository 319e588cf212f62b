"""Sample-quality metrics."""
from .toy import energy_distance, exact_nll, mode_weight_error, mode_weights, sliced_wasserstein, toy_metrics

__all__ = ["energy_distance", "exact_nll", "mode_weight_error", "mode_weights", "sliced_wasserstein", "toy_metrics"]
