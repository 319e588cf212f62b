"""The forward SDE contract of score-based generative modelling (Song et al. 2021, arXiv 2011.13456, Sec. 3.4).

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

from ..core.rng import Generator, sample_noise
from ..core.tensors import append_dims, batch_sum

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SDE(abc.ABC):
    """Abstract forward SDE ``dx = f(x, t) dt + g(t) dw`` on ``t in [0, T]`` with ``T = 1``."""

    T: float = 1.0
    #: the time grid a sampler's ``grid="auto"`` builds for this SDE (:func:`scorelab.sampling.time_grid`)
    preferred_grid: str = "uniform"

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
        from .vp import ddpm_alphas_cumprod

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


def check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
