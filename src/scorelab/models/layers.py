"""Building blocks of the DDPM++ / NCSN++ score networks.

Initialisers, time embeddings, FIR up/down sampling, self-attention and residual blocks. The architecture
follows Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations",
Appendix H, which builds on DDPM (Ho et al. 2020, Appendix B), BigGAN residual blocks (Brock et al. 2019) and
StyleGAN2's FIR resampling (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN").
All tensors are images ``[B, C, H, W]``; every op here also accepts ``channels_last`` memory format.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scorelab.models.embeddings import make_embedding

SKIP_SCALE = 1.0 / math.sqrt(2.0)  # keeps the variance of (x + h) equal to that of x (Song et al. 2021, H.1)


# --------------------------------------------------------------------------------------------- initialisers
def default_init_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Fill ``weight`` in place with DDPM's default initialisation (variance scaling, fan_avg, uniform).

    Ho et al. 2020 initialise every layer with ``U(-b, b)``, ``b = sqrt(3 * scale / fan_avg)``; a scale of 0
    means "almost zero" (1e-10), used for the last layer of each residual branch.

    Args:
        weight: ``[out, in, *kernel]`` parameter of a linear or convolution layer.
        scale: variance scale; 0 is replaced by 1e-10.

    Returns:
        ``weight``, filled in place.
    """
    scale = 1e-10 if scale == 0 else scale
    receptive = math.prod(weight.shape[2:])
    fan_avg = (weight.shape[0] + weight.shape[1]) * receptive / 2.0
    bound = math.sqrt(3.0 * scale / fan_avg)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def conv3x3(in_ch: int, out_ch: int, *, stride: int = 1, padding: int = 1,
            init_scale: float = 1.0) -> nn.Conv2d:
    """A 3x3 convolution with DDPM initialisation and a zero bias."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=padding)
    default_init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def conv1x1(in_ch: int, out_ch: int, *, init_scale: float = 1.0) -> nn.Conv2d:
    """A 1x1 convolution (a per-pixel linear map, "NIN") with DDPM initialisation and a zero bias."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=1)
    default_init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def linear(in_features: int, out_features: int, *, init_scale: float = 1.0) -> nn.Linear:
    """A dense layer with DDPM initialisation and a zero bias."""
    layer = nn.Linear(in_features, out_features)
    default_init_(layer.weight, init_scale)
    nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with eps 1e-6 and ``min(channels // 4, 32)`` groups, as in DDPM++ / NCSN++.

    When that number does not divide ``channels`` (e.g. 144 channels), the largest smaller divisor is used.
    """
    groups = max(min(channels // 4, 32), 1)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6)


# ------------------------------------------------------------------------------------------ time embeddings
class TimeEmbedding(nn.Module):
    """Noise-label embedding followed by a two-layer MLP ``embed -> 4ch -> 4ch`` (Ho et al. 2020, App. B).

    Args:
        ch: base width; the output has ``4 * ch`` features.
        embedding_type: ``"positional"`` (sinusoidal, size ``ch``; alias ``"sinusoidal"``) or ``"fourier"``
            (Gaussian Fourier features, size ``2 * ch``).
        fourier_scale: standard deviation of the Fourier frequencies.
    """

    def __init__(self, ch: int, embedding_type: str = "positional", fourier_scale: float = 16.0):
        super().__init__()
        embed_dim = 2 * ch if embedding_type == "fourier" else ch
        self.embed = make_embedding(embedding_type, embed_dim, fourier_scale)
        self.dense_0 = linear(embed_dim, 4 * ch)
        self.dense_1 = linear(4 * ch, 4 * ch)

    def forward(self, noise_label: torch.Tensor) -> torch.Tensor:
        """Map ``[B]`` noise labels to ``[B, 4 * ch]`` conditioning vectors."""
        return self.dense_1(F.silu(self.dense_0(self.embed(noise_label))))


# ------------------------------------------------------------------------------------------- FIR resampling
def fir_kernel_2d(taps: Sequence[float]) -> torch.Tensor:
    """The separable 2-D FIR filter ``outer(k, k) / sum`` of 1-D taps ``k`` (Karras et al. 2020)."""
    k = torch.as_tensor([float(t) for t in taps], dtype=torch.float32)
    k2 = torch.outer(k, k)
    return k2 / k2.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, *, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, zero-pad, FIR-filter, then decimate (StyleGAN2's upfirdn2d).

    Args:
        x: ``[B, C, H, W]`` images.
        kernel: ``[k, k]`` filter applied to every channel (true convolution, i.e. flipped correlation).
        up: zero-insertion factor.
        down: decimation factor.
        pad: ``(before, after)`` zero padding applied to both spatial axes after upsampling.

    Returns:
        ``[B, C, (H * up + before + after - k) // down + 1, ...]`` filtered images.
    """
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(b, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = kernel.flip((0, 1)).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=c)


def fir_upsample_2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Upsample ``[B, C, H, W] -> [B, C, factor H, factor W]`` with an anti-imaging FIR filter."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel * factor**2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def fir_downsample_2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Downsample ``[B, C, H, W] -> [B, C, H / factor, W / factor]`` with an anti-aliasing FIR filter."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def naive_upsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest-neighbour upsampling ``[B, C, H, W] -> [B, C, factor H, factor W]``."""
    return F.interpolate(x, scale_factor=factor, mode="nearest")


def naive_downsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Average pooling ``[B, C, H, W] -> [B, C, H / factor, W / factor]``."""
    return F.avg_pool2d(x, factor)


class FIRConv2d(nn.Module):
    """A 3x3 convolution fused with FIR upsampling or downsampling by 2 (Karras et al. 2020, StyleGAN2).

    Args:
        in_ch: input channels.
        out_ch: output channels.
        resample: ``"up"`` or ``"down"``.
        fir_kernel: 1-D taps of the resampling filter.
    """

    def __init__(self, in_ch: int, out_ch: int, resample: str, fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if resample not in ("up", "down"):
            raise ValueError(f"resample must be 'up' or 'down', got {resample!r}")
        self.resample = resample
        self.weight = nn.Parameter(default_init_(torch.empty(out_ch, in_ch, 3, 3)))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.register_buffer("kernel", fir_kernel_2d(fir_kernel), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, in_ch, H, W]`` to ``[B, out_ch, 2H, 2W]`` (up) or ``[B, out_ch, H/2, W/2]`` (down)."""
        taps, conv = self.kernel.shape[0], self.weight.shape[-1]
        if self.resample == "up":
            # Zero-insertion upsampling and the 3x3 conv in one transposed conv, then the FIR filter.
            weight_t = self.weight.flip((2, 3)).transpose(0, 1)
            x = F.conv_transpose2d(x, weight_t, stride=2)
            p = taps - 2 - (conv - 1)
            x = upfirdn2d(x, self.kernel * 4, pad=((p + 1) // 2 + 1, p // 2 + 1))
        else:
            p = taps - 2 + conv - 1
            x = upfirdn2d(x, self.kernel, pad=((p + 1) // 2, p // 2))
            x = F.conv2d(x, self.weight, stride=2)
        return x + self.bias.view(1, -1, 1, 1)


class _Resample(nn.Module):
    """Resampling by 2 (``direction``: ``"up"`` or ``"down"``), optionally through a convolution
    ``in_ch -> out_ch``: FIR-filtered (:class:`FIRConv2d`) with ``fir``, else a plain 3x3 one (``conv_kwargs``)."""

    direction: str = "up"

    def __init__(self, in_ch: int, out_ch: int | None, with_conv: bool, fir: bool, fir_kernel: Sequence[float],
                 **conv_kwargs):
        super().__init__()
        out_ch = out_ch or in_ch
        if not with_conv and out_ch != in_ch:
            raise ValueError("changing the channel count needs with_conv=True")
        self.fir, self.with_conv = fir, with_conv
        self.conv = None
        if with_conv:
            self.conv = FIRConv2d(in_ch, out_ch, self.direction, fir_kernel) if fir else conv3x3(
                in_ch, out_ch, **conv_kwargs)
        self.register_buffer("kernel", fir_kernel_2d(fir_kernel), persistent=False)


class Upsample(_Resample):
    """Upsample by 2: nearest or FIR, optionally with a 3x3 convolution mapping ``in_ch -> out_ch``."""

    direction = "up"

    def __init__(self, in_ch: int, out_ch: int | None = None, *, with_conv: bool = False, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__(in_ch, out_ch, with_conv, fir, fir_kernel)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``[B, in_ch, H, W]`` to ``[B, out_ch, 2H, 2W]``; ``temb`` is ignored."""
        if self.fir:
            return self.conv(x) if self.conv is not None else fir_upsample_2d(x, self.kernel)
        x = naive_upsample_2d(x)
        return self.conv(x) if self.conv is not None else x


class Downsample(_Resample):
    """Downsample by 2: strided 3x3 convolution, average pooling, or their FIR-filtered versions."""

    direction = "down"

    def __init__(self, in_ch: int, out_ch: int | None = None, *, with_conv: bool = False, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__(in_ch, out_ch, with_conv, fir, fir_kernel, stride=2, padding=0)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``[B, in_ch, H, W]`` to ``[B, out_ch, H/2, W/2]``; ``temb`` is ignored."""
        if self.fir:
            return self.conv(x) if self.conv is not None else fir_downsample_2d(x, self.kernel)
        if self.conv is not None:
            return self.conv(F.pad(x, (0, 1, 0, 1)))  # TensorFlow "SAME" padding for a stride-2 conv
        return naive_downsample_2d(x)


# --------------------------------------------------------------------------------------------------- blocks
class AttnBlock(nn.Module):
    """Single-head self-attention over pixels with a residual connection (Ho et al. 2020, Appendix B).

    Args:
        channels: feature channels ``C``.
        skip_rescale: divide the residual sum by sqrt(2).
        init_scale: initial scale of the output projection (0 makes the block start as the identity).
    """

    def __init__(self, channels: int, *, skip_rescale: bool = False, init_scale: float = 0.0):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        for chunk in self.qkv.weight.data.chunk(3, dim=0):  # three C x C maps, each with its own fan
            default_init_(chunk, 0.1)
        nn.init.zeros_(self.qkv.bias)
        self.proj_out = linear(channels, channels, init_scale=init_scale)
        self.skip_scale = SKIP_SCALE if skip_rescale else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C, H, W]`` to ``[B, C, H, W]``."""
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        q, k, v = self.qkv(tokens).unsqueeze(1).chunk(3, dim=-1)  # each [B, 1, HW, C]
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # softmax(q k^T / sqrt(C)) v
        out = self.proj_out(out).transpose(1, 2).reshape(b, c, h, w)
        return (x + out) * self.skip_scale


class _ResidualBlock(nn.Module):
    """What both residual blocks end with: the time bias, norm, SiLU, dropout, the last convolution, and the sum
    with the (projected) input, rescaled. The layers are created in this order (the same random initialisation
    at a given seed), before the subclass adds its shortcut."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int | None, dropout: float, init_scale: float,
                 skip_rescale: bool):
        super().__init__()
        self.norm_0 = group_norm(in_ch)
        self.conv_0 = conv3x3(in_ch, out_ch)
        self.dense_0 = linear(temb_dim, out_ch) if temb_dim is not None else None
        self.norm_1 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        self.skip_scale = SKIP_SCALE if skip_rescale else 1.0

    def _residual(self, x: torch.Tensor, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        """``(shortcut(x) + conv_1(dropout(silu(norm_1(h + dense_0(silu(temb))))))) * skip_scale``."""
        if self.dense_0 is not None and temb is not None:
            h = h + self.dense_0(F.silu(temb))[:, :, None, None]
        h = self.conv_1(self.dropout(F.silu(self.norm_1(h))))
        skip = self.shortcut(x) if self.shortcut is not None else x
        return (skip + h) * self.skip_scale


class ResnetBlockDDPM(_ResidualBlock):
    """DDPM residual block: norm, SiLU, conv, + time bias, norm, SiLU, dropout, conv (Ho et al. 2020).

    Args:
        in_ch: input channels.
        out_ch: output channels (default ``in_ch``).
        temb_dim: size of the conditioning vector, or None for an unconditional block.
        conv_shortcut: use a 3x3 (instead of a 1x1) convolution on the skip path when channels change.
        dropout: dropout probability before the last convolution.
        skip_rescale: divide the residual sum by sqrt(2).
        init_scale: initial scale of the last convolution (0 starts the block as the identity).
    """

    def __init__(self, in_ch: int, out_ch: int | None = None, *, temb_dim: int | None = None,
                 conv_shortcut: bool = False, dropout: float = 0.1, skip_rescale: bool = False,
                 init_scale: float = 0.0):
        out_ch = out_ch or in_ch
        super().__init__(in_ch, out_ch, temb_dim, dropout, init_scale, skip_rescale)
        self.shortcut = None
        if in_ch != out_ch:
            self.shortcut = (conv3x3(in_ch, out_ch) if conv_shortcut
                             else conv1x1(in_ch, out_ch, init_scale=0.1))

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``[B, in_ch, H, W]`` (and ``temb`` ``[B, temb_dim]``) to ``[B, out_ch, H, W]``."""
        return self._residual(x, self.conv_0(F.silu(self.norm_0(x))), temb)


class ResnetBlockBigGAN(_ResidualBlock):
    """BigGAN-style residual block that can also resample by 2 (Brock et al. 2019; Song et al. 2021, App. H).

    Resampling (nearest/average or FIR) happens after the first activation, on both the residual branch and
    the skip path; the skip path then gets a 1x1 convolution.

    Args:
        in_ch: input channels.
        out_ch: output channels (default ``in_ch``).
        temb_dim: size of the conditioning vector, or None for an unconditional block.
        up: upsample by 2.
        down: downsample by 2.
        dropout: dropout probability before the last convolution.
        fir: resample with the FIR filter ``fir_kernel`` instead of nearest / average pooling.
        fir_kernel: 1-D taps of the FIR filter.
        skip_rescale: divide the residual sum by sqrt(2).
        init_scale: initial scale of the last convolution (0 starts the block as the identity).
    """

    def __init__(self, in_ch: int, out_ch: int | None = None, *, temb_dim: int | None = None,
                 up: bool = False, down: bool = False, dropout: float = 0.1, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1), skip_rescale: bool = True,
                 init_scale: float = 0.0):
        if up and down:
            raise ValueError("a block cannot both upsample and downsample")
        out_ch = out_ch or in_ch
        super().__init__(in_ch, out_ch, temb_dim, dropout, init_scale, skip_rescale)
        self.up, self.down, self.fir = up, down, fir
        self.shortcut = conv1x1(in_ch, out_ch) if (in_ch != out_ch or up or down) else None
        self.register_buffer("kernel", fir_kernel_2d(fir_kernel), persistent=False)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        """Apply this block's up/down sampling (or nothing) to ``[B, C, H, W]``."""
        if self.up:
            return fir_upsample_2d(x, self.kernel) if self.fir else naive_upsample_2d(x)
        if self.down:
            return fir_downsample_2d(x, self.kernel) if self.fir else naive_downsample_2d(x)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``[B, in_ch, H, W]`` (and ``temb`` ``[B, temb_dim]``) to ``[B, out_ch, H', W']``."""
        h = self._resample(F.silu(self.norm_0(x)))
        return self._residual(self._resample(x), self.conv_0(h), temb)


class Combine(nn.Module):
    """Merge a 1x1-projected input-pyramid image into the features by sum or concatenation (Song et al. 2021).

    Args:
        dim1: channels of the pyramid image.
        dim2: channels of the features.
        method: ``"sum"`` or ``"cat"``.
    """

    def __init__(self, dim1: int, dim2: int, method: str = "sum"):
        super().__init__()
        if method not in ("sum", "cat"):
            raise ValueError(f"method must be 'sum' or 'cat', got {method!r}")
        self.conv = conv1x1(dim1, dim2)
        self.method = method

    def forward(self, pyramid: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Combine ``[B, dim1, H, W]`` with ``[B, dim2, H, W]`` into ``[B, dim2 or 2 dim2, H, W]``."""
        p = self.conv(pyramid)
        return p + h if self.method == "sum" else torch.cat([p, h], dim=1)
