"""NCSN++: the VE score network of Song et al. 2021, Appendix H.2.

NCSN++ extends DDPM++ with Gaussian Fourier embeddings of ``log sigma`` (Tancik et al. 2020), FIR
anti-aliased resampling with the ``[1, 3, 3, 1]`` filter and a residual input pyramid (Karras et al. 2020,
StyleGAN2). Its CelebA-HQ / FFHQ variants add an output pyramid (``progressive="output_skip"``).
"""
from __future__ import annotations

from collections.abc import Sequence

from scorelab.models.unet import ScoreUNet


class NCSNpp(ScoreUNet):
    """NCSN++ (Song et al. 2021, Appendix H.2); defaults are the CIFAR-10 VE setting (62.8M parameters).

    A pure backbone: ``forward(x [B, C, H, W], noise_label [B]) -> [B, C, H, W]``, where the caller passes
    ``log sigma(t)`` for VE SDEs (no division by sigma here). See :class:`scorelab.models.unet.ScoreUNet`
    for every argument.
    """

    def __init__(self, *, in_channels: int = 3, image_size: int = 32, ch: int = 128,
                 ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 4,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
                 embedding_type: str = "fourier", fourier_scale: float = 16.0,
                 resblock_type: str = "biggan", resamp_with_conv: bool = True, fir: bool = True,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1), skip_rescale: bool = True,
                 progressive: str = "none", progressive_input: str = "residual",
                 progressive_combine: str = "sum", init_scale: float = 0.0):
        super().__init__(in_channels=in_channels, image_size=image_size, ch=ch, ch_mult=ch_mult,
                         num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions, dropout=dropout,
                         embedding_type=embedding_type, fourier_scale=fourier_scale,
                         resblock_type=resblock_type, resamp_with_conv=resamp_with_conv, fir=fir,
                         fir_kernel=fir_kernel, skip_rescale=skip_rescale, progressive=progressive,
                         progressive_input=progressive_input, progressive_combine=progressive_combine,
                         init_scale=init_scale)
