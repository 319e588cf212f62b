"""Time grids, built outside the solver so that grids and solvers swap freely (as in k-diffusion).

Every grid is a decreasing float64 tensor ``t_0 = T > t_1 > ... > t_N = eps``. The noise-level grids are defined
on ``sigma(t) = s(t) / a(t)`` (the sigma-space view of any linear SDE, Karras et al. 2022, Sec. 3) and mapped back
to time with ``sde.t_of_sigma``, so one definition serves VP, sub-VP and VE.
"""
from __future__ import annotations

import math

import torch

GRIDS = ("auto", "uniform", "quadratic", "logsnr", "edm")
SIGMA_GRIDS = ("logsnr", "edm")
_REMOVED = {
    "log_std": "the 'log_std' grid (uniform in log s(t)) was removed: for VP and sub-VP s(t) saturates near 1, so "
               "its first step jumped from t = 1 to t = 0.22 at N = 10 and Euler-Maruyama lost a whole mode; use "
               "'logsnr' (uniform in log(a/s), identical to log_std for VE) or 'edm'",
}


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


def _positive(name: str, value) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def check_grid(steps: int, eps: float, kind: str, T: float = 1.0, rho: float = 7.0,
               sigma_min: float | None = None, sigma_max: float | None = None) -> None:
    """Validate the arguments of :func:`time_grid` without building it (samplers call this in ``__init__``).

    Raises:
        ValueError: naming the offending argument.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    check_eps(eps, T)
    _positive("rho", rho)
    if kind in _REMOVED:
        raise ValueError(_REMOVED[kind])
    if kind not in GRIDS:
        raise ValueError(f"unknown grid kind {kind!r}: choose one of {GRIDS}")
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if value is not None:
            if kind not in SIGMA_GRIDS:
                raise ValueError(f"{name} only applies to the sigma grids {SIGMA_GRIDS}, not to {kind!r}")
            _positive(name, value)
    if sigma_min is not None and sigma_max is not None and sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be smaller than sigma_max, got {sigma_min} >= {sigma_max}")


def time_grid(steps: int, eps: float = 1e-3, T: float = 1.0, kind: str = "uniform", sde=None,
              device: torch.device | str | None = None, rho: float = 7.0, sigma_min: float | None = None,
              sigma_max: float | None = None) -> torch.Tensor:
    """A decreasing time grid ``t_0 = T > t_1 > ... > t_N = eps`` with exact end points.

    Kinds:

    * ``"auto"``: the SDE's ``preferred_grid``: ``"uniform"`` for VP, sub-VP, VE and the rectified-flow path,
      ``"edm"`` for EDM's ``sigma(t) = t`` process, where uniform steps in t are uniform in sigma and spend every step
      at large noise (without an SDE, ``"uniform"``).
    * ``"uniform"``: uniform in t (Song et al. 2021).
    * ``"quadratic"``: uniform in ``sqrt(t - eps)``, denser near eps (DDIM's quadratic schedule, Song et al. 2021a).
    * ``"logsnr"``: uniform in ``lambda = log(a/s) = -log sigma`` (DPM-Solver's ``logSNR`` grid, Lu et al. 2022a).
    * ``"edm"``: uniform in ``sigma^(1/rho)`` (Karras et al. 2022, Eq. 5).

    The sigma grids span ``[sigma(eps), sigma(T)]``. ``sigma_min``/``sigma_max`` narrow the range the points are
    spaced over (Karras et al.'s ``sigma_min``, ``sigma_max``) while the end points stay at ``T`` and ``eps``: the
    first step then jumps from ``sigma(T)`` to ``sigma_max`` (the prior is still drawn at ``T``), the last from
    ``sigma_min`` to ``sigma(eps)``, and the other steps go where the data's structure is resolved.

    Args:
        steps: N, the number of steps (the grid has N + 1 points).
        eps: the final time (1e-3 for VP sampling, 1e-5 for VE in the paper).
        T: the initial time.
        kind: one of :data:`GRIDS`.
        sde: the SDE, needed by ``"logsnr"`` and ``"edm"`` (its ``sigma`` and ``t_of_sigma``).
        device: where the grid lives.
        rho: the exponent of the ``"edm"`` grid (7 in the paper; 1 is uniform in sigma, large rho tends to logsnr).
        sigma_min, sigma_max: optional range of the spaced points (sigma grids only).

    Returns:
        float64 tensor ``[N + 1]``.
    """
    check_grid(steps, eps, kind, T, rho, sigma_min, sigma_max)
    if kind == "auto":
        kind = getattr(sde, "preferred_grid", "uniform") if sde is not None else "uniform"
    if kind == "uniform":
        grid = T + (eps - T) * torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    elif kind == "quadratic":
        grid = eps + (T - eps) * (1.0 - torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)) ** 2
    else:
        grid = _sigma_grid(kind, steps, eps, T, sde, rho, sigma_min, sigma_max)
    grid[0], grid[-1] = T, eps
    return grid.to(device)


def _sigma_grid(kind: str, steps: int, eps: float, T: float, sde, rho: float, sigma_min: float | None,
                sigma_max: float | None) -> torch.Tensor:
    """The ``"logsnr"`` and ``"edm"`` grids: spaced in a function of ``sigma(t)``, mapped to t by ``t_of_sigma``."""
    if sde is None:
        raise ValueError(f"time_grid(kind={kind!r}) needs the sde")
    lo, hi = sde.sigma(torch.tensor([eps, T], dtype=torch.float64)).tolist()
    jump_in = sigma_max is not None and sigma_max < hi
    jump_out = sigma_min is not None and sigma_min > lo
    hi, lo = (sigma_max if jump_in else hi), (sigma_min if jump_out else lo)
    if lo >= hi:
        raise ValueError(f"the sigma range [{lo:g}, {hi:g}] of the grid is empty for {sde!r} on [{eps}, {T}]")
    spaced = steps - int(jump_in) - int(jump_out)  # intervals between the spaced points
    if spaced < 1:
        raise ValueError(f"steps = {steps} is too few for a grid that jumps to sigma_max and from sigma_min")
    u = torch.linspace(0.0, 1.0, spaced + 1, dtype=torch.float64)
    if kind == "logsnr":
        sigmas = torch.exp(math.log(hi) + (math.log(lo) - math.log(hi)) * u)
    else:
        sigmas = (hi ** (1.0 / rho) + (lo ** (1.0 / rho) - hi ** (1.0 / rho)) * u) ** rho
    grid = sde.t_of_sigma(sigmas).to(torch.float64)
    first, last = torch.tensor([T], dtype=torch.float64), torch.tensor([eps], dtype=torch.float64)
    return torch.cat([first] * jump_in + [grid] + [last] * jump_out)


class TimeGrid:
    """A grid recipe, independent of the solver: ``TimeGrid("edm", rho=7)(steps, eps, T, sde) -> [N + 1]``.

    Every sampler takes one as ``grid=`` (or just its kind as a string). From a config::

        grid: {_target_: scorelab.sampling.TimeGrid, kind: logsnr, sigma_min: 0.1, sigma_max: 8.0}

    Args:
        kind: one of :data:`GRIDS`.
        rho: exponent of the ``"edm"`` grid.
        sigma_min, sigma_max: optional sigma range of the spaced points (sigma grids; see :func:`time_grid`).
    """

    def __init__(self, kind: str = "logsnr", rho: float = 7.0, sigma_min: float | None = None,
                 sigma_max: float | None = None):
        check_grid(1, 1e-3, kind, 1.0, rho, sigma_min, sigma_max)
        self.kind, self.rho, self.sigma_min, self.sigma_max = kind, float(rho), sigma_min, sigma_max

    def __call__(self, steps: int, eps: float, T: float = 1.0, sde=None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        """The grid ``[steps + 1]`` from ``T`` to ``eps`` (float64)."""
        return time_grid(steps, eps, T, self.kind, sde=sde, device=device, rho=self.rho, sigma_min=self.sigma_min,
                         sigma_max=self.sigma_max)

    def check(self, steps: int, eps: float) -> None:
        """Validate ``steps`` and ``eps`` for this grid (``ValueError`` naming the argument)."""
        check_grid(steps, eps, self.kind, 1.0, self.rho, self.sigma_min, self.sigma_max)

    def _key(self) -> tuple:
        return self.kind, self.rho if self.kind == "edm" else None, self.sigma_min, self.sigma_max

    def __eq__(self, other) -> bool:
        """Grids are recipes: two with the same kind and parameters build the same points."""
        return type(other) is type(self) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in (("rho", self.rho if self.kind == "edm" else None),
                                                   ("sigma_min", self.sigma_min), ("sigma_max", self.sigma_max))
                        if v is not None)
        return f"TimeGrid({self.kind!r}{extra})"


def as_grid(grid: str | TimeGrid) -> TimeGrid:
    """Accept a grid kind (``"uniform"``, ...) or a :class:`TimeGrid`; return a :class:`TimeGrid`."""
    if isinstance(grid, TimeGrid):
        return grid
    if isinstance(grid, str):
        return TimeGrid(grid)
    raise ValueError(f"grid must be a grid kind {GRIDS} or a TimeGrid, got {grid!r}")
