"""Inpainting, colourisation and latent interpolation with an unconditional score model.

* Inpainting (Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations",
  App. I.2): any sampler that takes a ``project`` hook runs unchanged; after every step the known entries of its state
  are replaced by a draw of their forward marginal ``a(t) y + s(t) z``, and at the end by ``y`` itself. This is the
  paper's approximation ``p_t(x_unknown | y) ~ p_t(x_unknown | x_known(t))`` with ``x_known(t)`` drawn given ``y``: it
  is not exact, even for Gaussian data (docs/conditional_tasks.md).
* Colourisation (App. I.3): the same in a colour space where an orthogonal map separates the grey channel.
* Encoding and interpolation (Sec. 4.3): the probability-flow ODE maps data to latents ``x(T)`` and back; latents are
  interpolated spherically (Shoemake 1985; as in Song et al. 2021a, DDIM, Sec. 5.4).
"""
from __future__ import annotations

import math

import torch

from ..core.rng import Generator, sample_noise
from ..core.tensors import append_dims
from ..ops.flow import ADAPTIVE, FIXED, integrate, probability_flow
from ..sampling.base import CountingScore, ScoreFn, batch_time, refuse_project
from ..sde import SDE

FLOW_METHODS = FIXED + ADAPTIVE  # the engine's methods (scorelab.ops.flow)


class KnownValues:
    """Replace the known entries of a state by a draw of their forward marginal (Song et al. 2021, App. I.2).

    ``project(x, t)`` returns ``x`` with every entry where ``known`` holds set to ``a(t) y + s(t) z``, ``z ~ N(0, I)``
    drawn from ``generator`` (a fresh draw at each call; one row per sample, so per-sample seeds still hold).

    Args:
        sde: the forward SDE (its kernel ``a(t)``, ``s(t)``).
        y: the observed values ``[B, ...]`` (entries outside ``known`` are ignored).
        known: boolean mask broadcastable to ``y``, True where ``y`` is observed.
        generator: source of ``z``.
    """

    def __init__(self, sde: SDE, y: torch.Tensor, known: torch.Tensor, generator: Generator | None = None):
        self.sde, self.y, self.generator = sde, y, generator
        self.known = torch.as_tensor(known, device=y.device).bool()
        try:
            torch.broadcast_shapes(self.known.shape, y.shape)
        except RuntimeError:
            raise ValueError(f"known must broadcast to y's shape {tuple(y.shape)}, got {tuple(self.known.shape)}") \
                from None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x [B, ...]`` at time ``t [B]`` with its known entries drawn from ``p_0t(. | y)``."""
        a, s = append_dims(self.sde.mean_coeff(t), x.ndim), append_dims(self.sde.marginal_std(t), x.ndim)
        return torch.where(self.known, a * self.y + s * sample_noise(x.shape, x, self.generator), x)


def check_project(sampler) -> None:
    """Refuse, naming it, a sampler that cannot replace known values after every step
    (:attr:`~scorelab.sampling.base.Sampler.supports_inpainting`)."""
    refuse_project(sampler)


@torch.no_grad()
def inpaint(sampler, score_fn: ScoreFn, sde: SDE, y: torch.Tensor, known: torch.Tensor,
            generator: Generator | None = None, callback=None) -> tuple[torch.Tensor, int]:
    """Sample the unknown entries of ``y`` given its known ones by replacement (Song et al. 2021, App. I.2).

    The run starts from a prior sample whose known entries are replaced at ``T``; the sampler replaces them again after
    every step (after the predictor and after the corrector of a PC sampler); the result has ``y`` exactly where
    ``known`` holds.

    Args:
        sampler: a scorelab sampler taking ``project=`` (PC, fixed-step ODE and every few-step sampler).
        score_fn: ``(x [B, ...], t [B]) -> score [B, ...]``.
        sde: the forward SDE.
        y: observed values ``[B, ...]`` (one row per sample: repeat an image for several completions).
        known: boolean mask broadcastable to ``y``, True where observed.
        generator: source of all randomness (a ``torch.Generator`` or ``PerSampleGenerator``).
        callback: passed to the sampler.

    Returns:
        ``(samples [B, ...], nfe)``.
    """
    check_project(sampler)
    replace = KnownValues(sde, y, known, generator)
    x = sde.prior_sampling(tuple(y.shape), generator=generator, device=y.device, dtype=y.dtype)
    x = replace(x, batch_time(sde.T, x))
    x, nfe = sampler(score_fn, sde, tuple(y.shape), generator=generator, device=y.device, dtype=y.dtype,
                     callback=callback, x_init=x, project=replace)
    return torch.where(replace.known, y, x), nfe


# --- colourisation --------------------------------------------------------------------------------
def color_matrix(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The orthogonal colour map ``M [3, 3]`` of Song et al. 2021, App. I.3: ``c = M rgb``.

    Row 0 is ``(1, 1, 1) / sqrt(3)``, so ``c_0 = sqrt(3) * mean(rgb)`` is the grey level (scaled to keep ``M``
    orthogonal); rows 1 and 2, ``(-2, 1, 1) / sqrt(6)`` and ``(0, 1, -1) / sqrt(2)``, span the colours orthogonal to
    grey. ``M^{-1} = M^T``.
    """
    rows = [[1.0, 1.0, 1.0], [-2.0, 1.0, 1.0], [0.0, 1.0, -1.0]]
    m = torch.tensor(rows, dtype=torch.float64) / torch.tensor([3.0, 6.0, 2.0], dtype=torch.float64).sqrt()[:, None]
    return m.to(dtype=dtype, device=device)


def to_color_space(x: torch.Tensor) -> torch.Tensor:
    """``M x`` over the channels of RGB images ``[B, 3, ...]`` (:func:`color_matrix`)."""
    return torch.einsum("ij,bj...->bi...", color_matrix(x.dtype, x.device), x)


def from_color_space(c: torch.Tensor) -> torch.Tensor:
    """``M^T c``: the inverse of :func:`to_color_space`."""
    return torch.einsum("ji,bj...->bi...", color_matrix(c.dtype, c.device), c)


def grey_level(x: torch.Tensor) -> torch.Tensor:
    """The grey level ``[B, 1, ...]`` of images ``[B, C, ...]``: the mean over the channels."""
    return x.mean(dim=1, keepdim=True)


def color_space_score(score_fn: ScoreFn) -> ScoreFn:
    """The score of ``c = M x`` given the score of RGB data ``x``: ``M s(M^T c, t)`` (``M`` orthogonal, so the
    transformed data diffuse under the same isotropic SDE; Song et al. 2021, App. I.3)."""
    def score(c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return to_color_space(score_fn(from_color_space(c), t))
    return score


@torch.no_grad()
def colorize(sampler, score_fn: ScoreFn, sde: SDE, grey: torch.Tensor, generator: Generator | None = None,
             callback=None) -> tuple[torch.Tensor, int]:
    """RGB images whose channel mean is ``grey`` (Song et al. 2021, App. I.3).

    In colour space ``c = M x`` (:func:`color_space_score`) the grey channel ``c_0 = sqrt(3) grey`` is the known value,
    and :func:`inpaint` fills in the other two.

    Args:
        sampler, score_fn, sde, generator, callback: as for :func:`inpaint`; ``score_fn`` works on RGB ``[B, 3, ...]``.
        grey: grey levels ``[B, 1, ...]`` in the model's units.

    Returns:
        ``(rgb [B, 3, ...], nfe)``.
    """
    if grey.ndim < 2 or grey.shape[1] != 1:
        raise ValueError(f"grey must have shape [B, 1, ...], got {tuple(grey.shape)}")
    y = torch.cat([math.sqrt(3.0) * grey, torch.zeros_like(grey), torch.zeros_like(grey)], dim=1)
    known = torch.zeros((1, 3) + (1,) * (grey.ndim - 2), dtype=torch.bool, device=grey.device)
    known[:, 0] = True
    c, nfe = inpaint(sampler, color_space_score(score_fn), sde, y, known, generator, callback)
    return from_color_space(c), nfe


# --- the probability-flow ODE both ways -----------------------------------------------------------
@torch.no_grad()
def integrate_flow(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, t_start: float, t_end: float,
                   method: str = "dopri5", steps: int = 100, rtol: float = 1e-5,
                   atol: float = 1e-5) -> tuple[torch.Tensor, int]:
    """Carry ``x`` from ``t_start`` to ``t_end`` along the probability-flow ODE (Song et al. 2021, Eq. 13).

    Args:
        score_fn: ``(x [B, ...], t [B]) -> score [B, ...]``.
        sde: the forward SDE.
        x: states ``[B, ...]`` at ``t_start``.
        t_start, t_end: either order (forward: encoding, backward: decoding).
        method: fixed-step ``euler``, ``heun``, ``rk4`` (``steps`` uniform steps) or adaptive ``dopri5``, ``bosh3``,
            ``adaptive_heun``, ``dopri8`` (``rtol``, ``atol``; torchdiffeq).
        steps, rtol, atol: see ``method``.

    Returns:
        ``(x at t_end [B, ...], nfe)``.
    """
    if method not in FLOW_METHODS:
        raise ValueError(f"method must be one of {FLOW_METHODS}, got {method!r}")
    counted = CountingScore(score_fn)
    velocity = probability_flow(counted, sde)
    if method in FIXED:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        times = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)
    else:
        times = torch.tensor([t_start, t_end], dtype=torch.float64)
    return integrate(velocity, x, times, method, rtol, atol), counted.nfe


def encode(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, eps: float = 1e-3, **solver) -> tuple[torch.Tensor, int]:
    """The latent ``x(T)`` of data ``x [B, ...]`` (taken as ``x(eps)``) under the probability-flow ODE
    (Song et al. 2021, Sec. 4.3); ``solver``: ``method``, ``steps``, ``rtol``, ``atol`` of :func:`integrate_flow`."""
    return integrate_flow(score_fn, sde, x, eps, sde.T, **solver)


def decode(score_fn: ScoreFn, sde: SDE, z: torch.Tensor, eps: float = 1e-3, **solver) -> tuple[torch.Tensor, int]:
    """Data ``x(eps)`` of latents ``z = x(T) [B, ...]``: :func:`encode` run backwards."""
    return integrate_flow(score_fn, sde, z, sde.T, eps, **solver)


def slerp(z0: torch.Tensor, z1: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation ``sin((1 - a) theta) / sin(theta) z0 + sin(a theta) / sin(theta) z1`` (Shoemake 1985).

    ``theta`` is the angle between each pair of latents. The path keeps the norm when ``|z0| = |z1|``, which is
    where Gaussian latents live (a linear path would pass through the low-norm interior, off the prior's shell);
    nearly parallel pairs (``sin theta < 1e-6``) are interpolated linearly.

    Args:
        z0, z1: latents ``[B, ...]``.
        alphas: positions ``[K]`` in ``[0, 1]``; 0 gives ``z0`` and 1 gives ``z1`` exactly.

    Returns:
        ``[B, K, ...]``.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    a = torch.as_tensor(alphas, dtype=torch.float64, device=z0.device).flatten()
    f0, f1 = z0.flatten(1).double(), z1.flatten(1).double()
    cos = (f0 * f1).sum(1) / (f0.norm(dim=1) * f1.norm(dim=1)).clamp_min(1e-300)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))[:, None]  # [B, 1]
    sin = torch.sin(theta)
    parallel = sin < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    w0 = torch.where(parallel, 1.0 - a, torch.sin((1.0 - a) * theta) / safe)  # [B, K]
    w1 = torch.where(parallel, a.expand_as(w0), torch.sin(a * theta) / safe)
    out = w0[..., None] * f0[:, None] + w1[..., None] * f1[:, None]  # [B, K, D]
    return out.to(z0.dtype).reshape(z0.shape[0], a.numel(), *z0.shape[1:])
