"""Sample-quality measures for low-dimensional data with a known Gaussian-mixture truth."""
from __future__ import annotations

import math

import torch

from ..data.toy import GaussianMixture


def mode_weights(mixture: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """Fraction of samples assigned (by maximum responsibility) to each component; ``[K]``."""
    labels = mixture.classify(x.double())
    return torch.bincount(labels, minlength=mixture.n_components).double() / x.shape[0]


def mode_weight_error(mixture: GaussianMixture, x: torch.Tensor) -> float:
    """Largest absolute difference between the sampled and true mode weights."""
    return float((mode_weights(mixture, x) - mixture.weights).abs().max())


def exact_nll(mixture: GaussianMixture, x: torch.Tensor) -> float:
    """Mean exact negative log-likelihood (nats) of samples under the true mixture.

    Compare with ``mixture.entropy()``: samples from the truth give the entropy on average; mode dropping
    lowers this number, blurring raises it.
    """
    return float(-mixture.log_prob(x.double()).mean())


def _subsample(x: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    if x.shape[0] <= n:
        return x
    return x[torch.randperm(x.shape[0], generator=generator)[:n]]


def energy_distance(x: torch.Tensor, y: torch.Tensor, max_points: int = 4000,
                    generator: torch.Generator | None = None) -> float:
    """Energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Szekely & Rizzo 2013); 0 iff same law.

    Uses at most ``max_points`` points of each set (the V-statistic, biased by O(1/n)).
    """
    x = _subsample(x.double().flatten(1), max_points, generator)
    y = _subsample(y.double().flatten(1), max_points, generator)
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).mean()
    yy = torch.cdist(y, y).mean()
    return float(2 * xy - xx - yy)


def toy_metrics(mixture: GaussianMixture, x: torch.Tensor, n_reference: int | None = None,
                generator: torch.Generator | None = None) -> dict:
    """All toy measures at once: mode weights, their max error, exact NLL, entropy and energy distance."""
    reference = mixture.sample(n_reference or x.shape[0], generator=generator, dtype=torch.float64)
    entropy, entropy_se = mixture.entropy(generator=generator)
    nll = exact_nll(mixture, x)
    return {
        "mode_weights": mode_weights(mixture, x).tolist(),
        "true_weights": mixture.weights.tolist(),
        "mode_weight_error": mode_weight_error(mixture, x),
        "exact_nll": nll,
        "entropy": entropy,
        "entropy_se": entropy_se,
        "nll_gap": nll - entropy,
        "energy_distance": energy_distance(x, reference, generator=generator),
        "n_samples": int(x.shape[0]),
    }


def _sum_abs_differences(v: torch.Tensor) -> torch.Tensor:
    """``sum_{i,j} |v_i - v_j|`` over ordered pairs, per row of ``v [M, n]``, by sorting: O(n log n)."""
    n = v.shape[1]
    rank = torch.arange(1, n + 1, dtype=v.dtype, device=v.device)
    return 2.0 * (v.sort(dim=1).values @ (2.0 * rank - n - 1))


def energy_distance_2d(x: torch.Tensor, y: torch.Tensor, n_directions: int = 128) -> float:
    """The energy distance of :func:`energy_distance` (V-statistic, every point) for 2-D samples in O(n log n).

    In the plane ``|u| = (pi / 2) E_theta |<u, e_theta>|`` for ``theta`` uniform on ``[0, pi)``, so every mean
    pairwise distance is ``pi / 2`` times the mean over directions of the 1-D mean distance of the projections,
    which sorting gives exactly. ``n_directions`` equispaced angles make the average a trapezoid rule on a periodic
    integrand: the relative error of each mean distance is about ``(pi / n_directions)^2 / 12`` (5e-5 at 128) and
    largely cancels in the difference. Lets a benchmark use 20,000+ points where ``cdist`` would need ``n^2`` memory.

    Args:
        x: samples ``[n, 2]``.
        y: samples ``[m, 2]``.
        n_directions: number of projection angles.

    Returns:
        ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` with all pairs, as :func:`energy_distance` with ``max_points >= n, m``.
    """
    x, y = x.double().flatten(1), y.double().flatten(1)
    if x.shape[1] != 2 or y.shape[1] != 2:
        raise ValueError(f"energy_distance_2d needs 2-D points, got {tuple(x.shape)} and {tuple(y.shape)}")
    theta = torch.arange(n_directions, dtype=torch.float64, device=x.device) * (math.pi / n_directions)
    directions = torch.stack([theta.cos(), theta.sin()], dim=1)  # [M, 2]
    px, py = directions @ x.T, directions @ y.T  # [M, n], [M, m]: rows sort contiguously
    sxx, syy = _sum_abs_differences(px), _sum_abs_differences(py)
    sxy = (_sum_abs_differences(torch.cat([px, py], dim=1)) - sxx - syy) / 2.0  # cross pairs, each once
    n, m = x.shape[0], y.shape[0]
    per_direction = 2.0 * sxy / (n * m) - sxx / n**2 - syy / m**2
    return float(math.pi / 2 * per_direction.mean())
