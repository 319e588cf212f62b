"""Variance-exploding processes (``a(t) = 1``): SMLD / NCSN's geometric noise levels and EDM's ``sigma(t) = t``."""
from __future__ import annotations

import abc
import math

import torch

from ..core.tensors import append_dims
from .base import SDE, check_positive


class VEFamily(SDE):
    """A variance-exploding SDE ``dx = sqrt(d[sigma^2(t)]/dt) dw``: ``a(t) = 1``, ``s(t) = sigma(t)``.

    What every noise-level schedule shares follows from ``sigma(t)`` alone: the SMLD chain between two grid times,
    its ancestral step, the noise label ``log sigma(t)`` and the prior ``N(0, sigma(T)^2 I)``. A subclass gives
    :meth:`sigma`, :meth:`sde` (the diffusion ``g(t)``) and :meth:`t_of_sigma`.
    """

    @abc.abstractmethod
    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """The noise level ``sigma(t)``, increasing in ``t``; ``[B] -> [B]``."""

    @property
    def prior_std(self) -> float:
        return float(self.sigma(torch.tensor([float(self.T)], dtype=torch.float64)))

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


class VESDE(VEFamily):
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


class EDMSDE(VEFamily):
    """EDM's process ``dx = sqrt(2 t) dw`` on ``t in [0, sigma_max]``: ``sigma(t) = s(t) = t``, ``a(t) = 1`` (Karras
    et al. 2022, Sec. 2 and Table 1, "Ours").

    Time *is* the noise level, so the end time is ``T = sigma_max`` (80 in the paper) and every sampler's ``eps`` is
    the smallest noise level it reaches. Unlike SMLD's ``s(t) = sigma_min (sigma_max/sigma_min)^t``, ``s(0) = 0``:
    the kernel is exact from clean data. Prior ``N(0, sigma_max^2 I)``.

    Args:
        sigma_max: the largest noise level and end time ``T`` (> 0).
    """

    preferred_grid = "edm"  # uniform in t is uniform in sigma here: every step of it would be spent at large noise

    def __init__(self, sigma_max: float = 80.0):
        check_positive(sigma_max=sigma_max)
        self.sigma_max = float(sigma_max)
        self.T = self.sigma_max

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def sigma(self, t):
        """``sigma(t) = t``."""
        return t.clone() if torch.is_tensor(t) else torch.as_tensor(t)

    def t_of_sigma(self, sigma):
        """``t = sigma``."""
        return torch.as_tensor(sigma).clone()

    def sde(self, x, t):
        """No drift; ``g(t) = sqrt(d[t^2]/dt) = sqrt(2 t)``."""
        return torch.zeros_like(x), torch.sqrt(2.0 * t)
