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
