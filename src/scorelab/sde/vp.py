"""The variance-preserving family: ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw`` for any schedule ``beta(t)``, and
the sub-VP SDE of the linear schedule (Song et al. 2021, Eq. 11 and 12).

A VP SDE is fixed by its ``beta(t)`` and ``B(t) = int_0^t beta``: :class:`VPFamily` derives everything else from
them (the kernel ``a(t) = exp(-B/2)``, ``s(t) = sqrt(1 - exp(-B))``, the sigma-space view, the exact discretisation
between two grid times, DDPM's ancestral step and the Langevin step size), so a new schedule is one class with
``beta`` and ``integral`` (and, optionally, closed forms that are more precise than the generic ones).
"""
from __future__ import annotations

import abc
import math

import torch

from ..core.tensors import append_dims
from .base import SDE, check_positive


def ddpm_alphas_cumprod(num_steps: int, beta_min: float = 0.1, beta_max: float = 20.0) -> torch.Tensor:
    """DDPM's ``alpha_bar_i = prod_{j<=i} (1 - beta_j)``, ``beta_j = linspace(beta_min/N, beta_max/N, N)``.

    With the defaults this is Ho et al. 2020's schedule (``beta`` from 1e-4 to 0.02 for N = 1000); as
    ``N -> inf``, ``alpha_bar_i -> a(t_i)^2`` of the VP SDE at ``t_i = (i + 1) / N`` (Song et al. 2021, App. B).

    Returns:
        ``[N]`` float64 tensor.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    betas = torch.linspace(beta_min / num_steps, beta_max / num_steps, num_steps, dtype=torch.float64)
    if (betas >= 1).any():
        raise ValueError(f"discrete beta_i exceed 1 for num_steps={num_steps} < beta_max={beta_max}; use more steps")
    return torch.cumprod(1.0 - betas, dim=0)


class VPFamily(SDE):
    """A variance-preserving SDE ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw`` (Song et al. 2021, Eq. 11): the
    continuous limit of a DDPM chain (Ho et al. 2020). Prior ``N(0, I)``.

    Subclasses give :meth:`beta` and :meth:`integral` ``B(t) = int_0^t beta(u) du``; the rest follows.
    """

    @abc.abstractmethod
    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """``beta(t)``, shape ``[B]``."""

    @abc.abstractmethod
    def integral(self, t: torch.Tensor) -> torch.Tensor:
        """``B(t) = int_0^t beta(u) du``, shape ``[B]``."""

    @property
    def prior_std(self) -> float:
        return 1.0

    def sde(self, x, t):
        beta = self.beta(t)
        return -0.5 * append_dims(beta, x.ndim) * x, beta.sqrt()

    def mean_coeff(self, t):
        """``a(t) = exp(-B(t) / 2)``."""
        return torch.exp(-0.5 * self.integral(t))

    def marginal_std(self, t):
        """``s(t) = sqrt(1 - exp(-B(t)))``, with ``expm1`` so that small t keeps full relative precision."""
        return torch.sqrt(-torch.expm1(-self.integral(t)))

    def sigma(self, t):
        """``sigma(t) = s / a = sqrt(exp(B(t)) - 1)``."""
        return torch.sqrt(torch.expm1(self.integral(t)))

    def step_alpha(self, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """``alpha_i = a(t)^2 / a(t_next)^2 = exp(-(B(t) - B(t_next)))``, in (0, 1) on any grid (docs/math.md §4)."""
        return torch.exp(-(self.integral(t) - self.integral(t_next)))

    def step_beta(self, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """``beta_i = 1 - alpha_i``, computed with ``expm1`` so fine grids keep full precision."""
        return -torch.expm1(-(self.integral(t) - self.integral(t_next)))

    def discretize(self, x, t, t_next):
        """The DDPM chain on an arbitrary grid: ``f_i = (sqrt(alpha_i) - 1) x``, ``G_i = sqrt(1 - alpha_i)``.

        ``alpha_i`` comes from the continuous schedule (docs/math.md §4), so ``beta_i = 1 - alpha_i`` stays in
        (0, 1) at any step count, unlike the reference's ``linspace(beta_min/N, beta_max/N, N)``.
        """
        alpha = self.step_alpha(t, t_next)
        return append_dims(alpha.sqrt() - 1.0, x.ndim) * x, self.step_beta(t, t_next).sqrt()

    def ancestral_step(self, x, t, t_next, score, z):
        """DDPM ancestral step ``x' = (x + beta_i score) / sqrt(alpha_i) + sqrt(beta_i) z`` (Ho et al. 2020, Alg. 2)."""
        alpha = append_dims(self.step_alpha(t, t_next), x.ndim)
        beta = append_dims(self.step_beta(t, t_next), x.ndim)
        x_mean = (x + beta * score) / alpha.sqrt()
        return x_mean + beta.sqrt() * z, x_mean

    def langevin_alpha(self, t, dt):
        """``alpha_i = exp(-beta(t) dt)``, the continuous version of DDPM's ``1 - beta_i``."""
        return torch.exp(-self.beta(t) * dt)


class LinearBeta:
    """The linear schedule ``beta(t) = beta_min + t (beta_max - beta_min)`` of VP and sub-VP."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        check_positive(beta_min=beta_min, beta_max=beta_max)
        if beta_min >= beta_max:
            raise ValueError(f"beta_min must be smaller than beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    @property
    def prior_std(self) -> float:
        """Both VP and sub-VP end at ``N(0, I)``."""
        return 1.0

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """``beta(t)``, shape ``[B]``."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral(self, t: torch.Tensor) -> torch.Tensor:
        """``B(t) = int_0^t beta(u) du = beta_min t + t^2 (beta_max - beta_min) / 2``, shape ``[B]``."""
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``a(t) = exp(-B(t) / 2)``."""
        return torch.exp(-0.5 * self.integral(t))

    def time_of_integral(self, integral: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`integral`: the positive root of ``beta_min t + t^2 (beta_max - beta_min) / 2 = B``,
        written as ``2 B / (beta_min + sqrt(beta_min^2 + 2 (beta_max - beta_min) B))`` to keep precision at small B."""
        root = torch.sqrt(self.beta_min**2 + 2.0 * (self.beta_max - self.beta_min) * integral)
        return 2.0 * integral / (self.beta_min + root)


class VPSDE(LinearBeta, VPFamily):
    """Variance-preserving SDE with the linear schedule (Song et al. 2021, Eq. 11): the continuous limit of DDPM
    (Ho et al. 2020). Prior ``N(0, I)``.

    Args:
        beta_min: ``beta(0) > 0`` (0.1 in the paper).
        beta_max: ``beta(1) > beta_min`` (20 in the paper).
    """

    def t_of_sigma(self, sigma):
        """Closed form: ``B(t) = log(1 + sigma^2)``, then :meth:`time_of_integral`."""
        return self.time_of_integral(torch.log1p(torch.as_tensor(sigma) ** 2))

    def ddpm_beta_range(self) -> tuple[float, float]:
        """VP is the limit of DDPM's chain with ``beta_i = linspace(beta_min / N, beta_max / N, N)``."""
        return self.beta_min, self.beta_max


class SubVPSDE(LinearBeta, SDE):
    """Sub-VP SDE ``dx = -beta x / 2 dt + sqrt(beta (1 - exp(-2 B(t)))) dw`` (Song et al. 2021, Eq. 12).

    Its kernel variance ``(1 - exp(-B))^2`` is below the VP one at every t. Prior ``N(0, I)``.

    Args:
        beta_min: ``beta(0) > 0``.
        beta_max: ``beta(1) > beta_min``.
    """

    def sde(self, x, t):
        beta = self.beta(t)
        discount = -torch.expm1(-2.0 * self.integral(t))
        return -0.5 * append_dims(beta, x.ndim) * x, torch.sqrt(beta * discount)

    def marginal_std(self, t):
        return -torch.expm1(-self.integral(t))

    def sigma(self, t):
        """``sigma(t) = (1 - exp(-B)) / exp(-B / 2) = 2 sinh(B(t) / 2)``."""
        return 2.0 * torch.sinh(0.5 * self.integral(t))

    def t_of_sigma(self, sigma):
        """Closed form: ``B(t) = 2 asinh(sigma / 2)``, then :meth:`time_of_integral`."""
        return self.time_of_integral(2.0 * torch.asinh(0.5 * torch.as_tensor(sigma)))


class CosineVPSDE(VPFamily):
    """VP SDE with the cosine schedule of improved DDPM (Nichol & Dhariwal 2021, Eq. 17; docs/cosine_and_vlb.md).

    ``alpha_bar(t) = f(t) / f(0)`` with ``f(t) = cos^2(theta(t))``, ``theta(t) = (t + s) / (1 + s) * pi / 2``, so
    ``a(t) = cos theta(t) / cos theta(0)``, ``s(t) = sqrt(1 - a(t)^2)`` and
    ``beta(t) = -d log alpha_bar / dt = pi / (1 + s) * tan theta(t)``; the SDE is VP's
    ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw`` with this ``beta``. Prior ``N(0, I)``.

    ``beta(t) -> inf`` and ``a(t) -> 0`` as ``t -> 1``, where ``sigma(t) = s / a`` is infinite, so the continuous
    process stops at ``T < 1``: the default ``T = 0.9946`` (DPM-Solver's choice for this schedule, Lu et al. 2022)
    has ``alpha_bar(T) = 7.1e-5`` (VP's ``a(1)^2`` is 4.3e-5), ``sigma(T) = 119`` and ``beta(T) = 370``. The
    discrete chain (:meth:`ddpm_alphas_cumprod`) is the paper's, on ``t = i / N`` up to 1, with ``beta_i`` clipped
    at ``max_beta``.

    Args:
        s: the offset ``s > 0`` keeping ``beta`` away from 0 near ``t = 0`` (0.008 in the paper).
        T: the end time of the continuous process, in ``(0, 1)``.
        max_beta: the clip of the discrete chain's ``beta_i``, in ``(0, 1)`` (0.999 in the paper).
    """

    def __init__(self, s: float = 0.008, T: float = 0.9946, max_beta: float = 0.999):
        check_positive(s=s)
        for name, value in (("T", T), ("max_beta", max_beta)):
            if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
                raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
        self.s, self.T, self.max_beta = float(s), float(T), float(max_beta)
        self._theta0 = self.s / (1.0 + self.s) * math.pi / 2

    def _dtheta(self, t: torch.Tensor) -> torch.Tensor:
        """``theta(t) - theta(0) = t / (1 + s) * pi / 2``: differences of angles keep precision at small t."""
        return t * (math.pi / (2.0 * (1.0 + self.s)))

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """``beta(t) = pi / (1 + s) * tan theta(t)``, shape ``[B]``."""
        return math.pi / (1.0 + self.s) * torch.tan(self._theta0 + self._dtheta(t))

    def integral(self, t: torch.Tensor) -> torch.Tensor:
        """``B(t) = -log alpha_bar(t) = -2 log(cos theta(t) / cos theta(0))``."""
        return -2.0 * torch.log(self.mean_coeff(t))

    def mean_coeff(self, t):
        """``a(t) = sqrt(alpha_bar(t)) = cos theta(t) / cos theta(0)``."""
        return torch.cos(self._theta0 + self._dtheta(t)) / math.cos(self._theta0)

    def _sin_product(self, t: torch.Tensor) -> torch.Tensor:
        """``cos^2 theta(0) - cos^2 theta(t) = sin(theta - theta0) sin(theta + theta0)``, exact at small t."""
        d = self._dtheta(t)
        return torch.sin(d) * torch.sin(2.0 * self._theta0 + d)

    def marginal_std(self, t):
        """``s(t) = sqrt(1 - alpha_bar(t)) = sqrt(cos^2 theta0 - cos^2 theta) / cos theta0``."""
        return torch.sqrt(self._sin_product(t)) / math.cos(self._theta0)

    def sigma(self, t):
        """``sigma(t) = s / a = sqrt(cos^2 theta0 - cos^2 theta) / cos theta``."""
        return torch.sqrt(self._sin_product(t)) / torch.cos(self._theta0 + self._dtheta(t))

    def t_of_sigma(self, sigma):
        """Closed form: ``tan^2 theta = tan^2 theta0 + sigma^2 / cos^2 theta0``, and ``theta - theta0`` from
        ``tan(theta - theta0) = (tan theta - tan theta0) / (1 + tan theta tan theta0)`` (precise at small sigma)."""
        sigma = torch.as_tensor(sigma)
        tan0 = math.tan(self._theta0)
        u = sigma**2 / math.cos(self._theta0) ** 2  # tan^2 theta - tan^2 theta0
        tan = torch.sqrt(tan0**2 + u)
        dtheta = torch.atan2(u / (tan + tan0), 1.0 + tan * tan0)
        return dtheta * (2.0 * (1.0 + self.s) / math.pi)

    def step_alpha(self, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """``alpha_i = a(t)^2 / a(t_next)^2 = cos^2 theta(t) / cos^2 theta(t_next)``, in (0, 1) on any grid."""
        return (torch.cos(self._theta0 + self._dtheta(t)) / torch.cos(self._theta0 + self._dtheta(t_next))) ** 2

    def step_beta(self, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """``beta_i = 1 - alpha_i = sin(theta - theta') sin(theta + theta') / cos^2 theta'``, precise on fine grids."""
        theta, theta_next = self._theta0 + self._dtheta(t), self._theta0 + self._dtheta(t_next)
        return torch.sin(self._dtheta(t - t_next)) * torch.sin(theta + theta_next) / torch.cos(theta_next) ** 2

    def ddpm_alphas_cumprod(self, num_steps: int) -> torch.Tensor:
        """The paper's discrete chain: ``beta_i = min(1 - alpha_bar(i/N) / alpha_bar((i-1)/N), max_beta)``,
        ``alpha_bar_i = prod_{j<=i} (1 - beta_j)``, ``i = 1..N`` (Nichol & Dhariwal 2021, Eq. 17 and Sec. 3.2).

        Below the clip ``alpha_bar_i = alpha_bar(i / N)`` exactly; at ``N = 1000`` only the last step is clipped.

        Returns:
            ``[N]`` float64 tensor.
        """
        if not (isinstance(num_steps, int) and num_steps >= 1):
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        abar = (torch.cos(self._theta0 + self._dtheta(t)) / math.cos(self._theta0)) ** 2
        betas = (1.0 - abar[1:] / abar[:-1]).clamp(max=self.max_beta)
        return torch.cumprod(1.0 - betas, dim=0)
