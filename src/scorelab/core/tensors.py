"""Shape helpers: broadcast a per-example value against a batch, reduce a batch to one value per example."""
from __future__ import annotations

import torch


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions so ``x`` broadcasts against a tensor with ``ndim`` dims.

    Args:
        x: tensor of shape ``[B]`` (typically a per-example time or scale).
        ndim: number of dimensions of the target tensor, e.g. 2 for points ``[B, D]``, 4 for images.

    Returns:
        ``x`` viewed as ``[B, 1, ..., 1]`` with ``ndim`` dimensions.
    """
    missing = ndim - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target ndim is {ndim}")
    return x[(...,) + (None,) * missing]


def batch_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: ``[B, ...] -> [B]``."""
    return x.flatten(1).sum(dim=1)


def batch_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first: ``[B, ...] -> [B]``."""
    return x.flatten(1).mean(dim=1)
