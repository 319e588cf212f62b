"""Gaussian mixtures with exact perturbed scores and densities: the oracles of docs/math.md §8.

If ``p_0 = sum_k w_k N(mu_k, Sigma_k)`` then, for every linear SDE in :mod:`scorelab.sde`,
``p_t = sum_k w_k N(a(t) mu_k, a(t)^2 Sigma_k + s(t)^2 I)``. Its score and log-density are exact, which
gives an exact-score "model" for testing samplers without training, the score error of a trained
network, the exact log-likelihood of generated points, and mode weights to check.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..core.errors import UserError
from ..sde import SDE

ArrayLike = Sequence | torch.Tensor | float


class GaussianMixture:
    """A mixture ``sum_k w_k N(mu_k, Sigma_k)`` in any dimension D, exact in every computation.

    Exactly one of ``covs`` and ``stds`` gives the component shapes:

    * ``covs``: full covariances ``[K, D, D]``;
    * ``stds``: a scalar (shared isotropic std), ``[K]`` (isotropic per component) or ``[K, D]`` (diagonal).

    Each covariance is diagonalised once, ``Sigma_k = U_k diag(lambda_k) U_k^T``, so the perturbed covariance
    ``a^2 Sigma_k + s^2 I = U_k diag(a^2 lambda_k + s^2) U_k^T`` is inverted exactly at any per-example
    ``(a, s)`` without a per-example factorisation.

    Args:
        weights: mixture weights ``[K]``, positive; they must sum to 1 (within 1e-6).
        means: component means ``[K, D]``.
        covs: component covariances ``[K, D, D]``, symmetric positive definite.
        stds: component standard deviations (see above), positive.
    """

    def __init__(self, weights: ArrayLike, means: ArrayLike, covs: ArrayLike | None = None,
                 stds: ArrayLike | None = None):
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        mu = torch.as_tensor(means, dtype=torch.float64)
        if mu.ndim == 1:
            mu = mu[:, None]
        if mu.ndim != 2 or mu.shape[0] != w.numel():
            raise ValueError(
                f"means must have shape [K, D] with K = len(weights) = {w.numel()}, got {tuple(mu.shape)}")
        if (w <= 0).any() or abs(float(w.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights must be positive and sum to 1, got {w.tolist()}")
        k, d = mu.shape
        self.weights, self.means = w, mu
        self.covs = self._covariances(covs, stds, k, d)
        eigvals, eigvecs = torch.linalg.eigh(self.covs)
        if (eigvals <= 0).any():
            raise ValueError("covs must be positive definite (every eigenvalue > 0)")
        self._eigvals, self._eigvecs = eigvals, eigvecs  # [K, D], [K, D, D]

    @staticmethod
    def _covariances(covs, stds, k: int, d: int) -> torch.Tensor:
        if (covs is None) == (stds is None):
            raise ValueError("give exactly one of covs ([K, D, D]) and stds (scalar, [K] or [K, D])")
        if covs is not None:
            c = torch.as_tensor(covs, dtype=torch.float64)
            if c.shape != (k, d, d):
                raise ValueError(f"covs must have shape [K, D, D] = [{k}, {d}, {d}], got {tuple(c.shape)}")
            if not torch.allclose(c, c.transpose(-1, -2)):
                raise ValueError("covs must be symmetric")
            return c
        s = torch.as_tensor(stds, dtype=torch.float64)
        if (s <= 0).any():
            raise ValueError(f"stds must be positive, got {s.tolist()}")
        if s.ndim == 0 or s.shape == (k,):
            s = s.reshape(-1, 1).expand(k, d)
        if s.shape != (k, d):
            raise ValueError(f"stds must be a scalar, [K] = [{k}] or [K, D] = [{k}, {d}], got {tuple(s.shape)}")
        return torch.diag_embed(s**2)

    @property
    def n_components(self) -> int:
        return self.weights.numel()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def __repr__(self) -> str:
        weights = [round(w, 4) for w in self.weights.tolist()]
        return f"GaussianMixture(K={self.n_components}, D={self.dim}, weights={weights})"

    # --- sampling --------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False,
               dtype: torch.dtype = torch.float32):
        """Draw ``n`` points ``[n, D]`` (and their component labels ``[n]`` if ``return_labels``)."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covs)
        x = self.means[labels] + torch.einsum("nij,nj->ni", chol[labels], z)
        x = x.to(dtype)
        return (x, labels) if return_labels else x

    # --- exact densities of p_t ------------------------------------------------------------------
    def _perturbed_terms(self, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor):
        """Per-component log-densities ``[B, K]`` and scores ``[B, K, D]`` of ``N(a mu_k, a^2 Sigma_k + s^2 I)``."""
        dtype, device = x.dtype, x.device
        lam, vec = self._eigvals.to(device, dtype), self._eigvecs.to(device, dtype)
        mu, logw = self.means.to(device, dtype), self.weights.to(device, dtype).log()
        a, s = a.to(device, dtype).reshape(-1, 1, 1), s.to(device, dtype).reshape(-1, 1, 1)
        var = a**2 * lam + s**2  # [B, K, D], eigenvalues of the perturbed covariance
        diff = x[:, None, :] - a * mu  # [B, K, D]
        proj = torch.einsum("kdj,bkd->bkj", vec, diff)  # coordinates in each eigenbasis
        maha = (proj**2 / var).sum(-1)
        logdet = var.log().sum(-1)
        comp_logp = logw - 0.5 * (self.dim * math.log(2 * math.pi) + logdet + maha)
        comp_score = -torch.einsum("kdj,bkj->bkd", vec, proj / var)
        return comp_logp, comp_score

    @staticmethod
    def _times(x: torch.Tensor, value: torch.Tensor | float) -> torch.Tensor:
        value = torch.as_tensor(value, dtype=x.dtype, device=x.device)
        return value.expand(x.shape[0]) if value.ndim == 0 else value

    def perturbed_log_prob(self, x: torch.Tensor, a: torch.Tensor | float, s: torch.Tensor | float) -> torch.Tensor:
        """``log p(x)`` for the mixture pushed through ``x -> a x + s z``; ``x [B, D]``, ``a, s`` scalar or ``[B]``."""
        comp_logp, _ = self._perturbed_terms(x, self._times(x, a), self._times(x, s))
        return torch.logsumexp(comp_logp, dim=1)

    def perturbed_score(self, x: torch.Tensor, a: torch.Tensor | float, s: torch.Tensor | float) -> torch.Tensor:
        """Score of the perturbed mixture: ``sum_k r_k(x) (-C_k^{-1} (x - a mu_k))``, shape ``[B, D]``."""
        comp_logp, comp_score = self._perturbed_terms(x, self._times(x, a), self._times(x, s))
        resp = torch.softmax(comp_logp, dim=1)
        return torch.einsum("bk,bkd->bd", resp, comp_score)

    def perturbed_component_log_prob(self, x: torch.Tensor, a: torch.Tensor | float,
                                     s: torch.Tensor | float) -> torch.Tensor:
        """``log w_k + log N(x; a mu_k, a^2 Sigma_k + s^2 I)``, shape ``[B, K]``: the joint ``log p(x, y = k)`` of the
        perturbed mixture; its softmax over ``k`` is the exact noisy classifier ``p(y = k | x)``."""
        return self._perturbed_terms(x, self._times(x, a), self._times(x, s))[0]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p_0(x)``; ``x [B, D] -> [B]``."""
        return self.perturbed_log_prob(x, 1.0, 0.0)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``grad_x log p_0(x)``; ``x [B, D] -> [B, D]``."""
        return self.perturbed_score(x, 1.0, 0.0)

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log w_k + log N(x; mu_k, Sigma_k)``, shape ``[B, K]``."""
        return self._perturbed_terms(x, self._times(x, 1.0), self._times(x, 0.0))[0]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Most probable component of each point (maximum responsibility), shape ``[B]``."""
        return self.component_log_prob(x).argmax(dim=1)

    def entropy(self, n: int = 200_000, generator: torch.Generator | None = None) -> tuple[float, float]:
        """Monte Carlo estimate of the differential entropy ``H = -E log p_0`` (nats) and its standard error.

        No closed form exists for a mixture; this is the floor for any model's expected NLL.
        """
        x = self.sample(n, generator=generator, dtype=torch.float64)
        nll = -self.log_prob(x)
        return float(nll.mean()), float(nll.std() / math.sqrt(n))

    def component_perturbed_score(self, x: torch.Tensor, a: torch.Tensor | float, s: torch.Tensor | float,
                                  y: torch.Tensor) -> torch.Tensor:
        """Score of component ``y`` alone, ``-C_y^{-1} (x - a mu_y)`` with ``C_y = a^2 Sigma_y + s^2 I``: the exact
        class-conditional score ``∇ log p_t(x | y)`` when the components are the classes; ``y [B]`` -> ``[B, D]``."""
        _, comp_score = self._perturbed_terms(x, self._times(x, a), self._times(x, s))
        return comp_score[torch.arange(x.shape[0], device=x.device), y.to(x.device).long()]

    def oracle(self, sde: SDE, conditional: bool = False) -> OracleScore:
        """The exact score of ``p_t`` under ``sde``, as a drop-in score model; ``conditional``: a
        class-conditional one, ``oracle(x, t, y)`` (components as classes, ``y=None`` the whole mixture)."""
        return ConditionalOracleScore(self, sde) if conditional else OracleScore(self, sde)


def exact_score(sde: SDE, mixture: GaussianMixture | None = None, conditional: bool = False) -> OracleScore:
    """The exact score of ``mixture`` diffused by ``sde``: ``model=oracle``, a score model with nothing to train.

    Args:
        sde: the forward SDE.
        mixture: the toy data's mixture (``conf/model/oracle.yaml`` takes the data config's); None: not toy data.
        conditional: the class-conditional exact score (components as classes), for ``task=labels``.

    Raises:
        UserError: no mixture (image data have no exact score).
    """
    if mixture is None:
        raise UserError("model=oracle needs toy data (data=toy_*): images have no exact score; pass "
                        "ckpt_path=<a trained run> for them")
    return mixture.oracle(sde, conditional=conditional)


class OracleScore(nn.Module):
    """Exact score ``grad_x log p_t(x)`` of a Gaussian mixture diffused by ``sde`` (docs/math.md §8).

    Usable anywhere a trained score model is: ``oracle(x, t) -> score``. ``p_t`` uses the SDE's
    ``marginal_prob`` kernel (for VE the paper's ``s(t) = sigma(t)`` convention).

    Args:
        mixture: the data distribution ``p_0``.
        sde: the forward SDE.
    """

    def __init__(self, mixture: GaussianMixture, sde: SDE):
        super().__init__()
        self.mixture, self.sde = mixture, sde

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact score; ``x [B, D]``, ``t [B]`` -> ``[B, D]``."""
        return self.mixture.perturbed_score(x, self.sde.mean_coeff(t), self.sde.marginal_std(t))

    def log_prob(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact ``log p_t(x)``; ``x [B, D]``, ``t [B]`` -> ``[B]``."""
        return self.mixture.perturbed_log_prob(x, self.sde.mean_coeff(t), self.sde.marginal_std(t))


class ConditionalOracleScore(OracleScore):
    """The exact class-conditional score of a Gaussian mixture whose components are the classes.

    ``oracle(x, t, y) = ∇ log p_t(x | y)``, the score of component ``y`` diffused by ``sde``; ``y=None`` (or the
    null class ``K``) gives the unconditional ``∇ log p_t(x)``: what a conditional network trained with label dropout
    estimates, exactly. Classifier-free guidance on it has a closed form.
    """

    @property
    def num_classes(self) -> int:
        return self.mixture.n_components

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Exact conditional score; ``x [B, D]``, ``t [B]``, ``y [B]`` (None or ``K``: unconditional) -> ``[B, D]``."""
        unconditional = super().forward(x, t)
        if y is None:
            return unconditional
        a, s = self.mixture._times(x, self.sde.mean_coeff(t)), self.mixture._times(x, self.sde.marginal_std(t))
        null = y.to(x.device) == self.num_classes
        component = self.mixture.component_perturbed_score(x, a, s, torch.where(null, torch.zeros_like(y), y))
        return torch.where(null[:, None], unconditional, component)


# --- presets -------------------------------------------------------------------------------------
def two_modes(weights: Sequence[float] = (0.8, 0.2), separation: float = 4.0, std: float = 0.5) -> GaussianMixture:
    """Two isotropic 2-D Gaussians at ``(-separation/2, 0)`` and ``(separation/2, 0)`` with weights 0.8 / 0.2.

    The classic DDPM-tutorial case where learned models notoriously get the weight ratio wrong.
    """
    half = separation / 2
    return GaussianMixture(weights, [[-half, 0.0], [half, 0.0]], stds=std)


def eight_gaussians(radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """Eight equally weighted isotropic Gaussians on a circle of the given radius."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(torch.full((8,), 1 / 8, dtype=torch.float64), means, stds=std)


def grid(n: int = 5, spacing: float = 1.0, std: float = 0.15) -> GaussianMixture:
    """An ``n x n`` grid of equally weighted isotropic Gaussians centred on the origin (5 x 5 by default)."""
    axis = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * spacing
    gx, gy = torch.meshgrid(axis, axis, indexing="ij")
    means = torch.stack([gx.flatten(), gy.flatten()], dim=1)
    return GaussianMixture(torch.full((n * n,), 1 / (n * n), dtype=torch.float64), means, stds=std)


PRESETS = {"two_modes": two_modes, "eight_gaussians": eight_gaussians, "grid": grid}


def mixture_from_spec(spec: str | Mapping[str, Any]) -> GaussianMixture:
    """A mixture from an old-style config (before mixtures were built by ``_target_``), kept for stored checkpoints.

    Args:
        spec: a preset name (``two_modes``, ``eight_gaussians``, ``grid``), a mapping with ``preset`` and the
            preset's keyword arguments, or a mapping of :class:`GaussianMixture`'s arguments.
    """
    fields = {"preset": spec} if isinstance(spec, str) else dict(spec)
    preset = fields.pop("preset", None)
    if preset is None:
        return GaussianMixture(**fields)
    if preset not in PRESETS:
        raise ValueError(f"unknown toy preset {preset!r}: choose one of {sorted(PRESETS)}, or give the mixture with "
                         "_target_: scorelab.data.toy.GaussianMixture (weights, means, stds or covs)")
    return PRESETS[preset](**fields)
