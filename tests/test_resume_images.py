"""Exact resume for images: order, random flips, dequantisation and dropout follow the training position."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scorelab.cli import train
from scorelab.data.images import ImageTransform, UInt8ImageDataset
from scorelab.lit.toy_datamodule import EpochSeededSampler

from .platform_utils import make_cfg

# 40 training images of 1x8x8 (5 steps of 8 per epoch), flips, dequantisation and dropout on; a tiny DDPM++.
TINY_IMAGES = [
    "data=npz", "data.path=tiny.npz", "data.val_size=8", "data.batch_size=8", "data.num_workers=0",
    "data.pin_memory=false", "data.random_flip=true", "data.dequantize=true", "model=unet_small", "model.net.ch=8",
    "model.net.ch_mult=[1,2]", "model.net.num_res_blocks=1", "model.net.attn_resolutions=[]", "model.net.dropout=0.1",
    "sampler.steps=2", "callbacks.samples.n_samples=4", "callbacks.toy_metrics=null",
    "trainer.check_val_every_n_epoch=1", "trainer.enable_progress_bar=false", "logger=none", "scheduler=none",
    "optimizer.lr=1e-2"]


@pytest.fixture
def tiny_images(tmp_path) -> list[str]:
    x = np.random.default_rng(0).integers(0, 256, (48, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "tiny.npz", x=x)
    return TINY_IMAGES + [f"data.data_dir={tmp_path}"]


def _final(cfg) -> dict:
    return torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)


def test_image_run_resumed_mid_epoch_matches_the_uninterrupted_run(tmp_path, tiny_images):
    first = make_cfg(tmp_path / "a", tiny_images + ["trainer.max_steps=7"])  # stops in the middle of epoch 1
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    # The resumed run even loads its batches in two worker processes: the randomness must not live in them.
    resumed = make_cfg(tmp_path / "b", tiny_images + ["trainer.max_steps=12", f"ckpt_path={last}",
                                                      "data.num_workers=2"])
    train(resumed)
    straight = make_cfg(tmp_path / "c", tiny_images + ["trainer.max_steps=12"])
    train(straight)
    b, c = _final(resumed), _final(straight)
    assert b["global_step"] == c["global_step"] == 12
    for key, value in c["state_dict"].items():  # weights and EMA
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    for i, state in c["optimizer_states"][0]["state"].items():  # Adam moments
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(b["optimizer_states"][0]["state"][i][name], state[name], rtol=0, atol=0)


def test_image_seeds_give_one_flip_and_noise_per_image_and_epoch():
    images = torch.arange(64, dtype=torch.uint8).reshape(1, 1, 8, 8).repeat(32, 1, 1, 1)
    data = UInt8ImageDataset(images, transform=ImageTransform(random_flip=True, dequantize=True))
    order = list(EpochSeededSampler(32, seed=3, with_seeds=True))
    again = list(EpochSeededSampler(32, seed=3, with_seeds=True))
    assert order == again and sorted(i for i, _ in order) == list(range(32))
    first = torch.stack([data[item][0] for item in order])
    torch.testing.assert_close(first, torch.stack([data[item][0] for item in again]), rtol=0, atol=0)
    flipped = [bool(x[0, 0, 0] > x[0, 0, -1]) for x in first]  # the ramp runs right-to-left once flipped
    assert 4 < sum(flipped) < 28  # flips happen, about half the time
    sampler = EpochSeededSampler(32, seed=3, with_seeds=True)
    sampler.set_epoch(1)
    seeds = {i: s for i, s in order}
    assert all(s != seeds[i] for i, s in sampler)  # a new epoch draws new flips and noise for every image
