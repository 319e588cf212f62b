"""The EDM sampler (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
arXiv 2206.00364): Heun's method in sigma space (Alg. 1) and its stochastic "churn" variant (Alg. 2)."""
from __future__ import annotations

import math

import torch

from .base import noise_like
from .grids import TimeGrid
from .sigma_space import SigmaSampler


class EDMSampler(SigmaSampler):
    """Heun's second-order method on ``dy/dsigma = (y - D(y, sigma)) / sigma`` with optional churn.

    With ``s_churn = 0`` this is Alg. 1 (deterministic); otherwise Alg. 2: before each step whose ``sigma_i`` lies in
    ``[s_tmin, s_tmax]`` the noise level is raised to ``sigma_hat = sigma_i (1 + gamma)``,
    ``gamma = min(s_churn / N, sqrt(2) - 1)``, by adding fresh noise of std ``s_noise sqrt(sigma_hat^2 - sigma_i^2)``,
    then the Heun step runs from ``sigma_hat``. ``sigma_hat`` is capped at ``sigma(T)``, the largest noise level the
    SDE (and a network trained on it) knows. Every step is a Heun step (2 NFE); Karras et al.'s final Euler step to
    ``sigma = 0`` is the ``denoise`` option (1 NFE), so their N-step sampler is ``steps = N - 1, denoise = True``
    with ``2 N - 1`` NFE. NFE: ``2 steps`` (+1 with ``denoise``).

    Args:
        steps: number of Heun steps N.
        s_churn: total churn ``S_churn >= 0`` (0: deterministic; the paper used 30-80 on ImageNet).
        s_tmin, s_tmax: the sigma range (in ``sigma = s / a`` units) where churn applies.
        s_noise: ``S_noise``, slightly above 1 compensates a denoiser's detail loss (1.003-1.007 in the paper).
        eps, grid, denoise: see :class:`~scorelab.sampling.sigma_space.SigmaSampler`.
    """

    def __init__(self, steps: int = 5, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                 s_noise: float = 1.0, eps: float = 1e-3, grid: str | TimeGrid = "edm", denoise: bool = True):
        super().__init__(steps, eps, grid, denoise)
        for name, value in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(s_tmax, (int, float)) and s_tmax >= s_tmin):
            raise ValueError(f"s_tmax must be a number >= s_tmin = {s_tmin}, got {s_tmax!r}")
        self.s_churn, self.s_noise = float(s_churn), float(s_noise)
        self.s_tmin, self.s_tmax = float(s_tmin), float(s_tmax)

    def _churn(self, sigma: float, sigma_cap: float) -> float:
        """``sigma_hat`` for a step starting at ``sigma`` (Alg. 2, lines 4-5)."""
        if self.s_churn == 0.0 or not self.s_tmin <= sigma <= self.s_tmax:
            return sigma
        gamma = min(self.s_churn / self.steps, math.sqrt(2.0) - 1.0)
        return min(sigma * (1.0 + gamma), max(sigma, sigma_cap))

    def solve(self, denoiser, path, y, generator, report):
        t_of_sigma = denoiser.sde.t_of_sigma
        for i in range(path.steps):
            sigma, sigma_next, t = path.sigmas[i], path.sigmas[i + 1], path.ts[i]
            sigma_hat = self._churn(sigma, path.sigmas[0])
            if sigma_hat > sigma:  # Alg. 2, line 6: move up to sigma_hat with fresh noise
                y = y + self.s_noise * math.sqrt(sigma_hat**2 - sigma**2) * noise_like(y, generator)
                t = float(t_of_sigma(torch.tensor(sigma_hat, dtype=torch.float64)))
            slope = (y - denoiser(y, t)) / sigma_hat  # Alg. 1, line 4
            y_euler = y + (sigma_next - sigma_hat) * slope
            slope_next = (y_euler - denoiser(y_euler, path.ts[i + 1])) / sigma_next  # line 7: Heun's correction
            y = y + (sigma_next - sigma_hat) * 0.5 * (slope + slope_next)
            y = report(i, y)
        return y

    def describe(self) -> str:
        churn = f", churn {self.s_churn:g}" if self.s_churn else ""
        return f"EDM Heun{churn}, {self.steps} steps"

    def __repr__(self) -> str:
        churn = f", s_churn={self.s_churn}" if self.s_churn else ""
        return super().__repr__()[:-1] + churn + ")"
