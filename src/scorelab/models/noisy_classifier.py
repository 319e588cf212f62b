"""Time-dependent noisy classifiers ``p_phi(y | x_t, t)`` for classifier guidance.

Song et al. 2021 (Sec. 5, App. I.1) sample ``p_0(x | y)`` by adding ``grad_x log p_t(y | x)`` to the unconditional
score, with ``p_t(y | x)`` a classifier trained on perturbed data ``x_t = a(t) x_0 + s(t) z`` at every ``t``
(Dhariwal & Nichol 2021, Sec. 4, use the same construction with a guidance scale). A guidance gradient must be
per-example, so nothing here mixes the examples of a batch: group normalisation only, no batch normalisation.

* :class:`NoisyClassifier` turns a backbone ``net(x, noise_label) -> logits`` into ``logits(x, t)`` for an SDE,
  the way :class:`~scorelab.models.ScoreModel` does for score networks.
* :class:`ClassifierMLP`: points (toy data), a residual MLP with a time embedding.
* :class:`ClassifierCNN`: images, the encoder half of a DDPM U-Net (residual blocks with the time embedding,
  downsampling), global average pooling and a linear head (Dhariwal & Nichol 2021, Sec. 4, with mean pooling).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..sde import SDE
from .embeddings import make_embedding
from .layers import Downsample, ResnetBlockDDPM, TimeEmbedding, conv3x3, group_norm, linear
from .mlp import _ResidualBlock
from .score_model import NOISE_LABELS, noise_conditioning, unit_scale_input


class ClassifierMLP(nn.Module):
    """Residual MLP ``(x [B, D], noise_label [B]) -> logits [B, num_classes]`` for low-dimensional data.

    Args:
        num_classes: number of classes.
        dim: data dimension D.
        width: hidden width.
        depth: number of residual blocks (the time embedding is added inside each).
        embed_dim: size of the time embedding.
        embedding: ``"sinusoidal"`` or ``"fourier"``.
        fourier_scale: frequency scale of the Fourier embedding.
    """

    def __init__(self, num_classes: int, dim: int = 2, width: int = 128, depth: int = 2, embed_dim: int = 64,
                 embedding: str = "sinusoidal", fourier_scale: float = 16.0):
        super().__init__()
        self.num_classes, self.dim = _check_classes(num_classes), int(dim)
        self.embed = nn.Sequential(
            make_embedding(embedding, embed_dim, fourier_scale),
            nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim),
        )
        self.inp = nn.Linear(self.dim, width)
        self.blocks = nn.ModuleList(_ResidualBlock(width, embed_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(width, self.num_classes))

    @classmethod
    def data_arguments(cls, sample_shape: tuple[int, ...]) -> dict[str, int]:
        """``{"dim": D}`` for points of shape ``(D,)``; raises ``ValueError`` for other data (images)."""
        if len(sample_shape) != 1:
            raise ValueError(f"{cls.__name__} takes points of shape (D,), not data of shape {tuple(sample_shape)}")
        return {"dim": int(sample_shape[0])}

    def forward(self, x: torch.Tensor, noise_label: torch.Tensor) -> torch.Tensor:
        """``x [B, D]``, ``noise_label [B]`` -> logits ``[B, num_classes]``."""
        emb = self.embed(noise_label)
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


class ClassifierCNN(nn.Module):
    """The encoder half of a DDPM U-Net as a classifier ``(x [B, C, H, W], noise_label [B]) -> logits``.

    ``conv3x3``, then per level ``num_res_blocks`` :class:`~scorelab.models.layers.ResnetBlockDDPM` (time embedding
    added inside, group norm) and a downsampling between levels; group norm, SiLU, global average pooling and a
    linear head. Every operation acts on each example alone.

    Args:
        num_classes: number of classes.
        in_channels: image channels C.
        image_size: image side H = W (only checked: the pooling takes any size).
        ch: base width; level ``i`` has ``ch * ch_mult[i]`` channels.
        ch_mult: width multipliers, one per level (``len(ch_mult) - 1`` downsamplings).
        num_res_blocks: residual blocks per level.
        dropout: dropout in the residual blocks.
        embedding_type: ``"positional"`` or ``"fourier"`` time embedding (:class:`TimeEmbedding`).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, image_size: int = 28, ch: int = 32,
                 ch_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1, dropout: float = 0.0,
                 embedding_type: str = "positional"):
        super().__init__()
        self.num_classes, self.in_channels, self.image_size = _check_classes(num_classes), int(in_channels), \
            int(image_size)
        self.temb = TimeEmbedding(ch, embedding_type)
        temb_dim = 4 * ch
        self.conv_in = conv3x3(self.in_channels, ch)
        blocks: list[nn.Module] = []
        c_in = ch
        for level, mult in enumerate(ch_mult):
            c_out = ch * int(mult)
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlockDDPM(c_in, c_out, temb_dim=temb_dim, dropout=dropout, skip_rescale=True))
                c_in = c_out
            if level < len(ch_mult) - 1:
                blocks.append(Downsample(c_in, with_conv=True))
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = group_norm(c_in)
        self.head = linear(c_in, self.num_classes)

    @classmethod
    def data_arguments(cls, sample_shape: tuple[int, ...]) -> dict[str, int]:
        """``{"in_channels": C, "image_size": H}`` for square images ``(C, H, H)``; ``ValueError`` otherwise."""
        if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
            raise ValueError(f"{cls.__name__} takes square images (C, H, H), not data of shape "
                             f"{tuple(sample_shape)}")
        return {"in_channels": int(sample_shape[0]), "image_size": int(sample_shape[1])}

    def forward(self, x: torch.Tensor, noise_label: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]``, ``noise_label [B]`` -> logits ``[B, num_classes]``."""
        temb = self.temb(noise_label)
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, temb)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))
        return self.head(h)


class NoisyClassifier(nn.Module):
    """``logits(x, t)`` of ``p_phi(y | x_t = x, t)``: a backbone conditioned on the SDE's noise level.

    Args:
        net: backbone ``(x [B, ...], noise_label [B]) -> [B, num_classes]`` (with a ``num_classes`` attribute).
        sde: the forward SDE whose perturbed data it classifies.
        noise_label: what the network is conditioned on, as in :class:`~scorelab.models.ScoreModel`: ``"sde"``
            (``999 t`` for VP/sub-VP, ``log sigma(t)`` for VE), ``"t"`` or ``"log_std"``.
        scale_input: divide the input by ``sqrt(a^2 sigma_data^2 + s^2)`` (unit scale at every t; helps VE).
        sigma_data: data standard deviation used by ``scale_input``.
    """

    def __init__(self, net: nn.Module, sde: SDE, noise_label: str = "sde", scale_input: bool = False,
                 sigma_data: float = 0.5):
        super().__init__()
        if noise_label not in NOISE_LABELS:
            raise ValueError(f"noise_label must be one of {NOISE_LABELS}, got {noise_label!r}")
        self.net, self.sde = net, sde
        self.noise_label, self.scale_input, self.sigma_data = noise_label, bool(scale_input), float(sigma_data)

    @property
    def num_classes(self) -> int:
        """Number of classes of the backbone."""
        return int(self.net.num_classes)

    def label(self, t: torch.Tensor) -> torch.Tensor:
        """The network's conditioning scalar for time ``t [B]``."""
        return noise_conditioning(self.sde, t, self.noise_label)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of ``x [B, ...]`` at times ``t [B]``."""
        if self.scale_input:
            x = unit_scale_input(self.sde, x, t, self.sigma_data)
        return self.net(x, self.label(t))

    def log_prob(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log p_phi(y | x, t)`` ``[B]`` for labels ``y [B]``."""
        return torch.log_softmax(self(x, t), dim=1).gather(1, y[:, None].long())[:, 0]


def _check_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes!r}")
    return num_classes
