"""Sampling by integrating the probability-flow ODE (Song et al. 2021, Sec. 4.3, Eq. 13) with the one engine of
:mod:`scorelab.ops.flow`."""
from __future__ import annotations

import torch

from ..ops.flow import ADAPTIVE, FIXED, integrate, probability_flow
from ..sde import SDE
from .base import Callback, CountingScore, GridSampler, Project, ScoreFn, batch_time, initial_noise
from .grids import TimeGrid


class ODESampler(GridSampler):
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
                 atol: float = 1e-5, denoise: bool = False, grid: str | TimeGrid = "auto"):
        if method not in FIXED + ADAPTIVE:
            raise ValueError(f"unknown ODE method {method!r}: choose one of {FIXED + ADAPTIVE}")
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
        super().__init__(steps, eps, grid, denoise)
        self.method, self.rtol, self.atol = method, rtol, atol

    @torch.no_grad()
    def __call__(self, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...] | None = None,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, callback: Callback | None = None,
                 x_init: torch.Tensor | None = None, project: Project | None = None) -> tuple[torch.Tensor, int]:
        """Integrate from a prior sample at ``T`` to ``eps``; same arguments and returns as ``PCSampler``.

        ``project`` (applied after every step) needs a fixed-step method: an adaptive solver's steps are its own.
        """
        self.check_project(project)
        counted = CountingScore(score_fn)
        velocity = probability_flow(counted, sde)
        x = initial_noise(sde, shape, generator, device, dtype, x_init)
        if self.method in FIXED:
            ts = self.grid(self.steps, self.eps, sde.T, sde=sde)

            def on_step(i: int, t_next: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                if project is not None:
                    x = project(x, t_next)
                if callback is not None:
                    callback({"i": i, "t": float(ts[i + 1]), "x": x, "x_mean": x})
                return x

            x = integrate(velocity, x, ts, self.method, on_step=on_step)
        else:
            x = integrate(velocity, x, torch.tensor([sde.T, self.eps], dtype=torch.float64), self.method,
                          self.rtol, self.atol)
            if callback is not None:
                callback({"i": 0, "t": self.eps, "x": x, "x_mean": x})
        if self.denoise:
            t = batch_time(self.eps, x)
            x = sde.data_prediction(x, t, counted(x, t))
        return x, counted.nfe

    @property
    def supports_inpainting(self) -> bool:
        """Fixed-step methods apply ``project`` after every step; adaptive ones cannot."""
        return self.method in FIXED

    def inpainting_refusal(self) -> str:
        return (f"an adaptive solver chooses its own steps and rejects some; use a fixed-step method "
                f"({', '.join(FIXED)})")

    def describe(self) -> str:
        """``"probability-flow ODE, rk4, 100 steps"`` (adaptive methods: their tolerances)."""
        if self.method in FIXED:
            return f"probability-flow ODE, {self.method}, {self.steps} steps"
        return f"probability-flow ODE, {self.method} (rtol {self.rtol:g}, atol {self.atol:g})"

    def __repr__(self) -> str:
        return f"ODESampler(method={self.method!r}, steps={self.steps}, eps={self.eps})"
