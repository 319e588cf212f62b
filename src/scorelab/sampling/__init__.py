"""Samplers: predictor–corrector over the reverse SDE, the probability-flow ODE and few-step solvers in sigma space.

All return ``(samples, nfe)`` and take a ``torch.Generator`` (or a ``PerSampleGenerator``) and a ``callback``. Build
one with ``PCSampler(EulerMaruyama(), Langevin(snr=0.16), steps=1000)``, ``ODESampler("rk4", steps=50)``,
``DPMSolverPP(steps=10, variant="3m")`` or ``DEISSampler(steps=10, order=4, variant="ipndm")``; time grids come
from :class:`TimeGrid` / :func:`time_grid`, outside the solvers.
"""
from ..ops.flow import fixed_step, probability_flow
from .base import CountingScore, GridSampler, Sampler
from .correctors import AnnealedLangevin, Corrector, Langevin, NoCorrector
from .ddim import DDIMSampler
from .deis import DEISSampler
from .dpm_solver import DPMSolverPP, UniPCSampler
from .edm import EDMSampler
from .grids import GRIDS, TimeGrid, time_grid
from .ode import ODESampler
from .pc import PCSampler
from .predictors import Ancestral, EulerMaruyama, NoPredictor, Predictor, ReverseDiffusion
from .sigma_space import Denoiser, SigmaSampler

__all__ = [
    "Ancestral", "AnnealedLangevin", "Corrector", "CountingScore", "DDIMSampler", "DEISSampler",
    "DPMSolverPP", "Denoiser", "EDMSampler", "EulerMaruyama", "GRIDS", "Langevin", "NoCorrector", "NoPredictor",
    "GridSampler", "ODESampler", "PCSampler", "Predictor", "ReverseDiffusion", "Sampler", "SigmaSampler", "TimeGrid",
    "UniPCSampler", "fixed_step", "probability_flow", "time_grid",
]
