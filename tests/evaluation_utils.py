"""Shared by the evaluation tests: Inception weights written by the test, a cheap extractor, a tiny image run."""
from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn


def write_random_inception_weights(path: Path) -> Path:
    """Random weights of the FID Inception-v3 architecture (no download): torch-fidelity's weight loading is
    bypassed while the network is built, convolutions get a scale-preserving init so features are not ~0."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
    from torchmetrics.image.fid import NoTrainInceptionV3

    torch.manual_seed(0)
    with mock.patch.object(tf_inception, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None):
        net = NoTrainInceptionV3("inception-v3-compat", ["2048"], None, antialias=False)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


class ProjectionFeatures(nn.Module):
    """A cheap, fixed feature extractor (random projection of the pixels) following the extractor contract."""

    metric_name = "fd_proj"
    preprocessing = "uint8 / 255, flattened"

    def __init__(self, in_dim: int, num_features: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("W", torch.randn(in_dim, num_features, generator=g) / in_dim**0.5)
        self.num_features = num_features
        self.extractor_id = f"projection-{in_dim}x{num_features}:{seed}"
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.tanh(images.float().flatten(1) / 255.0 @ self.W * 4)


def write_images_npz(path: Path, n: int, size: int = 16, channels: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8), y=rng.integers(0, 10, n))
    return path


TINY_IMAGE_RUN = [
    "data=npz", "data.val_size=8", "data.batch_size=8", "data.num_workers=0",
    "model=unet_small", "model.net.ch=8", "model.net.num_res_blocks=1", "model.net.ch_mult=[1,2]",
    "model.net.attn_resolutions=[8]", "trainer.max_steps=2", "trainer.check_val_every_n_epoch=1",
    "trainer.enable_progress_bar=false", "sampler=euler_maruyama", "sampler.steps=3", "callbacks.samples.n_samples=4",
    "callbacks.toy_metrics=null", "optimized_metric=null",
]
