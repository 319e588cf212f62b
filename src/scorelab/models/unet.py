"""The U-Net backbone shared by DDPM++ and NCSN++ (Song et al. 2021, Appendix H).

One configurable class covers both families (``conf/model/ddpmpp.yaml`` and the presets that change a few of its
keys): DDPM++ is the DDPM U-Net (Ho et al. 2020) with BigGAN residual blocks, skip rescaling and sinusoidal
embeddings of ``999 t``; NCSN++ adds Gaussian Fourier embeddings of ``log sigma`` (Tancik et al. 2020), FIR
resampling (Karras et al. 2020) and an input pyramid ("progressive growing" of the input, StyleGAN2's
skip/residual architectures); its CelebA-HQ / FFHQ variants add an output pyramid.
The network is a pure backbone: ``forward(x, noise_label)`` returns the raw output, with no input centering
and no division by sigma (the ``ScoreModel`` wrapper owns the parameterisation).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scorelab.models.embeddings import label_embedding
from scorelab.models.layers import (
    SKIP_SCALE,
    AttnBlock,
    Combine,
    Downsample,
    ResnetBlockBigGAN,
    ResnetBlockDDPM,
    TimeEmbedding,
    Upsample,
    conv3x3,
    group_norm,
)

_RESBLOCKS = ("ddpm", "biggan")
_PROGRESSIVE = ("none", "output_skip", "residual")
_PROGRESSIVE_INPUT = ("none", "input_skip", "residual")


def _choice(name: str, value: str, allowed: Sequence[str]) -> str:
    """Lower-case ``value`` and check it is one of ``allowed``; raise ``ValueError`` otherwise."""
    value = str(value).lower()
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


class _EncoderLevel(nn.Module):
    """One resolution of the contracting path: residual blocks (with attention), then optional downsampling.

    Each block output, and the downsampled features, are pushed onto ``skips`` for the expanding path.
    """

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], downsample: nn.Module | None,
                 pyramid: nn.Module | None, combine: nn.Module | None, progressive_input: str,
                 skip_rescale: bool):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)
        self.downsample = downsample
        self.pyramid = pyramid
        self.combine = combine
        self.progressive_input = progressive_input
        self.skip_scale = SKIP_SCALE if skip_rescale else 1.0

    def forward(self, h: torch.Tensor, temb: torch.Tensor, pyramid: torch.Tensor | None,
                skips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the level on ``h`` ``[B, C, R, R]``; return the new features and the input-pyramid image."""
        for block, attn in zip(self.blocks, self.attns, strict=True):
            h = attn(block(h, temb))
            skips.append(h)
        if self.downsample is None:
            return h, pyramid
        h = self.downsample(h, temb)
        if self.progressive_input == "input_skip":
            pyramid = self.pyramid(pyramid)
            h = self.combine(pyramid, h)
        elif self.progressive_input == "residual":
            pyramid = self.pyramid(pyramid)
            h = (pyramid + h) * self.skip_scale
            pyramid = h
        skips.append(h)
        return h, pyramid


class _DecoderLevel(nn.Module):
    """One resolution of the expanding path: blocks on concatenated skips, attention, pyramid, upsampling."""

    def __init__(self, blocks: list[nn.Module], attn: nn.Module, upsample: nn.Module | None, progressive: str,
                 is_lowest: bool, pyramid_up: nn.Module | None, pyramid_norm: nn.Module | None,
                 pyramid_conv: nn.Module | None, skip_rescale: bool):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = attn
        self.upsample = upsample
        self.progressive = progressive
        self.is_lowest = is_lowest
        self.pyramid_up = pyramid_up
        self.pyramid_norm = pyramid_norm
        self.pyramid_conv = pyramid_conv
        self.skip_scale = SKIP_SCALE if skip_rescale else 1.0

    def forward(self, h: torch.Tensor, temb: torch.Tensor, pyramid: torch.Tensor | None,
                skips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the level on ``h``, consuming skips; return the new features and the output-pyramid image."""
        for block in self.blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), temb)
        h = self.attn(h)
        if self.progressive == "output_skip":
            branch = self.pyramid_conv(F.silu(self.pyramid_norm(h)))
            pyramid = branch if self.is_lowest else self.pyramid_up(pyramid) + branch
        elif self.progressive == "residual":
            if self.is_lowest:
                pyramid = self.pyramid_conv(F.silu(self.pyramid_norm(h)))
            else:
                pyramid = (self.pyramid_up(pyramid) + h) * self.skip_scale
                h = pyramid
        if self.upsample is not None:
            h = self.upsample(h, temb)
        return h, pyramid


class ScoreUNet(nn.Module):
    """Time-conditioned U-Net of DDPM++ / NCSN++ (Song et al. 2021, Appendix H; Ho et al. 2020, Appendix B).

    Args:
        in_channels: image channels ``C`` (the output has the same number).
        image_size: spatial size ``H = W``; must be divisible by ``2 ** (len(ch_mult) - 1)``.
        ch: base width; level ``i`` has ``ch * ch_mult[i]`` channels, the time embedding ``4 * ch``.
        ch_mult: width multipliers, one per resolution (each halves the size).
        num_res_blocks: residual blocks per resolution (the expanding path uses one more).
        attn_resolutions: resolutions with self-attention after each residual block.
        dropout: dropout probability inside residual blocks.
        embedding_type: ``"positional"`` (label ``999 t``) or ``"fourier"`` (label ``log sigma``).
        fourier_scale: standard deviation of the Fourier frequencies.
        resblock_type: ``"biggan"`` (blocks resample) or ``"ddpm"`` (separate Upsample/Downsample layers).
        resamp_with_conv: with ``"ddpm"`` blocks, resample with a convolution.
        fir: use the FIR filter ``fir_kernel`` for every up/down sampling.
        fir_kernel: 1-D taps of the FIR filter.
        skip_rescale: divide every residual sum by sqrt(2).
        progressive: output pyramid, ``"none"``, ``"output_skip"`` or ``"residual"``.
        progressive_input: input pyramid, ``"none"``, ``"input_skip"`` or ``"residual"``.
        progressive_combine: how ``"input_skip"`` merges the pyramid, ``"sum"`` or ``"cat"``.
        init_scale: initial scale of the last layer of each residual branch and of the output (0 -> 1e-10).
        learn_variance: output ``2 C`` channels, the second ``C`` the reverse-variance interpolation of improved DDPM
            (Nichol & Dhariwal 2021, Eq. 15; :class:`~scorelab.models.ScoreModel` splits them). Off by default: the
            presets keep their parameter counts.
        num_classes: classes of a class-conditional network (0 or None: unconditional, no extra parameters); a
            :class:`~scorelab.models.embeddings.LabelEmbedding` (with a null class for classifier-free guidance) is
            added to the time embedding, which every residual block reads (Dhariwal & Nichol 2021; Ho & Salimans
            2022).
    """

    def __init__(self, *, in_channels: int = 3, image_size: int = 32, ch: int = 128,
                 ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 4,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
                 embedding_type: str = "positional", fourier_scale: float = 16.0,
                 resblock_type: str = "biggan", resamp_with_conv: bool = True, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1),
                 skip_rescale: bool = True, progressive: str = "none", progressive_input: str = "none",
                 progressive_combine: str = "sum", init_scale: float = 0.0, learn_variance: bool = False,
                 num_classes: int | None = 0):
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)  # accepts lists and OmegaConf ListConfigs
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        fir_kernel = tuple(float(k) for k in fir_kernel)
        resblock_type = _choice("resblock_type", resblock_type, _RESBLOCKS)
        progressive = _choice("progressive", progressive, _PROGRESSIVE)
        progressive_input = _choice("progressive_input", progressive_input, _PROGRESSIVE_INPUT)
        progressive_combine = _choice("progressive_combine", progressive_combine, ("sum", "cat"))
        num_levels = len(ch_mult)
        if num_levels == 0 or image_size % 2 ** (num_levels - 1) != 0:
            raise ValueError(f"image_size {image_size} must be divisible by 2**(len(ch_mult)-1) "
                             f"= {2 ** max(num_levels - 1, 0)} so that resolutions round-trip")
        self.in_channels, self.image_size, self.progressive = in_channels, image_size, progressive
        self.progressive_input = progressive_input
        self.learn_variance = bool(learn_variance)
        out_ch = in_channels * (2 if self.learn_variance else 1)  # + the variance channels of improved DDPM
        resolutions = [image_size // 2**i for i in range(num_levels)]
        temb_dim = 4 * ch
        self.time_embed = TimeEmbedding(ch, embedding_type.lower(), fourier_scale)
        self.num_classes = int(num_classes or 0)
        self.label_embed = label_embedding(self.num_classes, temb_dim)

        def resblock(in_ch: int, out_ch: int | None = None, up: bool = False,
                     down: bool = False) -> nn.Module:
            if resblock_type == "ddpm":
                return ResnetBlockDDPM(in_ch, out_ch, temb_dim=temb_dim, dropout=dropout,
                                       skip_rescale=skip_rescale, init_scale=init_scale)
            return ResnetBlockBigGAN(in_ch, out_ch, temb_dim=temb_dim, up=up, down=down, dropout=dropout,
                                     fir=fir, fir_kernel=fir_kernel, skip_rescale=skip_rescale,
                                     init_scale=init_scale)

        def attention(channels: int) -> nn.Module:
            return AttnBlock(channels, skip_rescale=skip_rescale, init_scale=init_scale)

        # Contracting path.
        self.conv_in = conv3x3(in_channels, ch)
        skip_ch, in_ch, pyramid_ch = [ch], ch, in_channels
        self.encoder = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(resblock(in_ch, ch * mult))
                in_ch = ch * mult
                attns.append(attention(in_ch) if resolutions[i] in attn_resolutions else nn.Identity())
                skip_ch.append(in_ch)
            downsample = pyramid = combine = None
            if i != num_levels - 1:
                if resblock_type == "ddpm":
                    downsample = Downsample(in_ch, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
                else:
                    downsample = resblock(in_ch, down=True)
                if progressive_input == "input_skip":
                    pyramid = Downsample(pyramid_ch, fir=fir, fir_kernel=fir_kernel)
                    combine = Combine(pyramid_ch, in_ch, progressive_combine)
                    in_ch = 2 * in_ch if progressive_combine == "cat" else in_ch
                elif progressive_input == "residual":
                    pyramid = Downsample(pyramid_ch, in_ch, with_conv=True, fir=fir, fir_kernel=fir_kernel)
                    pyramid_ch = in_ch
                skip_ch.append(in_ch)
            self.encoder.append(_EncoderLevel(blocks, attns, downsample, pyramid, combine, progressive_input,
                                              skip_rescale))

        # Bottleneck.
        self.mid_block_0 = resblock(in_ch)
        self.mid_attn = attention(in_ch)
        self.mid_block_1 = resblock(in_ch)

        # Expanding path, from the lowest resolution up.
        self.decoder = nn.ModuleList()
        pyramid_ch = 0
        for i in reversed(range(num_levels)):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(resblock(in_ch + skip_ch.pop(), ch * ch_mult[i]))
                in_ch = ch * ch_mult[i]
            attn = attention(in_ch) if resolutions[i] in attn_resolutions else nn.Identity()
            is_lowest = i == num_levels - 1
            pyramid_up = pyramid_norm = pyramid_conv = None
            if progressive == "output_skip":
                pyramid_norm = group_norm(in_ch)
                pyramid_conv = conv3x3(in_ch, out_ch, init_scale=init_scale)
                if not is_lowest:
                    pyramid_up = Upsample(out_ch, fir=fir, fir_kernel=fir_kernel)
            elif progressive == "residual":
                if is_lowest:
                    pyramid_norm, pyramid_conv = group_norm(in_ch), conv3x3(in_ch, in_ch)
                else:
                    pyramid_up = Upsample(pyramid_ch, in_ch, with_conv=True, fir=fir, fir_kernel=fir_kernel)
                pyramid_ch = in_ch
            upsample = None
            if i != 0:
                if resblock_type == "ddpm":
                    upsample = Upsample(in_ch, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
                else:
                    upsample = resblock(in_ch, up=True)
            self.decoder.append(_DecoderLevel(blocks, attn, upsample, progressive, is_lowest, pyramid_up,
                                              pyramid_norm, pyramid_conv, skip_rescale))
        assert not skip_ch, "every skip connection must be consumed"

        self.norm_out = self.conv_out = None
        if progressive != "output_skip":  # otherwise the output pyramid is the output
            self.norm_out = group_norm(in_ch)
            self.conv_out = conv3x3(in_ch, out_ch, init_scale=init_scale)

    @classmethod
    def data_arguments(cls, sample_shape: tuple[int, ...]) -> dict[str, int]:
        """The constructor arguments fixed by the data: ``in_channels`` and ``image_size`` of images ``(C, H, W)``.

        Raises:
            ValueError: the data are not square images.
        """
        if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
            raise ValueError(f"{cls.__name__} takes square images (C, H, H), not data of shape {tuple(sample_shape)}")
        return {"in_channels": int(sample_shape[0]), "image_size": int(sample_shape[-1])}

    def forward(self, x: torch.Tensor, noise_label: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Raw network output for images ``x`` at noise labels ``noise_label`` (and class labels ``y``).

        Args:
            x: ``[B, C, H, W]`` noisy images (any memory format).
            noise_label: ``[B]`` float labels: ``999 t`` for VP / sub-VP, ``log sigma(t)`` for VE.
            y: ``[B]`` class labels of a conditional network (``num_classes``: the null class); None: all null.

        Returns:
            ``[B, C, H, W]`` network output (no scaling by sigma); ``[B, 2C, H, W]`` with ``learn_variance``.
        """
        temb = self.time_embed(noise_label)
        if self.label_embed is not None:
            temb = temb + self.label_embed(y, x.shape[0])
        elif y is not None:
            raise ValueError("this network has no classes (num_classes=0): it takes no labels")
        pyramid = x if self.progressive_input != "none" else None
        h = self.conv_in(x)
        skips = [h]
        for level in self.encoder:
            h, pyramid = level(h, temb, pyramid, skips)
        h = self.mid_block_1(self.mid_attn(self.mid_block_0(h, temb)), temb)
        pyramid = None
        for level in self.decoder:
            h, pyramid = level(h, temb, pyramid, skips)
        if self.progressive == "output_skip":
            return pyramid
        return self.conv_out(F.silu(self.norm_out(h)))
