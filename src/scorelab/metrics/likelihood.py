"""Exact log-likelihoods through the probability-flow ODE (Song et al. 2021, Sec. 4.3, App. D.2; docs/math.md §5)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..core.rng import PerSampleGenerator, sample_noise
from ..ops.divergence import DIVERGENCES, PROBES, choose_divergence, draw_probes, exact_trace, projected_jacobian
from ..ops.flow import ADAPTIVE, integrate, probability_flow
from ..sampling.base import CountingScore, ScoreFn
from ..sampling.grids import check_eps
from ..sde import SDE


class Likelihood(NamedTuple):
    """Result of :func:`log_likelihood`: ``log_prob [B]`` (nats), latent ``z = x(T) [B, ...]`` and NFE."""

    log_prob: torch.Tensor
    z: torch.Tensor
    nfe: int


def log_likelihood(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, eps: float = 1e-5, divergence: str = "exact",
                   probe: str = "rademacher", method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                   generator: torch.Generator | None = None, prior_logp=None) -> Likelihood:
    """``log p_eps(x) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt`` with ``f~ = f - g^2 s / 2`` (docs/math.md §5).

    The ODE is integrated forward from the data point with torchdiffeq (adaptive ``dopri5`` by default,
    rtol = atol = 1e-5 as in the paper). One Hutchinson probe per example is drawn once and held fixed along the
    trajectory, which keeps the estimate unbiased.

    Args:
        score_fn: ``(x [B, ...], t [B]) -> score``.
        sde: the forward SDE.
        x: data points ``[B, ...]`` (already scaled and dequantised as the model saw them in training).
        eps: start time of the integration (the density returned is that of ``p_eps``).
        divergence: ``"exact"`` (D backward passes; for low-dimensional data) or ``"hutchinson"``.
        probe: ``"rademacher"`` or ``"gaussian"`` Hutchinson probes.
        method: an adaptive torchdiffeq method (``dopri5``, ``bosh3``, ``adaptive_heun``, ``dopri8``).
        rtol, atol: solver tolerances.
        generator: source of the probes.
        prior_logp: ``z [B, ...] -> [B]`` replacing ``sde.prior_logp`` (e.g. the exact ``log p_T`` of an
            oracle, which removes the prior-mismatch term from the error).

    Returns:
        :class:`Likelihood` ``(log_prob [B], z [B, ...], nfe)``.
    """
    check_eps(eps, sde.T)
    if method not in ADAPTIVE:
        raise ValueError(f"method must be an adaptive solver {ADAPTIVE} (a fixed-step one would take a single step)")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    counted = CountingScore(score_fn)
    velocity = probability_flow(counted, sde)
    v = draw_probes(x, 1, probe, generator)[0] if divergence == "hutchinson" else None

    def rhs(state: tuple[torch.Tensor, torch.Tensor], t: torch.Tensor):
        with torch.enable_grad():
            xt = state[0].detach().requires_grad_(True)
            f = velocity(xt, t)
            div = exact_trace(f, xt, create_graph=False) if v is None else projected_jacobian(f, xt, v, False)
        return f.detach(), div.detach()

    delta0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    z, delta = integrate(rhs, (x, delta0), torch.tensor([eps, sde.T], dtype=torch.float64), method, rtol, atol)
    prior = sde.prior_logp(z) if prior_logp is None else prior_logp(z)
    return Likelihood(prior + delta, z, counted.nfe)


def bits_per_dim(log_prob: torch.Tensor, dim: int, data_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Bits per dimension of 8-bit data: ``nll / (D ln 2) + 8 - log2(w)`` (docs/math.md §5).

    ``w`` is the width of the pixel range ``[0, 255]`` in model units: ``data_range = (0, 1)`` gives ``+ 8``,
    ``(-1, 1)`` gives ``+ 7``. ``log_prob`` must be of uniformly dequantised data (see :func:`dequantize`).

    Args:
        log_prob: model log-density ``[B]`` in nats, in the model's units.
        dim: number of dimensions D per example (e.g. 3 * 32 * 32).
        data_range: the interval the model's data were scaled to.

    Returns:
        bits/dim ``[B]``.
    """
    width = data_range[1] - data_range[0]
    if width <= 0:
        raise ValueError(f"data_range must be increasing, got {data_range}")
    return -log_prob / (dim * math.log(2)) + 8 - math.log2(width)


def dequantize(x: torch.Tensor, data_range: tuple[float, float] = (-1.0, 1.0),
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation of 8-bit data: ``(x + u) / 256`` with ``u ~ U[0, 1)``, mapped onto ``data_range``.

    Args:
        x: integer pixel values in ``[0, 255]`` (any dtype), ``[B, ...]``.
        data_range: target interval.
        generator: source of ``u``.

    Returns:
        float tensor ``[B, ...]`` in ``data_range``.
    """
    x = x.float()
    unit = (x + sample_noise(x.shape, x, generator, kind="uniform")) / 256.0
    lo, hi = data_range
    return lo + (hi - lo) * unit


# --- the NLL of a batch of examples: likelihood.py and the training-time callback alike ---------------------------
def derive_seed(*keys: int) -> int:
    """A 64-bit seed that depends on every key (NumPy's ``SeedSequence`` hashing): independent streams per key."""
    import numpy as np

    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0])


def example_generator(seed: int, repeat: int, index: Sequence[int]) -> PerSampleGenerator:
    """One CPU generator per example, seeded by ``(seed, repeat, example index)``: any batch, any process count."""
    return PerSampleGenerator([derive_seed(seed, repeat, i) for i in index])


def batch_nll(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, index: Sequence[int], *, seed: int, repeat: int = 0,
              data_range: tuple[float, float] | None = None, stochastic: bool = True, divergence: str = "auto",
              probe: str = "rademacher", eps: float = 1e-5, method: str = "dopri5", rtol: float = 1e-5,
              atol: float = 1e-5, prior_logp=None, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, int]:
    """The NLL of each example of a batch: bits/dim of 8-bit images (``data_range`` given: dequantised onto it),
    nats of points; the one computation of ``likelihood.py`` and of the training-time likelihood callback.

    Example ``i`` of repeat ``r`` draws its dequantisation noise and probe from ``(seed, r, i)``
    (:func:`example_generator`), so its value does not depend on the batch, the process count or the caller.

    Args:
        score_fn, sde: the model.
        x: raw examples ``[B, ...]``: uint8 images or float points.
        index: the examples' indices in their split (their seeds).
        seed, repeat: the seed keys.
        data_range: the model's pixel range for images; None for points.
        stochastic: draw noise and probes (images, Hutchinson); False: a deterministic exact evaluation.
        divergence: ``exact``, ``hutchinson`` or ``auto`` (:func:`~scorelab.ops.divergence.choose_divergence`).
        probe, eps, method, rtol, atol, prior_logp: as :func:`log_likelihood`.
        device, dtype: where and in what precision to solve.

    Returns:
        ``(values [B] float64 on the CPU, nfe)``.
    """
    gen = example_generator(seed, repeat, index) if stochastic else None
    if data_range is not None:
        x = dequantize(x, data_range, gen)  # uniform noise over each 8-bit bin, then onto the data range
    x = x.to(device, dtype)
    divergence = choose_divergence(divergence, x[0].numel())
    with torch.no_grad():  # log_likelihood turns gradients on where the divergence needs them
        res = log_likelihood(score_fn, sde, x, eps=eps, divergence=divergence, probe=probe, method=method, rtol=rtol,
                             atol=atol, generator=gen, prior_logp=prior_logp)
    values = bits_per_dim(res.log_prob, x[0].numel(), data_range) if data_range is not None else -res.log_prob
    return values.detach().double().cpu(), res.nfe
