"""Correctors: score-based MCMC at a fixed time ``t`` (Song et al. 2021, Sec. 4.2, Algorithms 4-5).

Every corrector shares one contract, ``step(score_fn, sde, x, t, dt, generator) -> (x, x_mean)``, where
``dt > 0`` is the spacing of the sampler's grid at ``t`` (it sets the VP/sub-VP ``alpha_i``).
"""
from __future__ import annotations

import abc

import torch

from ..core.tensors import append_dims
from ..sde import SDE
from .base import ScoreFn, noise_like


def _check_corrector_args(snr: float, n_steps: int) -> None:
    if not snr > 0:
        raise ValueError(f"corrector snr must be positive, got {snr}")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"corrector n_steps must be a positive integer, got {n_steps!r}")


class Corrector(abc.ABC):
    """Base corrector; ``step`` returns ``(x, x_mean)`` after ``n_steps`` MCMC iterations."""

    n_steps: int = 0

    @abc.abstractmethod
    def step(self, score_fn: ScoreFn, sde: SDE, x: torch.Tensor, t: torch.Tensor, dt: torch.Tensor,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the MCMC iterations on ``x [B, ...]`` at time ``t [B]``."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def describe(self) -> str:
        """The corrector in words: its name, its snr and its iterations per step when more than one."""
        name = {"NoCorrector": "no corrector", "Langevin": "Langevin",
                "AnnealedLangevin": "annealed Langevin"}.get(type(self).__name__, type(self).__name__)
        snr = getattr(self, "snr", None)
        repeat = f" x{self.n_steps}" if self.n_steps > 1 else ""
        return name + repeat + (f" (snr {snr:g})" if snr is not None else "")


class NoCorrector(Corrector):
    """No correction: the identity."""

    def step(self, score_fn, sde, x, t, dt, generator=None):
        return x, x


class Langevin(Corrector):
    """Langevin corrector with a target signal-to-noise ratio (Song et al. 2021, Algorithm 4-5; docs/math.md §4).

    ``eps = 2 alpha_i (snr ||z|| / ||s||)^2``, ``x <- x + eps s + sqrt(2 eps) z``, with norms averaged over the
    batch as in the reference, ``alpha_i = 1`` for VE and the schedule's ``alpha_i`` for VP and sub-VP.

    Args:
        snr: target signal-to-noise ratio r (0.16 for VE CIFAR-10 in the paper).
        n_steps: iterations per time step.
    """

    def __init__(self, snr: float = 0.16, n_steps: int = 1):
        _check_corrector_args(snr, n_steps)
        self.snr, self.n_steps = snr, n_steps

    def step(self, score_fn, sde, x, t, dt, generator=None):
        alpha = append_dims(sde.langevin_alpha(t, dt), x.ndim)
        x_mean = x
        for _ in range(self.n_steps):
            score = score_fn(x, t)
            z = noise_like(x, generator)
            score_norm = score.flatten(1).norm(dim=1).mean()
            noise_norm = z.flatten(1).norm(dim=1).mean()
            step_size = 2 * alpha * (self.snr * noise_norm / score_norm.clamp_min(1e-12)) ** 2
            x_mean = x + step_size * score
            x = x_mean + torch.sqrt(2 * step_size) * z
        return x, x_mean


class AnnealedLangevin(Corrector):
    """Annealed Langevin dynamics of NCSN (Song & Ermon 2019, Algorithm 1), step ``eps = 2 alpha_i (snr s(t))^2``.

    As a corrector with no predictor it is NCSN's sampler over the decreasing noise ladder of the grid.

    Args:
        snr: step scale r relative to the noise level.
        n_steps: Langevin iterations per noise level (100 in NCSN).
    """

    def __init__(self, snr: float = 0.16, n_steps: int = 1):
        _check_corrector_args(snr, n_steps)
        self.snr, self.n_steps = snr, n_steps

    def step(self, score_fn, sde, x, t, dt, generator=None):
        alpha = append_dims(sde.langevin_alpha(t, dt), x.ndim)
        std = append_dims(sde.marginal_std(t), x.ndim)
        step_size = 2 * alpha * (self.snr * std) ** 2
        x_mean = x
        for _ in range(self.n_steps):
            x_mean = x + step_size * score_fn(x, t)
            x = x_mean + torch.sqrt(2 * step_size) * noise_like(x, generator)
        return x, x_mean
