"""Forward SDEs of score-based generative modelling (Song et al. 2021, arXiv 2011.13456, Sec. 3.4).

Every SDE here is linear in ``x``, so its transition kernel is Gaussian,
``p_0t(x | x0) = N(x; a(t) x0, s(t)^2 I)`` (docs/math.md §2). ``t`` is always a tensor of shape ``[B]``;
``x`` may have any shape ``[B, ...]`` (2-D points and images alike).

Sampler-specific behaviour lives here as methods (``discretize``, ``ancestral_step``, ``langevin_alpha``,
``noise_label``, and the sigma-space view ``sigma``, ``log_snr``, ``t_of_sigma``, ``data_prediction``) so that
samplers never need ``isinstance`` checks.
"""
from __future__ import annotations

import abc
import math
from collections.abc import Callable

import torch

from .core.rng import Generator, sample_noise
from .core.tensors import append_dims, batch_sum

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SDE(abc.ABC):
    """Abstract forward SDE ``dx = f(x, t) dt + g(t) dw`` on ``t in [0, T]`` with ``T = 1``."""

    T: float = 1.0

    # --- the process -------------------------------------------------------------------------
    @abc.abstractmethod
    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift and diffusion of the forward SDE (Song et al. 2021, Eq. 5).

        Args:
            x: state ``[B, ...]``.
            t: time ``[B]``.

        Returns:
            ``(drift [B, ...], diffusion [B])``.
        """

    @abc.abstractmethod
    def mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """The kernel's mean coefficient ``a(t)`` of shape ``[B]`` (docs/math.md §2)."""

    @abc.abstractmethod
    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """The kernel's standard deviation ``s(t)`` of shape ``[B]`` (docs/math.md §2)."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation ``c`` of the prior ``p_T = N(0, c^2 I)``."""

    def marginal_prob(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the perturbation kernel ``p_0t(x(t) | x(0))`` (Song et al. 2021, Eq. 29, 33).

        Args:
            x0: clean data ``[B, ...]``.
            t: time ``[B]``.

        Returns:
            ``(mean [B, ...], std [B])``.
        """
        return append_dims(self.mean_coeff(t), x0.ndim) * x0, self.marginal_std(t)

    def prior_sampling(
        self,
        shape: tuple[int, ...],
        generator: Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Draw ``x(T) ~ N(0, c^2 I)`` of the given shape ``[B, ...]`` (from a ``torch.Generator`` or a
        :class:`~scorelab.core.rng.PerSampleGenerator`)."""
        like = torch.empty((), device=device, dtype=dtype if dtype is not None else torch.get_default_dtype())
        return self.prior_std * sample_noise(tuple(shape), like, generator)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of the prior: ``-D/2 ln(2 pi c^2) - ||z||^2 / (2 c^2)`` (docs/math.md §2).

        Args:
            z: latent ``[B, ...]``.

        Returns:
            log p_T(z) of shape ``[B]``.
        """
        d = z[0].numel()
        c2 = self.prior_std**2
        return -0.5 * d * math.log(2 * math.pi * c2) - batch_sum(z**2) / (2 * c2)

    # --- the sigma-space view (Karras et al. 2022, Sec. 3) ----------------------------------------
    # x_t = a(t) x0 + s(t) z, so y = x_t / a(t) = x0 + sigma(t) z: every SDE here is a VE process in
    # y with noise level sigma(t) = s(t) / a(t). Few-step samplers work in (y, sigma) and serve all SDEs.
    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level ``sigma(t) = s(t) / a(t)`` of ``y = x / a(t)``, increasing in t; ``[B] -> [B]``."""
        return self.marginal_std(t) / self.mean_coeff(t)

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda(t) = log(a(t) / s(t)) = -log sigma(t)`` (Lu et al. 2022a, Sec. 3.1); ``[B] -> [B]``."""
        return -torch.log(self.sigma(t))

    def t_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """The time at which ``sigma(t)`` equals ``sigma``, the inverse of :meth:`sigma`; ``[B] -> [B]``.

        Generic fallback for SDEs without a closed form: 64 bisection steps on ``[0, T]`` in float64
        (``sigma(t)`` must increase); values outside ``[sigma(0), sigma(T)]`` are clamped to the ends.
        """
        target = torch.as_tensor(sigma, dtype=torch.float64)
        lo, hi = torch.zeros_like(target), torch.full_like(target, self.T)
        for _ in range(64):
            mid = (lo + hi) / 2
            below = self.sigma(mid) < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return ((lo + hi) / 2).to(torch.as_tensor(sigma).dtype)

    def data_prediction(self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """Tweedie's denoiser ``D(x, t) = E[x0 | x_t] = (x + s(t)^2 score) / a(t)`` (Efron 2011; Karras et al.
        2022, Eq. 3).

        Args:
            x: state ``[B, ...]`` at time ``t``.
            t: time ``[B]``.
            score: ``grad_x log p_t(x)`` or its estimate, ``[B, ...]``.

        Returns:
            the data prediction ``[B, ...]``.
        """
        std, a = append_dims(self.marginal_std(t), x.ndim), append_dims(self.mean_coeff(t), x.ndim)
        return (x + std**2 * score) / a

    # --- sampler support ---------------------------------------------------------------------
    def discretize(
        self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward step ``x_{i+1} = x_i + f_i(x_i) + G_i z`` between two grid times.

        The default is Euler–Maruyama: ``f_i = f(x, t) dt``, ``G_i = g(t) sqrt(dt)`` with
        ``dt = t - t_next > 0`` (Song et al. 2021, Appendix E). Subclasses override it with their exact
        discretisation (DDPM / SMLD chains).

        Args:
            x: state ``[B, ...]``.
            t: current (larger) time ``[B]``.
            t_next: next (smaller) time on the reverse grid ``[B]``.

        Returns:
            ``(f [B, ...], G [B])``.
        """
        dt = t - t_next
        drift, diffusion = self.sde(x, t)
        return drift * append_dims(dt, x.ndim), diffusion * dt.sqrt()

    def ancestral_step(
        self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, score: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ancestral-sampling step from ``t`` to ``t_next``; only defined for DDPM/SMLD chains.

        Returns:
            ``(x, x_mean)`` each ``[B, ...]``.
        """
        raise ValueError(
            f"ancestral sampling is not defined for {type(self).__name__}: it needs a discrete Markov chain "
            "(VPSDE = DDPM or VESDE = SMLD); use the reverse_diffusion or euler_maruyama predictor instead"
        )

    def langevin_alpha(self, t: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """The ``alpha_i`` scaling the Langevin corrector step (Song et al. 2021, Algorithm 5); ``[B]``."""
        return torch.ones_like(t)

    def noise_label(self, t: torch.Tensor) -> torch.Tensor:
        """The scalar a network is conditioned on, per the reference implementation's conventions."""
        return 999.0 * t

    def ddpm_beta_range(self) -> tuple[float, float] | None:
        """``(beta_min, beta_max)`` of the DDPM chain (Ho et al. 2020) whose continuous limit this SDE is, or None.

        The discrete DDPM loss trains on that chain's ``alpha_bar_i``; an SDE that is not the limit of one (VE,
        sub-VP) returns None.
        """
        return None

    def ddpm_alphas_cumprod(self, num_steps: int) -> torch.Tensor | None:
        """``alpha_bar_i``, ``i = 1..N``, of the discrete DDPM chain whose continuous limit this SDE is, or None.

        The DDPM loss (Ho et al. 2020, Eq. 14) and the variational bound (Eq. 5, :mod:`scorelab.objectives.vlb`) work on
        this chain. The default is the linear chain of :meth:`ddpm_beta_range`; a VP SDE with another schedule overrides
        it (:class:`CosineVPSDE`); VE and sub-VP have none.

        Returns:
            ``[N]`` float64 tensor, or None.
        """
        beta_range = self.ddpm_beta_range()
        return None if beta_range is None else ddpm_alphas_cumprod(num_steps, *beta_range)

    # --- the reverse process -----------------------------------------------------------------
    def reverse_drift(
        self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor, probability_flow: bool = False
    ) -> torch.Tensor:
        """Drift of the reverse SDE ``f - g^2 score`` or of the probability-flow ODE ``f - g^2 score / 2``.

        Implements Song et al. 2021, Eq. 6 and Eq. 13 (note the 1/2 for the ODE, docs/math.md §1).

        Args:
            x: state ``[B, ...]``.
            t: time ``[B]``.
            score: ``grad_x log p_t(x)`` or its estimate, ``[B, ...]``.
            probability_flow: use the ODE drift instead of the reverse-SDE drift.

        Returns:
            drift ``[B, ...]`` in forward-time convention (integrate with ``dt < 0``).
        """
        drift, diffusion = self.sde(x, t)
        weight = 0.5 if probability_flow else 1.0
        return drift - weight * append_dims(diffusion**2, x.ndim) * score

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or probability-flow ODE) driven by ``score_fn(x, t)``."""
        return ReverseSDE(self, score_fn, probability_flow)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class ReverseSDE:
    """Reverse-time SDE ``dx = [f - g^2 score] dt + g dw_bar`` (or the ODE) for a given score function."""

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.forward, self.score_fn, self.probability_flow = forward, score_fn, probability_flow

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse drift ``[B, ...]`` and diffusion ``[B]`` (zero for the probability-flow ODE)."""
        score = self.score_fn(x, t)
        drift = self.forward.reverse_drift(x, t, score, self.probability_flow)
        _, diffusion = self.forward.sde(x, t)
        return drift, torch.zeros_like(diffusion) if self.probability_flow else diffusion

    def discretize(
        self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse of ``SDE.discretize``: ``f_rev = f_i - G_i^2 score`` (Song et al. 2021, Eq. 46)."""
        f, G = self.forward.discretize(x, t, t_next)
        weight = 0.5 if self.probability_flow else 1.0
        rev_f = f - weight * append_dims(G**2, x.ndim) * self.score_fn(x, t)
        return rev_f, torch.zeros_like(G) if self.probability_flow else G


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


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")


class _BetaSchedule:
    """Linear ``beta(t) = beta_min + t (beta_max - beta_min)`` shared by VP and sub-VP."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        _check_positive(beta_min=beta_min, beta_max=beta_max)
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

    def step_alpha(self, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """``alpha_i = a(t)^2 / a(t_next)^2 = exp(-(B(t) - B(t_next)))``, in (0, 1) on any grid (docs/math.md §4)."""
        return torch.exp(-(self.integral(t) - self.integral(t_next)))

    def step_beta(self, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """``beta_i = 1 - alpha_i``, computed with ``expm1`` so fine grids keep full precision."""
        return -torch.expm1(-(self.integral(t) - self.integral(t_next)))

    def langevin_alpha(self, t: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """``alpha_i = exp(-beta(t) dt)``, the continuous version of DDPM's ``1 - beta_i``."""
        return torch.exp(-self.beta(t) * dt)


class VPSDE(_BetaSchedule, SDE):
    """Variance-preserving SDE ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw`` (Song et al. 2021, Eq. 11).

    The continuous limit of DDPM (Ho et al. 2020). Prior ``N(0, I)``.

    Args:
        beta_min: ``beta(0) > 0`` (0.1 in the paper).
        beta_max: ``beta(1) > beta_min`` (20 in the paper).
    """

    def sde(self, x, t):
        beta = self.beta(t)
        return -0.5 * append_dims(beta, x.ndim) * x, beta.sqrt()

    def marginal_std(self, t):
        # sqrt(1 - exp(-B)) with expm1 so that small t keeps full relative precision.
        return torch.sqrt(-torch.expm1(-self.integral(t)))

    def sigma(self, t):
        """``sigma(t) = s / a = sqrt(exp(B(t)) - 1)``."""
        return torch.sqrt(torch.expm1(self.integral(t)))

    def t_of_sigma(self, sigma):
        """Closed form: ``B(t) = log(1 + sigma^2)``, then :meth:`time_of_integral`."""
        return self.time_of_integral(torch.log1p(torch.as_tensor(sigma) ** 2))

    def discretize(self, x, t, t_next):
        """DDPM chain on an arbitrary grid: ``f_i = (sqrt(alpha_i) - 1) x``, ``G_i = sqrt(1 - alpha_i)``.

        ``alpha_i`` comes from the continuous schedule (docs/math.md §4), so ``beta_i = 1 - alpha_i`` stays in
        (0, 1) at any step count, unlike the reference's ``linspace(beta_min/N, beta_max/N, N)``.
        """
        alpha = self.step_alpha(t, t_next)
        return append_dims(alpha.sqrt() - 1.0, x.ndim) * x, self.step_beta(t, t_next).sqrt()

    def ddpm_beta_range(self) -> tuple[float, float]:
        """VP is the limit of DDPM's chain with ``beta_i = linspace(beta_min / N, beta_max / N, N)``."""
        return self.beta_min, self.beta_max

    def ancestral_step(self, x, t, t_next, score, z):
        """DDPM ancestral step ``x' = (x + beta_i score) / sqrt(alpha_i) + sqrt(beta_i) z`` (Ho et al. 2020, Alg. 2)."""
        alpha = append_dims(self.step_alpha(t, t_next), x.ndim)
        beta = append_dims(self.step_beta(t, t_next), x.ndim)
        x_mean = (x + beta * score) / alpha.sqrt()
        return x_mean + beta.sqrt() * z, x_mean


class SubVPSDE(_BetaSchedule, SDE):
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


class VESDE(SDE):
    """Variance-exploding SDE ``dx = sqrt(d[sigma^2(t)]/dt) dw`` (Song et al. 2021, Eq. 9; SMLD/NCSN).

    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``. ``marginal_std`` follows the paper's convention
    ``s(t) = sigma(t)`` (the data are taken to carry ``sigma_min`` noise already); the exact kernel std from
    clean data is ``sqrt(sigma(t)^2 - sigma_min^2)`` (docs/math.md §2). Prior ``N(0, sigma_max^2 I)``.

    Args:
        sigma_min: smallest noise level ``> 0`` (0.01 in the paper).
        sigma_max: largest noise level ``> sigma_min``; about the largest pairwise data distance (50 for CIFAR-10).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        _check_positive(sigma_min=sigma_min, sigma_max=sigma_max)
        if sigma_min >= sigma_max:
            raise ValueError(
                f"sigma_min must be smaller than sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, shape ``[B]``; equals ``s(t) / a(t)`` since ``a = 1``."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def t_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """Closed form: ``t = log(sigma / sigma_min) / log(sigma_max / sigma_min)``."""
        return torch.log(torch.as_tensor(sigma) / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

    def sde(self, x, t):
        diffusion = self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))
        return torch.zeros_like(x), diffusion

    def mean_coeff(self, t):
        return torch.ones_like(t)

    def marginal_std(self, t):
        return self.sigma(t)

    def discretize(self, x, t, t_next):
        """SMLD chain: ``f_i = 0``, ``G_i = sqrt(sigma(t)^2 - sigma(t_next)^2)`` (Song et al. 2021, Eq. 44)."""
        return torch.zeros_like(x), torch.sqrt(self.sigma(t) ** 2 - self.sigma(t_next) ** 2)

    def ancestral_step(self, x, t, t_next, score, z):
        """SMLD ancestral step (Song et al. 2021, Eq. 47):
        ``x' = x + (s_i^2 - s_{i-1}^2) score + sqrt(s_{i-1}^2 (s_i^2 - s_{i-1}^2) / s_i^2) z``."""
        s2, s2_next = self.sigma(t) ** 2, self.sigma(t_next) ** 2
        x_mean = x + append_dims(s2 - s2_next, x.ndim) * score
        std = torch.sqrt(s2_next * (s2 - s2_next) / s2)
        return x_mean + append_dims(std, x.ndim) * z, x_mean

    def noise_label(self, t):
        """``log sigma(t)``: what NCSN++'s Fourier embedding is conditioned on in the reference."""
        return torch.log(self.sigma(t))


class CosineVPSDE(SDE):
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
        _check_positive(s=s)
        for name, value in (("T", T), ("max_beta", max_beta)):
            if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
                raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
        self.s, self.T, self.max_beta = float(s), float(T), float(max_beta)
        self._theta0 = self.s / (1.0 + self.s) * math.pi / 2

    @property
    def prior_std(self) -> float:
        return 1.0

    def _dtheta(self, t: torch.Tensor) -> torch.Tensor:
        """``theta(t) - theta(0) = t / (1 + s) * pi / 2``: differences of angles keep precision at small t."""
        return t * (math.pi / (2.0 * (1.0 + self.s)))

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """``beta(t) = pi / (1 + s) * tan theta(t)``, shape ``[B]``."""
        return math.pi / (1.0 + self.s) * torch.tan(self._theta0 + self._dtheta(t))

    def sde(self, x, t):
        beta = self.beta(t)
        return -0.5 * append_dims(beta, x.ndim) * x, beta.sqrt()

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

    def discretize(self, x, t, t_next):
        """The exact Markov chain between two grid times: ``f_i = (sqrt(alpha_i) - 1) x``, ``G_i = sqrt(beta_i)``
        with ``alpha_i = a(t)^2 / a(t_next)^2`` (as :meth:`VPSDE.discretize`)."""
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
