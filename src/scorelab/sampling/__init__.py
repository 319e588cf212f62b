"""Samplers: predictor–corrector over the reverse SDE and the probability-flow ODE.

Both return ``(samples, nfe)`` and take a ``torch.Generator`` and a ``callback``. Build one with
``PCSampler(EulerMaruyama(), Langevin(snr=0.16), steps=1000)`` or ``ODESampler("rk4", steps=50)``.
"""
from .base import CountingScore, time_grid
from .correctors import CORRECTORS, AnnealedLangevin, Corrector, Langevin, NoCorrector
from .ode import ODESampler, fixed_step, probability_flow
from .pc import PCSampler
from .predictors import PREDICTORS, Ancestral, EulerMaruyama, NoPredictor, Predictor, ReverseDiffusion

__all__ = [
    "Ancestral", "AnnealedLangevin", "CORRECTORS", "Corrector", "CountingScore", "EulerMaruyama", "Langevin",
    "NoCorrector", "NoPredictor", "ODESampler", "PCSampler", "PREDICTORS", "Predictor", "ReverseDiffusion",
    "fixed_step", "probability_flow", "time_grid",
]
