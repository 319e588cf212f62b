"""The sigma-space view shared by the few-step samplers (Karras et al. 2022, Sec. 3; Lu et al. 2022b, Sec. 3).

Every SDE in scorelab has the kernel ``x_t = a(t) x0 + s(t) z``. In ``y = x / a(t)`` it is a variance-exploding
process ``y = x0 + sigma z`` with ``sigma(t) = s(t) / a(t)``, and its probability-flow ODE reads

    dy / dsigma = (y - D(y, sigma)) / sigma,        equivalently   dy / dlambda = D - y   with lambda = -log sigma,

where ``D`` is Tweedie's denoiser (``SDE.data_prediction``). A sampler written against ``(y, sigma, D)`` therefore
serves VP, sub-VP and VE alike. Exponential integrators (DDIM, DPM-Solver++, UniPC) integrate the linear part
``-y`` exactly: ``y(lambda + h) = e^{-h} y(lambda) + int_0^h e^{-(h - u)} D(lambda + u) du``, and differ only in how
they approximate ``D`` on the step. This module holds what they share: the denoiser wrapper, the sampler skeleton
(grid, prior, NFE counting, callback, final denoising) and the weights ``phi_k`` of that integral.
"""
from __future__ import annotations

import abc
import math

import torch

from ..core.tensors import append_dims
from ..sde import SDE
from .base import Callback, CountingScore, GridSampler, Project, ScoreFn, batch_time, initial_noise
from .grids import TimeGrid


class Denoiser:
    """``D(y, t) = E[x0 | x_t = a(t) y]`` from a score function (each call is one NFE).

    Args:
        score_fn: ``(x [B, ...], t [B]) -> score [B, ...]``, usually a :class:`CountingScore`.
        sde: the forward SDE.
    """

    def __init__(self, score_fn: ScoreFn, sde: SDE):
        self.score_fn, self.sde = score_fn, sde

    def __call__(self, y: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """Denoise ``y [B, ...]`` (in sigma space) at the scalar time ``t``; returns ``[B, ...]``."""
        t = batch_time(t, y)
        x = append_dims(self.sde.mean_coeff(t), y.ndim) * y
        return self.sde.data_prediction(x, t, self.score_fn(x, t))


def phi(k: int, h: float) -> float:
    """``phi_k(h) = int_0^h e^{-(h - u)} u^{k-1} / (k-1)! du`` for ``k >= 1`` (Hochbruck & Ostermann 2010).

    ``phi_1 = 1 - e^{-h}``, ``phi_2 = h - 1 + e^{-h}``, ``phi_{k+1} = h^k / k! - phi_k``; a power series
    ``h^k sum_j (-h)^j / (k + j)!`` for ``h < 1`` avoids the recursion's cancellation.
    """
    if k < 1 or h < 0:
        raise ValueError(f"phi needs k >= 1 and h >= 0, got k={k}, h={h}")
    if h < 1.0:
        return h**k * sum((-h) ** j / math.factorial(k + j) for j in range(30))
    value = -math.expm1(-h)
    for n in range(1, k):
        value = h**n / math.factorial(n) - value
    return value


def taylor_weights(h: float, offsets: list[float]) -> list[float]:
    """Weights ``c_k`` with ``sum_k c_k (D(u_k) - D(0)) = int_0^h e^{-(h-u)} (D(u) - D(0)) du`` for every polynomial
    ``D`` of degree ``<= K`` (the exponential Adams weights; DPM-Solver++ and UniPC's ``vary_coeff`` form).

    The conditions ``sum_k c_k u_k^n / n! = phi_{n+1}(h)`` for ``n = 1..K`` (Lu et al. 2022b, Eq. 9 expanded
    in Taylor series) are solved in float64.

    Args:
        h: the step in log-SNR, ``lambda_next - lambda_0 > 0``.
        offsets: ``u_k = lambda_k - lambda_0`` of the K other points where D is known (negative: earlier points,
            ``h``: the end of the step).

    Returns:
        K floats.
    """
    if not offsets:
        return []
    n = torch.arange(1, len(offsets) + 1, dtype=torch.float64)
    u = torch.tensor(offsets, dtype=torch.float64)
    matrix = u[None, :] ** n[:, None] / torch.exp(torch.lgamma(n + 1))[:, None]
    rhs = torch.tensor([phi(int(k) + 1, h) for k in n], dtype=torch.float64)
    return torch.linalg.solve(matrix, rhs).tolist()


class SigmaPath:
    """A time grid and its noise levels ``sigma_i``, log-SNRs ``lambda_i`` and mean coefficients ``a_i`` (floats).

    Args:
        sde: the forward SDE.
        ts: the decreasing time grid ``[N + 1]`` (float64).
    """

    def __init__(self, sde: SDE, ts: torch.Tensor):
        ts = ts.to(torch.float64).cpu()
        self.ts = ts.tolist()
        self.sigmas = sde.sigma(ts).tolist()
        self.lambdas = [-math.log(s) for s in self.sigmas]
        self.a = sde.mean_coeff(ts).tolist()
        self.steps = len(self.ts) - 1


class SigmaSampler(GridSampler):
    """Skeleton of a sampler in sigma space: grid, prior, NFE count, callback and the optional final denoising.

    Subclasses implement :meth:`solve`, which moves ``y = x / a(T)`` along the grid and returns ``y`` at ``eps``,
    continuing after each step from what ``report`` returns (the state, changed by the caller's ``project`` if any).

    Args:
        steps: N, the number of grid steps (see each sampler for the NFE per step).
        eps: final time of the grid (1e-3 VP/sub-VP, 1e-5 VE).
        grid: time-grid kind or :class:`~scorelab.sampling.TimeGrid` (see :func:`~scorelab.sampling.time_grid`).
        denoise: finish with ``x0 = D(x, eps)`` (one more NFE): the first-order step from ``sigma(eps)`` to 0,
            as DPM-Solver's ``denoise_to_zero`` and the last step of Karras et al. 2022, Alg. 1. Without it the
            sample is the state ``x(eps)``.
    """

    def __init__(self, steps: int = 10, eps: float = 1e-3, grid: str | TimeGrid = "logsnr", denoise: bool = True):
        super().__init__(steps, eps, grid, denoise)

    @torch.no_grad()
    def __call__(self, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...] | None = None,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, callback: Callback | None = None,
                 x_init: torch.Tensor | None = None, project: Project | None = None) -> tuple[torch.Tensor, int]:
        """Draw samples (the arguments of :meth:`Sampler.__call__`; ``callback`` sees ``x`` in the SDE's own
        scale). ``project`` is applied to the state ``x = a(t) y`` after every step (Song et al. 2021, App. I.2);
        multistep solvers keep their history of denoiser outputs, which a change of the state leaves valid as data
        predictions at the earlier points.
        """
        counted = CountingScore(score_fn)
        denoiser = Denoiser(counted, sde)
        x = initial_noise(sde, shape, generator, device, dtype, x_init)
        path = SigmaPath(sde, self.time_grid(sde))

        def report(i: int, y: torch.Tensor, y_mean: torch.Tensor | None = None) -> torch.Tensor:
            a = path.a[i + 1]
            if project is not None:
                y = project(a * y, batch_time(path.ts[i + 1], y)) / a
            if callback is not None:
                callback({"i": i, "t": path.ts[i + 1], "x": a * y, "x_mean": a * (y if y_mean is None else y_mean)})
            return y

        y = self.solve(denoiser, path, x / path.a[0], generator, report)
        if self.denoise:
            return denoiser(y, path.ts[-1]), counted.nfe
        return path.a[-1] * y, counted.nfe

    def time_grid(self, sde: SDE) -> torch.Tensor:
        """The decreasing time grid ``[N + 1]`` this sampler steps along (float64)."""
        return self.grid(self.steps, self.eps, sde.T, sde=sde)

    @abc.abstractmethod
    def solve(self, denoiser: Denoiser, path: SigmaPath, y: torch.Tensor, generator, report) -> torch.Tensor:
        """Integrate ``y [B, ...]`` from ``sigma_0`` to ``sigma_N``; after step i, ``y = report(i, y, y_mean)``."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(steps={self.steps}, eps={self.eps}, grid={self.grid!r}, "
                f"denoise={self.denoise})")
