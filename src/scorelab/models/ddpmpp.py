"""DDPM++: the VP / sub-VP score network of Song et al. 2021, Appendix H.2.

DDPM++ is the DDPM U-Net (Ho et al. 2020) with BigGAN residual blocks that resample, residual sums rescaled
by 1/sqrt(2), GroupNorm with up to 32 groups, and sinusoidal embeddings of the label ``999 t``.
"""
from __future__ import annotations

from collections.abc import Sequence

from scorelab.models.unet import ScoreUNet


class DDPMpp(ScoreUNet):
    """DDPM++ (Song et al. 2021, Appendix H.2); defaults are the CIFAR-10 VP setting (61.8M parameters).

    A pure backbone: ``forward(x [B, C, H, W], noise_label [B]) -> [B, C, H, W]``, where the caller passes
    ``999 t`` for VP / sub-VP SDEs. See :class:`scorelab.models.unet.ScoreUNet` for every argument.
    """

    def __init__(self, *, in_channels: int = 3, image_size: int = 32, ch: int = 128,
                 ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 4,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
                 embedding_type: str = "positional", fourier_scale: float = 16.0,
                 resblock_type: str = "biggan", resamp_with_conv: bool = True, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1), skip_rescale: bool = True,
                 progressive: str = "none", progressive_input: str = "none", progressive_combine: str = "sum",
                 init_scale: float = 0.0):
        super().__init__(in_channels=in_channels, image_size=image_size, ch=ch, ch_mult=ch_mult,
                         num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions, dropout=dropout,
                         embedding_type=embedding_type, fourier_scale=fourier_scale,
                         resblock_type=resblock_type, resamp_with_conv=resamp_with_conv, fir=fir,
                         fir_kernel=fir_kernel, skip_rescale=skip_rescale, progressive=progressive,
                         progressive_input=progressive_input, progressive_combine=progressive_combine,
                         init_scale=init_scale)
