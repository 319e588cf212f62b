"""The divergence (Jacobian trace) of a vector field in its input: exact by one backward pass per dimension, or
Hutchinson's unbiased estimate ``v^T (df/dx) v`` with ``E[v v^T] = I`` (Hutchinson 1989; FFJORD, Grathwohl et al.
2019). Implicit score matching, sliced score matching and the probability-flow likelihood all use these.
"""
from __future__ import annotations

import torch

from ..core.rng import sample_noise
from ..core.tensors import batch_sum

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
AUTO_EXACT_MAX_DIM = 16  # "auto": the exact trace up to this many dimensions per example, Hutchinson above


def choose_divergence(name: str, dim: int) -> str:
    """``exact`` or ``hutchinson`` for ``name`` in ``exact | hutchinson | auto``; ``auto`` is exact up to
    :data:`AUTO_EXACT_MAX_DIM` dimensions per example (``dim``), where D backward passes are cheap."""
    if name == "auto":
        return "exact" if dim <= AUTO_EXACT_MAX_DIM else "hutchinson"
    if name not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {(*DIVERGENCES, 'auto')}, got {name!r}")
    return name


def _grad(output: torch.Tensor, x: torch.Tensor, create_graph: bool) -> torch.Tensor:
    (grad,) = torch.autograd.grad(output, x, create_graph=create_graph, retain_graph=True, allow_unused=True,
                                  materialize_grads=True)
    return grad


def exact_trace(f: torch.Tensor, x: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """``tr ∇_x f(x) = sum_i ∂f_i / ∂x_i`` by autograd, one backward pass per data dimension (for small D).

    Assumes example ``b`` of ``f`` depends on example ``b`` of ``x`` only (no batch statistics).

    Args:
        f: ``f(x) [B, ...]``, computed from ``x`` with autograd on.
        x: the input ``[B, ...]`` (``requires_grad``).
        create_graph: keep the graph of the derivatives (so that a loss built on them trains the parameters).

    Returns:
        The trace ``[B]``.
    """
    flat = f.flatten(1)
    trace = torch.zeros(x.shape[0], dtype=f.dtype, device=f.device)
    for i in range(flat.shape[1]):
        trace = trace + _grad(flat[:, i].sum(), x, create_graph).flatten(1)[:, i]
    return trace


def projected_jacobian(f: torch.Tensor, x: torch.Tensor, v: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """``v^T ∇_x f(x) v`` by one vector-Jacobian product: Hutchinson's estimate of the trace when ``E[v v^T] = I``
    (Hutchinson 1989), the first term of sliced score matching (Song, Garg, Shi, Ermon 2019, Eq. 7).

    Args:
        f: ``f(x) [B, ...]``, computed from ``x`` with autograd on.
        x: the input ``[B, ...]`` (``requires_grad``).
        v: one projection per example ``[B, ...]``.
        create_graph: keep the graph of the derivatives.

    Returns:
        ``[B]``.
    """
    return batch_sum(_grad((f * v).sum(), x, create_graph) * v)


def draw_probes(x: torch.Tensor, num: int, kind: str = "rademacher", generator=None) -> list[torch.Tensor]:
    """``num`` probes ``[B, ...]`` with ``E[v v^T] = I``: Rademacher (random signs) or standard Gaussian."""
    if kind not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {kind!r}")
    v = sample_noise((x.shape[0], num, *x.shape[1:]), x, generator)  # examples first: per-sample/sharded generators
    v = v.sign() if kind == "rademacher" else v
    return list(v.unbind(1))
