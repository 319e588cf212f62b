"""Small shape and randomness helpers shared by the core."""
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


def sample_noise(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None,
                 kind: str = "normal") -> torch.Tensor:
    """Noise of ``shape`` in ``like``'s dtype and device: standard normal or, with ``kind="uniform"``, U[0, 1).

    Drawn on the generator's own device (a CPU generator can drive GPU tensors), then moved to ``like``'s.
    """
    device = generator.device if generator is not None else like.device
    draw = torch.randn if kind == "normal" else torch.rand
    return draw(shape, generator=generator, dtype=like.dtype, device=device).to(like.device)
