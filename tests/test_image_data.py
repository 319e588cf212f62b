"""Tests of the image datasets (scorelab.data.images), their sources (scorelab.data.sources) and data modules
(scorelab.lit.image_datamodule)."""

from __future__ import annotations

import gzip
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from scorelab.data.images import NO_LABEL, DatasetNotFoundError, ImageTransform, UInt8ImageDataset
from scorelab.data.sources import NpzImageDataset, image_source, load_mnist, load_npz
from scorelab.lit.image_datamodule import (
    CIFAR10DataModule,
    MNISTDataModule,
    NpzDataModule,
    split_indices,
)

SHARED = Path(os.environ.get("SCORELAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MNIST_RAW = SHARED / "MNIST" / "raw"
CIFAR_PARTIAL = SHARED / "cifar10-partial" / "cifar10_partial_train_first4000.npz"
CONF = Path(__file__).resolve().parents[1] / "conf" / "data"


def build_image_dataset(name: str, data_dir, split: str = "train", download: bool = False) -> UInt8ImageDataset:
    """A split of the source named ``name`` as a dataset of ``(x, y)`` pairs in ``[-1, 1]``."""
    return UInt8ImageDataset(*image_source(name, data_dir).load(split, download))


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    """A data folder holding a copy of the shared MNIST .gz files (extracted on first use)."""
    if len(list(MNIST_RAW.glob("*-ubyte.gz"))) != 4:
        pytest.skip(f"MNIST .gz files not found in {MNIST_RAW}")
    root = tmp_path_factory.mktemp("data")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in MNIST_RAW.glob("*.gz"):
        shutil.copy(gz, raw / gz.name)
    return root


@pytest.fixture
def npz_files(tmp_path) -> dict[str, Path]:
    """Small fake .npz files: labelled RGB, unlabelled grayscale, and malformed ones."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    names = ("rgb", "gray", "wrong_key", "wrong_dtype", "wrong_ndim")
    files = {name: tmp_path / f"{name}.npz" for name in names}
    np.savez(files["rgb"], x=x, y=np.arange(40) % 4)
    np.savez(files["gray"], x=x[..., 0])
    np.savez(files["wrong_key"], images=x)
    np.savez(files["wrong_dtype"], x=x.astype(np.float32))
    np.savez(files["wrong_ndim"], x=x.reshape(40, -1))
    return files


@pytest.fixture(scope="module")
def cifar_npz(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The first 500 images of the shared CIFAR-10 subset as an .npz (x [N, 32, 32, 3]), plus all 4000."""
    if not CIFAR_PARTIAL.is_file():
        pytest.skip(f"{CIFAR_PARTIAL} not found")
    with np.load(CIFAR_PARTIAL) as f:
        rows, labels = f["data"], f["labels"]
    images = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    path = tmp_path_factory.mktemp("cifar") / "cifar_first500.npz"
    np.savez(path, x=images[:500], y=labels[:500])
    return path, images


def test_mnist_dataset_sizes_mean_and_labels(mnist_dir):
    train = build_image_dataset("mnist", mnist_dir, "train")
    test = build_image_dataset("mnist", mnist_dir, "test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.sample_shape == (1, 28, 28)
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    mean = train.images.double().mean().item() / 255.0
    assert abs(mean - 0.1307) < 1e-3
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.item() == 5
    assert x.min() == -1.0 and x.max() == 1.0


def test_mnist_gz_read_in_place_matches_torchvision_on_extracted(mnist_dir, tmp_path):
    raw = mnist_dir / "MNIST" / "raw"
    before = sorted(p.name for p in raw.iterdir())
    images, labels = load_mnist(mnist_dir, "test")
    assert sorted(p.name for p in raw.iterdir()) == before  # .gz files are read in place, nothing written
    extracted = tmp_path / "MNIST" / "raw"
    extracted.mkdir(parents=True)
    for gz in raw.glob("*.gz"):
        with gzip.open(gz, "rb") as src:
            (extracted / gz.stem).write_bytes(src.read())
    tv_images, tv_labels = load_mnist(tmp_path, "test")  # all four extracted: read by torchvision
    assert torch.equal(images, tv_images) and torch.equal(labels, tv_labels)
    assert images.shape == (10000, 1, 28, 28) and abs(images.double().mean().item() / 255 - 0.1325) < 1e-3


def test_mnist_corrupted_file_gives_clear_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / f"{name}.gz").write_bytes(b"not gzip")
    with pytest.raises(DatasetNotFoundError, match="unreadable") as info:
        load_mnist(tmp_path, "train")
    assert "torchvision.datasets.MNIST(" in str(info.value)


@pytest.mark.parametrize("data_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_mnist_datamodule_batches(mnist_dir, data_range):
    dm = MNISTDataModule(mnist_dir, batch_size=16, data_range=data_range, val_size=5000)
    assert dm.sample_shape == (1, 28, 28) and dm.num_classes == 10 and dm.data_range == data_range
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 55000 and len(dm.val_set) == 5000
    assert len(dm.train_set) + len(dm.val_set) == 60000
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.long
    assert x.min() >= data_range[0] and x.max() <= data_range[1]
    assert x.min() == data_range[0] and x.max() == data_range[1]  # MNIST has black and white pixels
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape == (16, 1, 28, 28)
    dm.setup("test")
    assert len(dm.test_set) == 10000


def test_split_is_seeded_and_disjoint():
    tr, va = split_indices(100, 10, seed=3)
    tr2, va2 = split_indices(100, 10, seed=3)
    assert torch.equal(va, va2) and torch.equal(tr, tr2)
    assert not torch.equal(va, split_indices(100, 10, seed=4)[1])
    assert len(va) == 10 and len(tr) == 90 and len(set(tr.tolist()) | set(va.tolist())) == 100
    assert len(split_indices(100, 0.25, seed=0)[1]) == 25
    assert len(split_indices(100, 0, seed=0)[1]) == 0
    with pytest.raises(ValueError, match="val_size"):
        split_indices(100, 100, seed=0)


def test_missing_data_error_names_folder_and_command(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        build_image_dataset("mnist", empty, "train")
    message = str(info.value)
    assert str(empty / "MNIST" / "raw") in message and "train-images-idx3-ubyte" in message
    assert "torchvision.datasets.MNIST(" in message and "download=True" in message
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(DatasetNotFoundError) as info:
        build_image_dataset("cifar10", empty, "test")
    assert str(empty / "cifar-10-batches-py") in str(info.value)
    assert "torchvision.datasets.CIFAR10(" in str(info.value) and "data_batch_1" in str(info.value)
    dm = MNISTDataModule(empty)
    with pytest.raises(DatasetNotFoundError, match="MNIST"):
        dm.setup("fit")


@pytest.fixture
def no_network(monkeypatch):
    """Make every urllib request fail at once, as on a machine without network."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network unreachable (simulated)")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_download_without_network_raises_clear_error(tmp_path, no_network, name):
    with pytest.raises(DatasetNotFoundError) as info:
        build_image_dataset(name, tmp_path, "train", download=True)
    message = str(info.value)
    assert "download failed" in message and str(tmp_path) in message and "download=True" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_datamodule_download_without_network(tmp_path, no_network):
    dm = MNISTDataModule(tmp_path, download=True)
    with pytest.raises(DatasetNotFoundError, match="download failed"):
        dm.prepare_data()
    with pytest.raises(DatasetNotFoundError, match="download failed"):
        dm.setup("fit")  # standalone use: setup fetches first when download=True


def test_npz_dataset_shapes_range_labels(npz_files):
    rgb = NpzImageDataset(npz_files["rgb"], ImageTransform((0.0, 1.0)))
    assert len(rgb) == 40 and rgb.sample_shape == (3, 8, 8) and rgb.has_labels
    x, y = rgb[5]
    assert x.shape == (3, 8, 8) and 0.0 <= x.min() and x.max() <= 1.0 and y.item() == 1
    raw = np.load(npz_files["rgb"])["x"][5]
    assert torch.allclose(x, torch.from_numpy(raw).permute(2, 0, 1).float() / 255.0)
    gray = NpzImageDataset(npz_files["gray"])
    assert gray.sample_shape == (1, 8, 8) and not gray.has_labels
    x, y = gray[0]
    assert x.shape == (1, 8, 8) and -1.0 <= x.min() and x.max() <= 1.0 and y.item() == NO_LABEL


@pytest.mark.parametrize("name, match", [("wrong_key", "no array 'x'"), ("wrong_dtype", "float32"),
                                         ("wrong_ndim", "shape")])
def test_npz_malformed_file_errors(npz_files, name, match):
    with pytest.raises(ValueError, match=match) as info:
        load_npz(npz_files[name])
    assert "expected key 'x'" in str(info.value)


def test_npz_missing_file_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="numpy.savez"):
        NpzDataModule(tmp_path, path="nothing.npz").setup("fit")


def test_npz_datamodule_split_and_labels(npz_files):
    dm = NpzDataModule(npz_files["rgb"].parent, path="rgb.npz", batch_size=8, val_size=0.25, seed=1)
    assert dm.sample_shape == (3, 8, 8) and dm.num_classes == 4
    dm.setup("fit")
    assert len(dm.train_set) == 30 and len(dm.val_set) == 10
    other = NpzDataModule(npz_files["rgb"].parent, path="rgb.npz", val_size=0.25, seed=1)
    other.setup("fit")
    assert torch.equal(dm.val_set.indices, other.val_set.indices)
    assert set(dm.val_set.indices.tolist()).isdisjoint(dm.train_set.indices.tolist())
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and all(b[0].shape == (8, 3, 8, 8) for b in batches)  # drop_last
    assert dm.test_dataloader() == []
    unlabelled = NpzDataModule(npz_files["gray"].parent, path="gray.npz", batch_size=4, val_size=0)
    assert unlabelled.num_classes is None and unlabelled.sample_shape == (1, 8, 8)
    _, y = next(iter(unlabelled.train_dataloader()))
    assert (y == NO_LABEL).all() and unlabelled.val_dataloader() == []


def test_cifar_subset_through_npz_datamodule(cifar_npz):
    path, all_images = cifar_npz
    means = all_images.reshape(-1, 3).mean(axis=0) / 255.0
    assert np.allclose(means, [0.4916, 0.4818, 0.4447], atol=1e-3)
    assert all_images[0, 0, :3, 0].tolist() == [59, 43, 50]  # first red values of data_batch_1
    dm = NpzDataModule(path.parent, path=path.name, batch_size=32, val_size=0, random_flip=True)
    assert dm.sample_shape == (3, 32, 32) and dm.num_classes == 10
    dm.setup("fit")
    assert dm.train_set.labels[:5].tolist() == [6, 9, 9, 4, 1]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 3, 32, 32) and y.dtype == torch.long and -1.0 <= x.min() and x.max() <= 1.0


def test_cifar10_datamodule_defaults():
    dm = CIFAR10DataModule("unused")
    assert dm.random_flip and dm.sample_shape == (3, 32, 32) and dm.num_classes == 10
    assert dm.data_range == (-1.0, 1.0)


def test_random_flip(npz_files):
    torch.manual_seed(0)
    exact = NpzImageDataset(npz_files["rgb"])
    flipping = exact.subset(None, ImageTransform(random_flip=True))
    unflipped = torch.stack([exact[i][0] for i in range(40)])
    flipped = torch.stack([flipping[i][0] for i in range(40)])
    same = (flipped == unflipped).flatten(1).all(1)
    mirrored = (flipped == unflipped.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and mirrored.any() and same.any()
    assert torch.equal(unflipped, torch.stack([exact[i][0] for i in range(40)]))  # flip off: exact


def test_datamodule_flip_only_in_training(npz_files):
    dm = NpzDataModule(npz_files["rgb"].parent, path="rgb.npz", val_size=10, random_flip=True)
    dm.setup("fit")
    assert dm.train_set.transform.random_flip and not dm.val_set.transform.random_flip


def test_dequantisation_leaves_the_grid_and_stays_in_range(npz_files):
    torch.manual_seed(0)
    for low, high in [(-1.0, 1.0), (0.0, 1.0)]:
        ds = NpzImageDataset(npz_files["rgb"], ImageTransform((low, high), dequantize=True))
        x = torch.stack([ds[i][0] for i in range(40)])
        assert low <= x.min() and x.max() < high
        unit = (x - low) / (high - low)
        assert (((unit * 255) - (unit * 255).round()).abs() > 1e-3).float().mean() > 0.9
        raw = torch.from_numpy(np.load(npz_files["rgb"])["x"]).permute(0, 3, 1, 2)
        assert ((unit * 256).floor() == raw).float().mean() > 0.999  # (x + u) / 256 keeps the pixel's bin


def test_invalid_arguments():
    with pytest.raises(ValueError, match="data_range"):
        ImageTransform((1.0, -1.0))
    with pytest.raises(ValueError, match="split"):
        build_image_dataset("npz", "x.npz", "val")
    with pytest.raises(ValueError, match="Unknown image dataset"):
        build_image_dataset("imagenet", ".", "train")


def test_trainer_runs_with_npz_datamodule(npz_files):
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, batch_idx):
            return ((batch[0] - self.w) ** 2).mean()

        def validation_step(self, batch, batch_idx):
            self.log("val", ((batch[0] - self.w) ** 2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    for val_size in (10, 0):
        dm = NpzDataModule(npz_files["rgb"].parent, path="rgb.npz", batch_size=8, val_size=val_size)
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(Tiny(), datamodule=dm)
        assert trainer.global_step == (30 if val_size else 40) // 8


@pytest.mark.parametrize("name", ["mnist", "cifar10", "npz"])
def test_hydra_configs_instantiate(tmp_path, name):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    data = OmegaConf.load(CONF / f"{name}.yaml")
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "data": data})
    dm = instantiate(cfg.data)
    assert dm.data_dir == tmp_path and dm.data_range == (-1.0, 1.0) and dm.num_workers == 4
    assert type(dm).__name__.lower().startswith(name)
