"""Sampling by integrating the probability-flow ODE (Song et al. 2021, Sec. 4.3, Eq. 13)."""
from __future__ import annotations

import torch

from ..core.errors import UserError
from ..core.tensors import append_dims
from ..sde import SDE
from .base import Callback, CountingScore, Project, ScoreFn, batch_time, initial_noise
from .grids import TimeGrid, as_grid

FIXED = ("euler", "heun", "rk4")
ADAPTIVE = ("dopri5", "bosh3", "adaptive_heun", "dopri8")


def probability_flow(score_fn: ScoreFn, sde: SDE):
    """The ODE velocity ``dx/dt = f(x, t) - g(t)^2 s(x, t) / 2`` as a function ``(x, t [B]) -> [B, ...]``."""
    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return sde.reverse_drift(x, t, score_fn(x, t), probability_flow=True)
    return velocity


def fixed_step(velocity, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, method: str) -> torch.Tensor:
    """One explicit step of Euler (1 NFE), Heun (2 NFE, Karras et al. 2022, Alg. 1) or classic RK4 (4 NFE)."""
    h = append_dims(t_next - t, x.ndim)
    k1 = velocity(x, t)
    if method == "euler":
        return x + h * k1
    if method == "heun":
        k2 = velocity(x + h * k1, t_next)
        return x + h * (k1 + k2) / 2
    t_mid = (t + t_next) / 2
    k2 = velocity(x + h / 2 * k1, t_mid)
    k3 = velocity(x + h / 2 * k2, t_mid)
    k4 = velocity(x + h * k3, t_next)
    return x + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6


class ODESampler:
    """Probability-flow ODE sampler with fixed-step (Euler, Heun, RK4) or adaptive (torchdiffeq) solvers.

    The paper used RK45 with ``rtol = atol = 1e-5``; ``method="dopri5"`` is that solver, run in torch on the
    device (no scipy round-trip).

    Args:
        method: one of ``euler``, ``heun``, ``rk4`` (fixed grid of ``steps`` steps) or ``dopri5``, ``bosh3``,
            ``adaptive_heun``, ``dopri8`` (adaptive, ``rtol``/``atol``).
        steps: number of steps for fixed-step methods.
        eps: final time.
        rtol, atol: tolerances of adaptive methods.
        denoise: finish with one Tweedie denoising step ``x0 = (x + s^2 score) / a`` at ``eps`` (1 NFE).
        grid: time-grid kind or :class:`TimeGrid` for fixed-step methods (see :func:`time_grid`).
    """

    def __init__(self, method: str = "rk4", steps: int = 100, eps: float = 1e-3, rtol: float = 1e-5,
                 atol: float = 1e-5, denoise: bool = False, grid: str | TimeGrid = "uniform"):
        if method not in FIXED + ADAPTIVE:
            raise ValueError(f"unknown ODE method {method!r}: choose one of {FIXED + ADAPTIVE}")
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
        self.grid = as_grid(grid)
        self.grid.check(steps, eps)
        self.method, self.steps, self.eps, self.rtol, self.atol = method, steps, eps, rtol, atol
        self.denoise = denoise

    @torch.no_grad()
    def __call__(self, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...] | None = None,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, callback: Callback | None = None,
                 x_init: torch.Tensor | None = None, project: Project | None = None) -> tuple[torch.Tensor, int]:
        """Integrate from a prior sample at ``T`` to ``eps``; same arguments and returns as ``PCSampler``.

        ``project`` (applied after every step) needs a fixed-step method: an adaptive solver's steps are its own.
        """
        if project is not None and self.method not in FIXED:
            raise UserError(f"{self!r} cannot replace known values after each step: an adaptive solver chooses its "
                            f"own steps and rejects some; use a fixed-step method ({', '.join(FIXED)}) or another "
                            "sampler (e.g. sampler=dpmpp_2m_sde)")
        counted = CountingScore(score_fn)
        velocity = probability_flow(counted, sde)
        x = initial_noise(sde, shape, generator, device, dtype, x_init)
        if self.method in FIXED:
            ts = self.grid(self.steps, self.eps, sde.T, sde=sde)
            for i in range(self.steps):
                x = fixed_step(velocity, x, batch_time(ts[i], x), batch_time(ts[i + 1], x), self.method)
                if project is not None:
                    x = project(x, batch_time(ts[i + 1], x))
                if callback is not None:
                    callback({"i": i, "t": float(ts[i + 1]), "x": x, "x_mean": x})
        else:
            x = self._adaptive(velocity, x, sde.T, callback)
        if self.denoise:
            t = batch_time(self.eps, x)
            a, std = append_dims(sde.mean_coeff(t), x.ndim), append_dims(sde.marginal_std(t), x.ndim)
            x = (x + std**2 * counted(x, t)) / a
        return x, counted.nfe

    def _adaptive(self, velocity, x: torch.Tensor, T: float, callback: Callback | None) -> torch.Tensor:
        from torchdiffeq import odeint

        def rhs(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return velocity(x, batch_time(t, x))

        span = torch.tensor([T, self.eps], dtype=x.dtype, device=x.device)
        # step_t makes the solver land exactly on eps instead of stepping past it (t < 0 is outside the SDE)
        options = {"step_t": span}
        x = odeint(rhs, x, span, rtol=self.rtol, atol=self.atol, method=self.method, options=options)[-1]
        if callback is not None:
            callback({"i": 0, "t": self.eps, "x": x, "x_mean": x})
        return x

    def __repr__(self) -> str:
        return f"ODESampler(method={self.method!r}, steps={self.steps}, eps={self.eps})"
