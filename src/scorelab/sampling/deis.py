"""Adams–Bashforth in sigma space: DEIS's rho-AB and iPNDM (Zhang & Chen 2023, "Fast Sampling of Diffusion Models
with Exponential Integrator", arXiv 2204.13902, Sec. 4 and App. B)."""
from __future__ import annotations

import numpy as np

from .grids import TimeGrid
from .sigma_space import SigmaSampler

VARIANTS = ("rhoab", "ipndm")
# Classical constant-step Adams–Bashforth weights, newest slope first (iPNDM, Zhang & Chen 2023, Eq. 45).
_AB = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def lagrange_integrals(nodes: list[float], a: float, b: float) -> list[float]:
    """``int_a^b L_j(s) ds`` for the Lagrange basis polynomials ``L_j`` on ``nodes`` (exact Gauss–Legendre, float64).

    Args:
        nodes: distinct interpolation points, newest first.
        a, b: the integration interval (``b < a`` integrates backwards, as in a decreasing sigma grid).

    Returns:
        one weight per node: ``int_a^b P(s) ds = sum_j w_j P(nodes[j])`` for every polynomial of degree < len(nodes).
    """
    x, w = np.polynomial.legendre.leggauss(len(nodes) + 1)
    s = 0.5 * (b - a) * x + 0.5 * (a + b)
    weights = []
    for j, node in enumerate(nodes):
        basis = np.ones_like(s)
        for m, other in enumerate(nodes):
            if m != j:
                basis *= (s - other) / (node - other)
        weights.append(float(0.5 * (b - a) * np.dot(w, basis)))
    return weights


class DEISSampler(SigmaSampler):
    """Multistep Adams–Bashforth on ``dy/dsigma = eps(y, sigma) = (y - D) / sigma`` (Karras et al.'s ODE; Zhang &
    Chen 2023's rho-space, where the noise prediction varies slowly).

    * ``"rhoab"``: DEIS's rho-AB: the slope is extrapolated by the Lagrange polynomial through the last ``order``
      slopes at their actual sigmas and integrated exactly over the step.
    * ``"ipndm"``: iPNDM: classical constant-step Adams–Bashforth weights whatever the spacing, warm-started with
      lower orders (Zhang & Chen 2023, App. B; strong at 5-10 NFE in Zhou et al. 2024's comparisons).

    Step ``i`` uses order ``min(order, i + 1)``, lowered on the last steps with ``lower_order_final``.
    NFE: ``steps`` (+1 with ``denoise``).

    Args:
        steps: number of steps N.
        order: 1 to 4 (1 is DDIM in sigma space).
        variant: ``"rhoab"`` or ``"ipndm"``.
        lower_order_final: step ``i`` uses order ``min(order, i + 1, N - i)``.
        eps, grid, denoise: see :class:`~scorelab.sampling.sigma_space.SigmaSampler`.
    """

    def __init__(self, steps: int = 10, order: int = 3, variant: str = "rhoab", eps: float = 1e-3,
                 grid: str | TimeGrid = "edm", denoise: bool = True, lower_order_final: bool = False):
        super().__init__(steps, eps, grid, denoise)
        if order not in _AB:
            raise ValueError(f"order must be 1, 2, 3 or 4, got {order!r}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown DEIS variant {variant!r}: choose one of {VARIANTS}")
        self.order, self.variant, self.lower_order_final = order, variant, bool(lower_order_final)

    def solve(self, denoiser, path, y, generator, report):
        sigmas, slopes = [], []  # newest first
        for i in range(path.steps):
            sigma, sigma_next = path.sigmas[i], path.sigmas[i + 1]
            sigmas = ([sigma] + sigmas)[: self.order]
            slopes = ([(y - denoiser(y, path.ts[i])) / sigma] + slopes)[: self.order]
            k = min(self.order, len(slopes), path.steps - i if self.lower_order_final else self.order)
            if self.variant == "ipndm":
                weights = [(sigma_next - sigma) * c for c in _AB[k]]
            else:
                weights = lagrange_integrals(sigmas[:k], sigma, sigma_next)
            y = y + sum(w * s for w, s in zip(weights, slopes[:k], strict=True))
            y = report(i, y)
        return y

    def describe(self) -> str:
        name = f"DEIS rhoAB-{self.order}" if self.variant == "rhoab" else f"iPNDM-{self.order}"
        return f"{name}, {self.steps} steps"

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", order={self.order}, variant={self.variant!r})"
