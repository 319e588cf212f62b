"""What every sampler shares: time grids, NFE counting and the callback contract."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..core.rng import sample_noise
from ..ops.flow import batch_time  # noqa: F401  (re-exported: the samplers take it from here)
from .grids import GRIDS, check_eps, time_grid  # noqa: F401  (re-exported: the grids used to live here)

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]
# ``project(x [B, ...], t [B]) -> x [B, ...]``: a map applied to the state after every step (e.g. replacing known
# pixels, :mod:`scorelab.tasks.conditional`); the sampler continues from what it returns.
Project = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class CountingScore:
    """Wrap a score function and count its (batched) evaluations: the honest NFE."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn, self.nfe = score_fn, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.score_fn(x, t)


def initial_noise(sde, shape, generator, device, dtype, x_init):
    """The caller's initial state if given, else a prior sample ``x(T)``."""
    if x_init is not None:
        return x_init
    return sde.prior_sampling(tuple(shape), generator=generator, device=device, dtype=dtype)


def noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``z ~ N(0, I)`` shaped like ``x``; drawn on the generator's device and moved to ``x``'s."""
    return sample_noise(x.shape, x, generator)
