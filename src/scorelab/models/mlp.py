"""A time-conditioned residual MLP score network for low-dimensional (toy) data."""
from __future__ import annotations

import torch
from torch import nn

from .embeddings import label_embedding, make_embedding


class _ResidualBlock(nn.Module):
    """``h + Linear(act(Linear(act(h)) + emb))``: a residual block with the time embedding added inside."""

    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.act(self.fc1(self.act(h)) + self.emb(emb)))


class ScoreMLP(nn.Module):
    """Residual MLP ``(x [B, D], noise_label [B]) -> [B, D]`` for 2-D (or any low-D) data.

    Args:
        dim: data dimension D.
        width: hidden width.
        depth: number of residual blocks.
        embed_dim: size of the time embedding.
        embedding: ``"sinusoidal"`` or ``"fourier"``.
        fourier_scale: frequency scale of the Fourier embedding.
        learn_variance: output ``2 D`` values, the second ``D`` the reverse-variance interpolation of improved DDPM
            (Nichol & Dhariwal 2021, Eq. 15; :class:`~scorelab.models.ScoreModel` splits them).
        num_classes: classes of a class-conditional network (0 or None: unconditional, no extra parameters); a
            :class:`~scorelab.models.embeddings.LabelEmbedding` with a null class is added to the time embedding.
    """

    def __init__(self, dim: int = 2, width: int = 256, depth: int = 4, embed_dim: int = 128,
                 embedding: str = "sinusoidal", fourier_scale: float = 16.0, learn_variance: bool = False,
                 num_classes: int | None = 0):
        super().__init__()
        self.dim, self.learn_variance, self.num_classes = dim, bool(learn_variance), int(num_classes or 0)
        self.embed = nn.Sequential(
            make_embedding(embedding, embed_dim, fourier_scale),
            nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim),
        )
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_ResidualBlock(width, embed_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * dim if self.learn_variance else dim))
        self.label_embed = label_embedding(self.num_classes, embed_dim)

    @classmethod
    def data_arguments(cls, sample_shape: tuple[int, ...]) -> dict[str, int]:
        """The constructor arguments fixed by the data: ``{"dim": D}`` for points of shape ``(D,)``.

        Raises:
            ValueError: the data are not points (e.g. images).
        """
        if len(sample_shape) != 1:
            raise ValueError(f"{cls.__name__} takes points of shape (D,), not data of shape {tuple(sample_shape)}")
        return {"dim": int(sample_shape[0])}

    def forward(self, x: torch.Tensor, noise_label: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, D]``, ``noise_label [B]``, class labels ``y [B]`` (None: the null class) -> ``[B, D]``
        (``[B, 2 D]`` with ``learn_variance``)."""
        emb = self.embed(noise_label)
        if self.label_embed is not None:
            emb = emb + self.label_embed(y, x.shape[0])
        elif y is not None:
            raise ValueError("this network has no classes (num_classes=0): it takes no labels")
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(h)
        return out.view(x.shape[0], -1) if self.learn_variance else out.view_as(x)
