"""fast_dev_run of every experiment config on CPU, with tiny widths and offline data."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from scorelab.cli import train
from scorelab.metrics.mnist_classifier import MNISTClassifier, save_mnist_classifier

from .platform_utils import CONF, make_cfg

SHARED_DATA = Path(os.environ.get("SCORELAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SHARED_MNIST = SHARED_DATA / "MNIST" / "raw"
# score-model experiments; the noisy classifiers of classifier guidance (*_classifier) train in
# tests/test_classifier_guidance.py, since they draw no samples
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if not p.stem.endswith("_classifier"))
TINY_IMAGE_NET = ["model.net.ch=16", "model.net.num_res_blocks=1", "model.net.dropout=0.0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A data folder with a copy of the real MNIST files and a small fake CIFAR-shaped .npz."""
    if not list(SHARED_MNIST.glob("*.gz")):
        pytest.skip(f"real MNIST files not found in {SHARED_MNIST} (set SCORELAB_SHARED_DATA to them)")
    root = tmp_path_factory.mktemp("data")
    (root / "MNIST" / "raw").mkdir(parents=True)
    for f in SHARED_MNIST.glob("*.gz"):
        shutil.copy(f, root / "MNIST" / "raw" / f.name)
    rng = np.random.default_rng(0)
    np.savez(root / "cifar_like.npz", x=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
             y=rng.integers(0, 10, 64))
    return root


@pytest.fixture(scope="module")
def untrained_mnist_classifier(tmp_path_factory) -> Path:
    """A randomly initialised fd_mnist classifier file: the MNIST experiments' FID callback loads it."""
    torch.manual_seed(0)
    return save_mnist_classifier(MNISTClassifier(channels=(4, 8, 8), num_features=8),
                                 tmp_path_factory.mktemp("classifier") / "mnist_classifier.pt", test_accuracy=0.0)


def image_overrides(name: str, data_dir: Path, classifier: Path | None = None) -> list[str]:
    """CPU, tiny network; CIFAR-10 is not available offline, so its experiments run on a CIFAR-shaped .npz."""
    overrides = ["trainer=cpu", "trainer.fast_dev_run=2", f"paths.data_dir={data_dir}", "data.num_workers=0",
                 "data.batch_size=4", "sampler.steps=3", "callbacks.samples.n_samples=4"] + TINY_IMAGE_NET
    if name == "mnist_small":  # the memory-format switch goes through the platform
        overrides += ["module.channels_last=true"]
    if name.startswith("mnist"):  # fd_mnist during training, on a few samples and reference images
        overrides += [f"feature_extractor_weights_path={classifier}", "callbacks.fid.n_samples=4",
                      "callbacks.fid.sampler.steps=2", "callbacks.fid.batch_size=4", "callbacks.fid.ref_count=64",
                      f"callbacks.fid.cache_dir={classifier.parent / 'cache'}"]
    if name.startswith("cifar10"):
        overrides += ["data=npz", "data.path=cifar_like.npz", "data.val_size=8"]
    if "ncsnpp" in name:
        overrides += ["model.net.attn_resolutions=[16]"]
    else:
        overrides += ["model.net.ch_mult=[1,2]", "model.net.attn_resolutions=[14]" if name.startswith("mnist")
                      else "model.net.attn_resolutions=[16]"]
    return overrides


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_fast_dev_run_every_experiment(tmp_path, request, name):
    overrides = [f"experiment={name}"]
    if name.startswith("toy"):
        overrides += ["trainer.fast_dev_run=2", "sampler.steps=5", "callbacks.toy_metrics.n_samples=200",
                      "callbacks.samples.n_samples=100", "data.n_train=2048", "data.n_val=256"]
    else:
        classifier = request.getfixturevalue("untrained_mnist_classifier") if name.startswith("mnist") else None
        overrides += image_overrides(name, request.getfixturevalue("data_dir"), classifier)  # real data: images only
    cfg = make_cfg(tmp_path, overrides)
    train(cfg)
    run = Path(cfg.paths.output_dir)
    assert (run / "samples" / "final.png").is_file()
    if name.startswith("toy"):
        assert (run / "metrics.json").is_file()
    if name.startswith("mnist"):  # the MNIST recipes score samples with the domain metric, never "FID"
        assert cfg.features._target_ == "scorelab.metrics.mnist_classifier.mnist_features"
        assert cfg.callbacks.fid.n_samples == 4  # the FID callback is part of the recipe (fast_dev_run skips it)
