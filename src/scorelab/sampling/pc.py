"""The predictor–corrector sampler (Song et al. 2021, Algorithm 1; docs/math.md §4)."""
from __future__ import annotations

import torch

from ..sde import SDE
from .base import Callback, CountingScore, GridSampler, Project, ScoreFn, batch_time, initial_noise
from .correctors import Corrector, NoCorrector
from .grids import TimeGrid
from .predictors import NoPredictor, Predictor


class PCSampler(GridSampler):
    """Predictor then corrector at every step of a decreasing time grid; the last step returns the noise-free mean.

    The corrector runs after every predictor step but the last, whose noise-free mean is returned (NFE
    ``N + (N - 1) k`` for k corrector steps); without a predictor (annealed Langevin) it runs at all N levels and
    the last corrector mean is returned.

    With ``NoCorrector`` this is a pure reverse-SDE sampler (Euler–Maruyama, reverse diffusion, ancestral);
    with ``NoPredictor`` and ``AnnealedLangevin`` it is NCSN's annealed Langevin dynamics.

    Args:
        predictor: a :class:`Predictor` (default reverse diffusion is the paper's choice).
        corrector: a :class:`Corrector` (default none).
        steps: number of time steps N.
        eps: final time of the grid (1e-3 VP/sub-VP, 1e-5 VE in the paper).
        denoise: return the last step's mean without its noise.
        grid: time-grid kind or :class:`TimeGrid` (see :func:`time_grid`).
    """

    def __init__(self, predictor: Predictor | None = None, corrector: Corrector | None = None, steps: int = 1000,
                 eps: float = 1e-3, denoise: bool = True, grid: str | TimeGrid = "auto"):
        self.predictor = predictor if predictor is not None else NoPredictor()
        self.corrector = corrector if corrector is not None else NoCorrector()
        if isinstance(self.predictor, NoPredictor) and isinstance(self.corrector, NoCorrector):
            raise ValueError("a sampler needs a predictor, a corrector or both; got neither")
        super().__init__(steps, eps, grid, denoise)

    @torch.no_grad()
    def __call__(self, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...] | None = None,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, callback: Callback | None = None,
                 x_init: torch.Tensor | None = None, project: Project | None = None) -> tuple[torch.Tensor, int]:
        """Draw samples (the arguments of :meth:`Sampler.__call__`); ``project`` is applied after every predictor
        step and after every corrector step (Song et al. 2021, App. I.2: replacing the known pixels when inpainting).
        """
        counted = CountingScore(score_fn)
        x = initial_noise(sde, shape, generator, device, dtype, x_init)
        ts = self.grid(self.steps, self.eps, sde.T, sde=sde)
        x_mean = x
        has_predictor = not isinstance(self.predictor, NoPredictor)
        has_corrector = not isinstance(self.corrector, NoCorrector)
        for i in range(self.steps):
            t, t_next = batch_time(ts[i], x), batch_time(ts[i + 1], x)
            x, x_mean = self.predictor.step(counted, sde, x, t, t_next, generator)
            if project is not None and has_predictor:
                x = project(x, t_next)
            # After the final predictor step the noise-free predictor mean is the output; a corrector there would
            # only add Langevin noise that denoising then strips, shrinking the spread by a step-independent amount.
            if not (has_predictor and i == self.steps - 1):
                x, x_mean = self.corrector.step(counted, sde, x, t_next, t - t_next, generator)
                if project is not None and has_corrector:
                    x = project(x, t_next)
            if callback is not None:
                callback({"i": i, "t": float(ts[i + 1]), "x": x, "x_mean": x_mean})
        return (x_mean if self.denoise else x), counted.nfe

    def describe(self) -> str:
        """``"PC: reverse diffusion + Langevin (snr 0.16), 1000 steps"``; a lone predictor or corrector is named
        with what is missing (``"Euler–Maruyama, no corrector, 1000 steps"``)."""
        predictor, corrector = self.predictor.describe(), self.corrector.describe()
        if isinstance(self.corrector, NoCorrector):
            return f"{predictor}, no corrector, {self.steps} steps"
        if isinstance(self.predictor, NoPredictor):
            return f"{corrector}, no predictor, {self.steps} steps"
        return f"PC: {predictor} + {corrector}, {self.steps} steps"

    def __repr__(self) -> str:
        return f"PCSampler({self.predictor}, {self.corrector}, steps={self.steps}, eps={self.eps})"
