"""What every sampler shares: time grids, NFE counting and the callback contract."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..utils import sample_noise

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]
GRIDS = ("uniform", "quadratic", "log_std")


def check_eps(eps: float, T: float = 1.0) -> None:
    """Refuse a smallest time outside ``(0, T)``.

    At ``t = 0`` VP and sub-VP have ``s(0) = 0``, and every score parameterisation (``-eps_theta / s(t)``, the loss
    target ``z / s(t)``) divides by it.

    Args:
        eps: the smallest time a sampler, grid or likelihood integration reaches.
        T: the SDE's end time.

    Raises:
        ValueError: ``eps`` is not a number in ``(0, T)``.
    """
    try:
        value = float(eps)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value < T:
        raise ValueError(f"eps must lie in (0, T={T}), got {eps!r}: s(0) = 0 for VP/sub-VP and the score divides by "
                         "s(t) (the paper uses 1e-3 for sampling, 1e-5 for training and likelihoods)")


def time_grid(steps: int, eps: float = 1e-3, T: float = 1.0, kind: str = "uniform", sde=None,
              device: torch.device | str | None = None) -> torch.Tensor:
    """A decreasing time grid ``t_0 = T > t_1 > ... > t_N = eps`` built outside the solver (as k-diffusion does).

    Args:
        steps: N, the number of steps (the grid has N + 1 points).
        eps: the final time, in ``(0, T)`` (1e-3 for VP sampling, 1e-5 for VE in the paper).
        T: the initial time.
        kind: ``"uniform"`` in t, ``"quadratic"`` (denser near eps, as in DDIM's quadratic schedule) or
            ``"log_std"`` (uniform in ``log s(t)``; needs ``sde``).
        sde: the SDE, for ``"log_std"``.

    Returns:
        float64 tensor ``[N + 1]``.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    check_eps(eps, T)
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64, device=device)
    if kind == "uniform":
        return T + (eps - T) * u
    if kind == "quadratic":
        return eps + (T - eps) * (1.0 - u) ** 2
    if kind == "log_std":
        if sde is None:
            raise ValueError("time_grid(kind='log_std') needs the sde")
        lo, hi = sde.marginal_std(torch.tensor([eps, T], dtype=torch.float64)).log()
        target = hi + (lo - hi) * u
        fine = torch.linspace(T, eps, 100_001, dtype=torch.float64)  # monotone: invert by interpolation
        log_std = sde.marginal_std(fine).log()
        idx = torch.searchsorted(-log_std, -target).clamp(1, fine.numel() - 1)
        w = (target - log_std[idx - 1]) / (log_std[idx] - log_std[idx - 1])
        grid = fine[idx - 1] + w * (fine[idx] - fine[idx - 1])
        grid[0], grid[-1] = T, eps
        return grid.to(device)
    raise ValueError(f"unknown grid kind {kind!r}: choose one of {GRIDS}")


class CountingScore:
    """Wrap a score function and count its (batched) evaluations: the honest NFE."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn, self.nfe = score_fn, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.score_fn(x, t)


def batch_time(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Expand a scalar time to ``[B]`` in ``x``'s dtype and device."""
    return torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0]).clone()


def initial_noise(sde, shape, generator, device, dtype, x_init):
    """The caller's initial state if given, else a prior sample ``x(T)``."""
    if x_init is not None:
        return x_init
    return sde.prior_sampling(tuple(shape), generator=generator, device=device, dtype=dtype)


def noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``z ~ N(0, I)`` shaped like ``x``; drawn on the generator's device and moved to ``x``'s."""
    return sample_noise(x.shape, x, generator)
