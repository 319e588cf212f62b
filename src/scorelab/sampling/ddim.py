"""DDIM (Song, Meng & Ermon 2021a, "Denoising Diffusion Implicit Models", Eq. 12), written in sigma space."""
from __future__ import annotations

import math

from .base import noise_like
from .grids import TimeGrid
from .sigma_space import SigmaSampler


class DDIMSampler(SigmaSampler):
    """DDIM with stochasticity ``eta``: ``eta = 0`` is deterministic (first-order solver of the probability-flow ODE,
    = DPM-Solver++(1)), ``eta = 1`` is ancestral sampling of the same chain (DDPM's posterior).

    In ``y = x / a`` with ``sigma = s / a`` one step from ``sigma`` to ``sigma'`` is (Song et al. 2021a, Eq. 12 and 16,
    divided by ``a(t')``)::

        c  = eta * sigma' * sqrt(1 - sigma'^2 / sigma^2)
        y' = D + sqrt(sigma'^2 - c^2) * (y - D) / sigma + c * z,     D = D(y, sigma),  z ~ N(0, I)

    which is the same formula for VP (DDIM's own case), sub-VP and VE. NFE: ``steps`` (+1 with ``denoise``).

    Args:
        steps: number of steps N.
        eta: ``>= 0``; 0 deterministic, 1 the DDPM posterior variance, in between interpolates.
        eps, grid, denoise: see :class:`~scorelab.sampling.sigma_space.SigmaSampler`.
    """

    def __init__(self, steps: int = 10, eta: float = 0.0, eps: float = 1e-3, grid: str | TimeGrid = "logsnr",
                 denoise: bool = True):
        super().__init__(steps, eps, grid, denoise)
        if not (isinstance(eta, (int, float)) and math.isfinite(eta) and 0.0 <= eta <= 1.0):
            raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
        self.eta = float(eta)

    def solve(self, denoiser, path, y, generator, report):
        for i in range(path.steps):
            sigma, sigma_next = path.sigmas[i], path.sigmas[i + 1]
            d = denoiser(y, path.ts[i])
            c = self.eta * sigma_next * math.sqrt(max(0.0, 1.0 - (sigma_next / sigma) ** 2))
            y_mean = d + math.sqrt(sigma_next**2 - c**2) / sigma * (y - d)
            y = y_mean + c * noise_like(y, generator) if c > 0 else y_mean
            y = report(i, y, y_mean)
        return y

    def describe(self) -> str:
        return f"DDIM (eta {self.eta:g}), {self.steps} steps"

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", eta={self.eta})"
