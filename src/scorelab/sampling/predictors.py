"""Predictors for the reverse SDE: one step from ``t`` to ``t_next < t`` (Song et al. 2021, Sec. 4.2).

Every predictor shares one contract, ``step(score_fn, sde, x, t, t_next, generator) -> (x, x_mean)``, where
``x_mean`` is the step without its fresh noise. ``t`` and ``t_next`` are ``[B]`` tensors.
"""
from __future__ import annotations

import abc

import torch

from ..core.tensors import append_dims
from ..sde import SDE
from .base import ScoreFn, noise_like


class Predictor(abc.ABC):
    """Base predictor; ``step`` returns ``(x, x_mean)``; ``label`` names it in titles."""

    label = ""

    @abc.abstractmethod
    def step(self, score_fn: ScoreFn, sde: SDE, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance ``x [B, ...]`` from ``t [B]`` to ``t_next [B]``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def describe(self) -> str:
        """The predictor in words (``label``, else the class name)."""
        return self.label or type(self).__name__


class NoPredictor(Predictor):
    """The identity predictor: time jumps to ``t_next`` and the corrector does the work (NCSN's annealed Langevin)."""

    label = "no predictor"

    def step(self, score_fn, sde, x, t, t_next, generator=None):
        return x, x


class EulerMaruyama(Predictor):
    """Euler–Maruyama on the reverse SDE (docs/math.md §4; Song et al. 2021, Eq. 6):
    ``x <- x - [f - g^2 s] |dt| + g sqrt(|dt|) z``."""

    label = "Euler–Maruyama"

    def step(self, score_fn, sde, x, t, t_next, generator=None):
        dt = append_dims(t - t_next, x.ndim)  # > 0
        drift = sde.reverse_drift(x, t, score_fn(x, t))
        _, diffusion = sde.sde(x, t)
        x_mean = x - drift * dt
        return x_mean + append_dims(diffusion, x.ndim) * dt.sqrt() * noise_like(x, generator), x_mean


class ReverseDiffusion(Predictor):
    """Reverse-diffusion predictor from the SDE's own discretisation (Song et al. 2021, Eq. 46):
    ``x <- x - f_i + G_i^2 s + G_i z``."""

    label = "reverse diffusion"

    def step(self, score_fn, sde, x, t, t_next, generator=None):
        f, G = sde.reverse(score_fn).discretize(x, t, t_next)
        x_mean = x - f
        return x_mean + append_dims(G, x.ndim) * noise_like(x, generator), x_mean


class Ancestral(Predictor):
    """Ancestral sampling of the DDPM (VP) or SMLD (VE) chain (Ho et al. 2020, Alg. 2; Song et al. 2021, Eq. 47).

    Undefined for sub-VP, which has no discrete Markov chain: the SDE raises a ``ValueError`` saying so.
    """

    label = "ancestral sampling"

    def step(self, score_fn, sde, x, t, t_next, generator=None):
        return sde.ancestral_step(x, t, t_next, score_fn(x, t), noise_like(x, generator))
