"""DINOv2 features for FD_DINOv2 (Stein et al. 2023), loadable offline: ViT-S/14 by default, or the B, L or G models.

The preprocessing and the forward pass are torch-fidelity's ``FeatureExtractorDinoV2`` (uint8 RGB, TensorFlow-1
bilinear resize to 224 x 224, ImageNet normalisation, the class token after the final norm: 384 features).
torch-fidelity fetches the network with ``torch.hub.load("facebookresearch/dinov2", ...)``, which needs the internet
and refuses a local weights file; here the same ViT-S/14 is built by timm (whose ViT is the one DINOv2's code derives
from: the same parameter names, LayerScale and 1e-6 LayerNorms) from the released weights file
``dinov2_vits14_pretrain.pth``, read with ``weights_only=True``. The position embeddings of the released 518-pixel
model are interpolated to the 16 x 16 patches of a 224-pixel input once, as DINOv2's ``interpolate_pos_encoding``
does at every call (bicubic, scale factor ``(16 + 0.1) / 37``, no antialiasing), and the network is handed to
torch-fidelity's extractor in place of the hub download.

EDM2 (Karras et al. 2024) reports FD_DINOv2 with ViT-L/14 (``model=vit-l-14`` here) and a bicubic resize;
torch-fidelity's TF-1 bilinear resize and the smaller default network make values that compare with each other, not
with EDM2's.
"""
from __future__ import annotations

import math
import os
import urllib.error
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from ..core.errors import UserError
from ..core.io import load_torch_file
from ..data.sources import socket_timeout
from .inception import file_sha256, rgb_uint8

# model: (torch-fidelity's name, timm's architecture, the released weights' stem, features)
MODELS = {
    "vit-s-14": ("dinov2-vit-s-14", "vit_small_patch14_dinov2", "dinov2_vits14", 384),
    "vit-b-14": ("dinov2-vit-b-14", "vit_base_patch14_dinov2", "dinov2_vitb14", 768),
    "vit-l-14": ("dinov2-vit-l-14", "vit_large_patch14_dinov2", "dinov2_vitl14", 1024),
    "vit-g-14": ("dinov2-vit-g-14", "vit_giant_patch14_dinov2", "dinov2_vitg14", 1536),
}


def weights_url(model: str = "vit-s-14") -> str:
    """The released weights of a DINOv2 model."""
    stem = MODELS[model][2]
    return f"https://dl.fbaipublicfiles.com/dinov2/{stem}/{stem}_pretrain.pth"


DINOV2_URL = weights_url()
DINOV2_FILE = DINOV2_URL.rsplit("/", 1)[1]
PREPROCESSING = ("uint8 RGB (gray repeated x3); TF1 bilinear resize to 224x224; ImageNet mean/std; "
                 "ViT-S/14 class token after the final norm")
INPUT_SIZE, PATCH = 224, 14


def default_weights_file(model: str = "vit-s-14") -> Path:
    """Where downloaded weights are cached: torch's hub folder (``$TORCH_HOME/hub/checkpoints``), as torch.hub does."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights_url(model).rsplit("/", 1)[1]


def _missing_weights(reason: str, model: str) -> UserError:
    return UserError(
        f"DINOv2 weights are not available ({reason}). Either let scorelab download them once on a machine with "
        f"internet (they are cached in {default_weights_file(model)}; copy that file to the same place here), or "
        f"download {weights_url(model)} yourself and pass feature_extractor_weights_path=<file>")


def locate_weights(weights_path: str | os.PathLike | None = None, download: bool = True,
                   timeout: float = 60.0, model: str = "vit-s-14") -> Path:
    """The weights file: ``weights_path`` if given, else the hub cache, downloading into it if allowed."""
    url = weights_url(model)
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise UserError(f"feature_extractor_weights_path={path} does not exist: pass the DINOv2 {model} weights "
                            f"file ({url.rsplit('/', 1)[1]}, from {url})")
        return path
    path = default_weights_file(model)
    if path.is_file():
        return path
    if not download:
        raise _missing_weights(f"no file at {path} and downloading is off", model)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with socket_timeout(timeout):
            torch.hub.download_url_to_file(url, str(path))
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise _missing_weights(f"download failed: {type(exc).__name__}: {exc}", model) from None
    return path


def interpolate_position_embedding(pos_embed: torch.Tensor, grid: int = INPUT_SIZE // PATCH,
                                   offset: float = 0.1) -> torch.Tensor:
    """The class + ``grid x grid`` patch position embeddings ``[1, 1 + grid^2, D]`` from the released ``[1, 1 + M^2,
    D]``, as DINOv2's ``interpolate_pos_encoding``: bicubic with scale factor ``(grid + offset) / M``."""
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    m = int(math.isqrt(patches.shape[1]))
    if m * m != patches.shape[1]:
        raise ValueError(f"the position embedding has {patches.shape[1]} patches, not a square grid")
    if m == grid:
        return pos_embed
    scale = (grid + offset) / m
    image = patches.reshape(1, m, m, -1).permute(0, 3, 1, 2).float()
    image = nn.functional.interpolate(image, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    if image.shape[-2:] != (grid, grid):
        raise ValueError(f"interpolating {m}x{m} position embeddings gave {tuple(image.shape[-2:])}, not {grid}x{grid}")
    return torch.cat([cls, image.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos_embed.dtype)], dim=1)


def build_network(state: dict[str, torch.Tensor], model: str = "vit-s-14") -> nn.Module:
    """timm's ViT of ``model`` with the released DINOv2 weights, for 224-pixel inputs, returning the normed class
    token."""
    import timm

    model = timm.create_model(MODELS[model][1], pretrained=False, img_size=INPUT_SIZE, num_classes=0)
    state = {k: v for k, v in state.items() if k != "mask_token"}  # used by DINOv2's training only
    if "pos_embed" in state:
        state["pos_embed"] = interpolate_position_embedding(state["pos_embed"])
    model.load_state_dict(state, strict=True)
    return model


class DinoV2Features(nn.Module):
    """The DINOv2 features of uint8 images (384 for ViT-S/14), for ``fd_dinov2`` and ``kd_dinov2``.

    Args:
        weights_path: a local copy of the released weights (``dinov2_vits14_pretrain.pth`` for ViT-S/14; offline
            machines); None: the hub cache, downloaded if missing.
        download: allow the download when ``weights_path`` is None and the cache is empty.
        model: ``vit-s-14`` (default), ``vit-b-14``, ``vit-l-14`` (EDM2's) or ``vit-g-14``.
    """

    metric_name = "fd_dinov2"
    kernel_metric_name = "kd_dinov2"
    preprocessing = PREPROCESSING

    def __init__(self, weights_path: str | os.PathLike | None = None, download: bool = True,
                 model: str = "vit-s-14"):
        super().__init__()
        from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2

        if model not in MODELS:
            raise UserError(f"features.model must be one of {sorted(MODELS)}, got {model!r}")
        path = locate_weights(weights_path, download, model=model)
        state = load_torch_file(path, "DINOv2 weights")
        if not isinstance(state, dict):
            raise UserError(f"{path} does not hold a state dict of DINOv2 {model} weights")
        try:
            network = build_network(state, model)
        except (RuntimeError, ValueError) as exc:
            raise UserError(f"{path} does not hold DINOv2 {model} weights ({str(exc).splitlines()[0]})") from None
        # torch-fidelity would torch.hub.load the network (internet, remote code): hand it the one built above.
        with mock.patch.object(torch.hub, "load", lambda *args, **kwargs: network):
            self.net = FeatureExtractorDinoV2(MODELS[model][0], ["dinov2"])
        self.model, self.num_features = model, MODELS[model][3]
        self.weights_path = str(path)
        self.extractor_id = f"dinov2-{model}-224:{file_sha256(path)[:16]}"

    def train(self, mode: bool = True) -> DinoV2Features:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``[B, num_features]`` of uint8 images ``[B, 1 or 3, H, W]``."""
        (features,) = self.net(rgb_uint8(images, "DINOv2"))
        return features
