"""Time (noise-level) embeddings for score networks."""
from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of a scalar (Vaswani et al. 2017; Ho et al. 2020, Sec. 4).

    Args:
        dim: embedding size (even).
        max_period: the longest wavelength; 10000 suits labels in ``[0, 1000]`` such as ``999 t``.
    """

    def __init__(self, dim: int, max_period: float = 10_000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        freqs = torch.exp(-math.log(max_period) * torch.arange(dim // 2) / (dim // 2 - 1 if dim > 2 else 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``t [B] -> [B, dim]``."""
        args = t.to(self.freqs.dtype)[:, None] * self.freqs[None]
        return torch.cat([args.sin(), args.cos()], dim=1)


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features ``[sin(2 pi w t), cos(2 pi w t)]``, ``w ~ N(0, scale^2)`` fixed (Tancik et al. 2020).

    Used by NCSN++ on ``log sigma`` (Song et al. 2021, Appendix H.2).

    Args:
        dim: embedding size (even).
        scale: standard deviation of the frequencies.
    """

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        self.W = nn.Parameter(torch.randn(dim // 2) * scale, requires_grad=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``t [B] -> [B, dim]``."""
        args = t.to(self.W.dtype)[:, None] * self.W[None] * (2 * math.pi)  # the reference's order of products
        return torch.cat([args.sin(), args.cos()], dim=1)


def make_embedding(kind: str, dim: int, fourier_scale: float = 16.0) -> nn.Module:
    """Build a time embedding by name: ``"sinusoidal"`` (alias ``"positional"``) or ``"fourier"``."""
    if kind in ("sinusoidal", "positional"):
        return SinusoidalEmbedding(dim)
    if kind == "fourier":
        return GaussianFourierEmbedding(dim, fourier_scale)
    raise ValueError(f"unknown embedding {kind!r}: choose 'sinusoidal' (or 'positional') or 'fourier'")


class LabelEmbedding(nn.Module):
    """A learned embedding of class labels with one extra "null" class (Ho & Salimans 2022, Sec. 3.2).

    Index ``num_classes`` stands for "no label": a network trained with labels replaced by it a fraction of the
    time (label dropout) estimates both the conditional score ``s(x, t, y)`` and the unconditional ``s(x, t)``,
    the two terms of classifier-free guidance. Networks add the embedding to their time embedding (as class
    conditioning does in Dhariwal & Nichol 2021).

    Args:
        num_classes: number of real classes ``K`` (labels ``0..K-1``; ``K`` is the null class).
        dim: embedding size (the time embedding's).
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``y [B]`` integer labels in ``0..num_classes`` (``num_classes``: null), or None (all null): ``[B, dim]``."""
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=self.table.weight.device)
        elif y.shape != (batch,) or y.dtype.is_floating_point:
            raise ValueError(f"labels must be integers of shape ({batch},), got {y.dtype} {tuple(y.shape)}")
        elif bool(((y < 0) | (y > self.num_classes)).any()):
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1} (or {self.num_classes}, the null class), "
                             f"got {y.min().item()}..{y.max().item()}")
        return self.table(y.long())


def label_embedding(num_classes: int | None, dim: int) -> LabelEmbedding | None:
    """A :class:`LabelEmbedding` for ``num_classes > 0``; None (no parameters) for an unconditional network."""
    return LabelEmbedding(int(num_classes), dim) if num_classes else None
