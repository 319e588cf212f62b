"""The variance-exploding SDE of score matching with Langevin dynamics (SMLD / NCSN)."""
from __future__ import annotations

import math

import torch

from ..core.tensors import append_dims
from .base import SDE, check_positive


class VESDE(SDE):
    """Variance-exploding SDE ``dx = sqrt(d[sigma^2(t)]/dt) dw`` (Song et al. 2021, Eq. 9; SMLD/NCSN).

    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``. ``marginal_std`` follows the paper's convention
    ``s(t) = sigma(t)`` (the data are taken to carry ``sigma_min`` noise already); the exact kernel std from
    clean data is ``sqrt(sigma(t)^2 - sigma_min^2)`` (docs/math.md §2). Prior ``N(0, sigma_max^2 I)``.

    Args:
        sigma_min: smallest noise level ``> 0`` (0.01 in the paper).
        sigma_max: largest noise level ``> sigma_min``; about the largest pairwise data distance (50 for CIFAR-10).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        check_positive(sigma_min=sigma_min, sigma_max=sigma_max)
        if sigma_min >= sigma_max:
            raise ValueError(
                f"sigma_min must be smaller than sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, shape ``[B]``; equals ``s(t) / a(t)`` since ``a = 1``."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def t_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """Closed form: ``t = log(sigma / sigma_min) / log(sigma_max / sigma_min)``."""
        return torch.log(torch.as_tensor(sigma) / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

    def sde(self, x, t):
        diffusion = self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))
        return torch.zeros_like(x), diffusion

    def mean_coeff(self, t):
        return torch.ones_like(t)

    def marginal_std(self, t):
        return self.sigma(t)

    def discretize(self, x, t, t_next):
        """SMLD chain: ``f_i = 0``, ``G_i = sqrt(sigma(t)^2 - sigma(t_next)^2)`` (Song et al. 2021, Eq. 44)."""
        return torch.zeros_like(x), torch.sqrt(self.sigma(t) ** 2 - self.sigma(t_next) ** 2)

    def ancestral_step(self, x, t, t_next, score, z):
        """SMLD ancestral step (Song et al. 2021, Eq. 47):
        ``x' = x + (s_i^2 - s_{i-1}^2) score + sqrt(s_{i-1}^2 (s_i^2 - s_{i-1}^2) / s_i^2) z``."""
        s2, s2_next = self.sigma(t) ** 2, self.sigma(t_next) ** 2
        x_mean = x + append_dims(s2 - s2_next, x.ndim) * score
        std = torch.sqrt(s2_next * (s2 - s2_next) / s2)
        return x_mean + append_dims(std, x.ndim) * z, x_mean

    def noise_label(self, t):
        """``log sigma(t)``: what NCSN++'s Fourier embedding is conditioned on in the reference."""
        return torch.log(self.sigma(t))
