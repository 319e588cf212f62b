"""Data distributions: exact toy mixtures (and, in :mod:`scorelab.data.images`, image datasets)."""
from .toy import PRESETS, GaussianMixture, OracleScore, eight_gaussians, grid, two_modes

__all__ = ["GaussianMixture", "OracleScore", "PRESETS", "eight_gaussians", "grid", "two_modes"]
