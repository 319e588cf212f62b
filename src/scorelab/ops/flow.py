"""The probability-flow ODE ``dx/dt = f(x, t) - g(t)^2 s(x, t) / 2`` (Song et al. 2021, Sec. 4.3, Eq. 13), and the
one engine that integrates it: fixed-step (Euler, Heun, RK4) on a given time grid, or adaptive (torchdiffeq's
``dopri5`` = the paper's RK45, ``bosh3``, ``adaptive_heun``, ``dopri8``) between two times. Sampling, encoding and
decoding for interpolation, and likelihoods all integrate through :func:`integrate`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..core.tensors import append_dims
from ..sde import SDE, ScoreFn

FIXED = ("euler", "heun", "rk4")
ADAPTIVE = ("dopri5", "bosh3", "adaptive_heun", "dopri8")
METHODS = FIXED + ADAPTIVE


def batch_time(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Expand a scalar time to ``[B]`` in ``x``'s dtype and device."""
    return torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0]).clone()


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


def integrate(velocity: Callable[[Any, torch.Tensor], Any], state: Any, times: torch.Tensor, method: str,
              rtol: float = 1e-5, atol: float = 1e-5,
              on_step: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> Any:
    """Integrate ``d state / dt = velocity(state, t [B])`` from ``times[0]`` to ``times[-1]`` (either direction).

    Args:
        velocity: the right-hand side; ``state`` is a tensor ``[B, ...]`` or, for adaptive methods only, a tuple of
            them (e.g. the state and a log-density accumulator).
        state: the initial state.
        times: fixed-step methods step through every time of this grid; adaptive ones use its ends only and land
            exactly on the last (``step_t``, so an SDE's time never leaves ``[0, T]``).
        method: one of :data:`FIXED` or :data:`ADAPTIVE`.
        rtol, atol: tolerances of the adaptive methods.
        on_step: fixed-step only: ``(i, t_next [B], state) -> state`` after step ``i`` (projections, callbacks).

    Returns:
        The state at ``times[-1]``.
    """
    if method in FIXED:
        if not torch.is_tensor(state):
            raise ValueError(f"the fixed-step methods {FIXED} integrate one tensor; a tuple state (the state and a "
                             f"log-density) needs an adaptive method {ADAPTIVE}")
        t_next = batch_time(times[0], state)
        for i in range(len(times) - 1):
            t, t_next = t_next, batch_time(times[i + 1], state)
            state = fixed_step(velocity, state, t, t_next, method)
            if on_step is not None:
                state = on_step(i, t_next, state)
        return state
    if method not in ADAPTIVE:
        raise ValueError(f"unknown ODE method {method!r}: choose one of {METHODS}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    from torchdiffeq import odeint

    first = state if torch.is_tensor(state) else state[0]
    span = torch.tensor([float(times[0]), float(times[-1])], dtype=first.dtype, device=first.device)
    solution = odeint(lambda t, s: velocity(s, batch_time(t, first)), state, span, rtol=rtol, atol=atol,
                      method=method, options={"step_t": span})
    return solution[-1] if torch.is_tensor(solution) else tuple(part[-1] for part in solution)
