"""Inception-v3 features for FID and KID, as the literature computes them, loaded without running pickled code.

The network and weights are the ones papers report FID with: the TF-slim Inception-v3 of 2015-12-05 ported to
PyTorch by torch-fidelity (``pool3``, 2048 features), run through torchmetrics' ``NoTrainInceptionV3`` with
``antialias=False``: images are resized to 299 x 299 with TensorFlow-1's bilinear resize, which is what the TF
FID code, torch-fidelity and the score SDE paper's numbers use (torchmetrics' antialiased default departs from
them). Inputs are uint8 images in [0, 255]; grayscale is repeated to three channels.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from ..core.errors import UserError
from ..core.io import load_torch_file
from ..data.sources import socket_timeout

INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]
INCEPTION_SHA256_PREFIX = "6726825d"
PREPROCESSING = "uint8 RGB (gray repeated x3); TF1 bilinear resize to 299x299, no antialiasing; (x - 128) / 128"


def default_weights_file() -> Path:
    """Where downloaded weights are cached: torch's hub folder (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def _missing_weights(reason: str) -> UserError:
    return UserError(
        f"Inception-v3 weights are not available ({reason}). Either let scorelab download them once on a machine "
        f"with internet (they are cached in {default_weights_file()}; copy that file to the same place here), or "
        f"download {INCEPTION_URL} yourself and pass feature_extractor_weights_path=<file>")


def locate_weights(weights_path: str | os.PathLike | None = None, download: bool = True,
                   timeout: float = 30.0) -> Path:
    """The weights file to use: ``weights_path`` if given, else the hub cache, downloading into it if allowed.

    Raises:
        UserError: the given file is missing, or there is no cached copy and it cannot be downloaded; the message
            names both ways out (a machine with internet, or ``feature_extractor_weights_path``).
    """
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise UserError(f"feature_extractor_weights_path={path} does not exist: pass the Inception-v3 weights "
                            f"file ({INCEPTION_FILE}, from {INCEPTION_URL})")
        return path
    path = default_weights_file()
    if path.is_file():
        return path
    if not download:
        raise _missing_weights(f"no file at {path} and downloading is off")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with socket_timeout(timeout):
            torch.hub.download_url_to_file(INCEPTION_URL, str(path), hash_prefix=INCEPTION_SHA256_PREFIX)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:  # offline, refused, or a corrupt download
        raise _missing_weights(f"download failed: {type(exc).__name__}: {exc}") from None
    return path


def rgb_uint8(images: torch.Tensor, network: str) -> torch.Tensor:
    """Check that ``images`` are uint8 ``[B, 1 or 3, H, W]`` and return them with three contiguous channels (gray
    repeated), as the feature networks of FID and FD_DINOv2 take them."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{network} features need uint8 images [B, 1 or 3, H, W] in [0, 255], got "
                         f"{images.dtype} {tuple(images.shape)}")
    return (images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images).contiguous()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (the released Inception weights start with ``6726825d``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class InceptionFeatures(nn.Module):
    """The 2048 ``pool3`` features of Inception-v3 (2015-12-05 weights) for uint8 images of any size.

    A feature extractor for :class:`~scorelab.metrics.evaluation.SampleEvaluator`: ``forward`` maps uint8
    ``[B, C, H, W]`` (C = 1 or 3) to float32 ``[B, 2048]``. The weights are read with ``weights_only=True`` and
    identified by their SHA-256 in ``extractor_id``, so statistics made with other weights are never reused.

    Args:
        weights_path: a local copy of the weights (offline clusters); None: the hub cache, downloaded if missing.
        download: allow the download when ``weights_path`` is None and the cache is empty.
    """

    metric_name = "fid"
    kernel_metric_name = "kid"
    num_features = 2048
    preprocessing = PREPROCESSING

    def __init__(self, weights_path: str | os.PathLike | None = None, download: bool = True):
        super().__init__()
        import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
        from torchmetrics.image.fid import NoTrainInceptionV3

        path = locate_weights(weights_path, download)
        state = load_torch_file(path, "Inception weights")
        if not isinstance(state, dict):
            raise UserError(f"{path} does not hold a state dict of Inception-v3 weights")
        # torch-fidelity would torch.load the file itself with weights_only=False (or download it): hand it the
        # state dict read safely above instead.
        with mock.patch.object(tf_inception, "load_state_dict_from_url", lambda *args, **kwargs: state):
            try:
                self.net = NoTrainInceptionV3("inception-v3-compat", ["2048"], None, antialias=False)
            except RuntimeError as exc:  # wrong keys or shapes: not these weights
                raise UserError(f"{path} does not hold Inception-v3 weights of the FID network "
                                f"({str(exc).splitlines()[0]})") from None
        self.weights_path = str(path)
        self.extractor_id = f"inception-v3-compat-2048:{file_sha256(path)[:16]}"

    def train(self, mode: bool = True) -> InceptionFeatures:
        """Always in evaluation mode (batch-norm statistics are part of the metric's definition)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``[B, 2048]`` of uint8 images ``[B, 1 or 3, H, W]``."""
        return self.net(rgb_uint8(images, "Inception"))
