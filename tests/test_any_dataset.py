"""Any dataset: torchvision datasets by class name (data=torchvision), folders of images (data=folder), images
decoded on access, and the FID callback's domain metric on other data."""
from __future__ import annotations

import json
import pickle
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from scorelab.cli import train
from scorelab.data.images import NO_LABEL, DatasetNotFoundError, ImageTransform
from scorelab.data.sources import FolderImages, LazyImages, default_split_kwargs
from scorelab.lit.fid_callback import FIDCallback, domain_mismatch
from scorelab.lit.image_datamodule import FolderDataModule, MNISTDataModule, TorchvisionDataModule
from scorelab.metrics.mnist_classifier import MNISTFeatures
from scorelab.metrics.reference import reference_stats

from .evaluation_utils import TINY_IMAGE_RUN, ProjectionFeatures
from .platform_utils import CONF, make_cfg, run_script

N_TRAIN, N_TEST = 48, 16


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed uint8 IDX file (the MNIST format): magic 0x0800 | ndim, the dimensions, the bytes."""
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist_layout(root: Path, name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """``<root>/<name>/raw`` with the four extracted files torchvision's MNIST family checks for; returns them."""
    rng = np.random.default_rng(seed)
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        arrays[f"{prefix}-images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels"] = (np.arange(n) % 10).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", arrays[f"{prefix}-images"])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", arrays[f"{prefix}-labels"])
    return arrays


@pytest.fixture
def fashion(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "data"
    return root, write_mnist_layout(root, "FashionMNIST")


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def class_folder(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """16 x 16 RGB PNGs in two class subfolders (one nested a level deeper), plus a file that is not an image."""
    rng = np.random.default_rng(1)
    root = tmp_path / "pets"
    written = {}
    for cls, count in (("cat", 6), ("dog", 10)):
        for i in range(count):
            rel = f"{cls}/{'sub/' if i % 3 == 0 else ''}{i:02d}.png"
            written[rel] = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            write_png(root / rel, written[rel])
    (root / "cat" / "notes.txt").write_text("not an image")
    return root, written


# --- data=torchvision -------------------------------------------------------------------------------------------
def test_torchvision_dataset_by_name_reads_splits_labels_and_pixels(fashion):
    root, arrays = fashion
    dm = TorchvisionDataModule(root, name="FashionMNIST", batch_size=8, val_size=8)
    assert dm.sample_shape == (1, 28, 28) and dm.num_classes == 10 and dm.dataset_name == "fashionmnist"
    dm.setup()
    assert len(dm.train_set) == N_TRAIN - 8 and len(dm.val_set) == 8 and len(dm.test_set) == N_TEST  # train=False
    images, labels = dm.images("train")
    assert isinstance(images, LazyImages) and images.shape == (N_TRAIN, 1, 28, 28)
    assert torch.equal(images[:N_TRAIN], torch.from_numpy(arrays["train-images"])[:, None])
    assert labels.tolist() == arrays["train-labels"].tolist()
    test_images, test_labels = dm.images("test")
    assert torch.equal(test_images[3], torch.from_numpy(arrays["t10k-images"][3])[None])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and -1.0 <= x.min() and x.max() <= 1.0
    assert y.dtype == torch.long and 0 <= y.min() and y.max() <= 9
    val_images, val_labels = dm.images("val")
    assert isinstance(val_images, LazyImages) and len(val_images) == 8 and len(val_labels) == 8


def test_split_argument_is_detected_from_the_signature():
    import torchvision.datasets as tvd

    assert default_split_kwargs(tvd.FashionMNIST) == {"train": {"train": True}, "test": {"train": False}}
    assert default_split_kwargs(tvd.CelebA) == {"train": {"split": "train"}, "test": {"split": "test"}}
    assert default_split_kwargs(tvd.ImageFolder) == {"train": {}, "test": None}  # no split: no test set


def test_split_kwargs_override_and_no_test_split(fashion):
    root, _ = fashion
    dm = TorchvisionDataModule(root, name="FashionMNIST", split_kwargs={"train": {"train": False}, "test": None},
                               val_size=0)
    assert len(dm.images("train")[0]) == N_TEST and dm._load("test") is None
    assert dm.dataset_name.startswith("fashionmnist-") and dm.dataset_name != "fashionmnist"  # its own FID cache
    dm.setup()
    assert dm.test_set is None and dm.test_dataloader() == []
    with pytest.raises(ValueError, match="train and test"):
        TorchvisionDataModule(root, name="FashionMNIST", split_kwargs={"valid": {}})


def test_torchvision_resize_to_image_size_and_rgb(fashion):
    root, arrays = fashion
    dm = TorchvisionDataModule(root / "nowhere", name="FashionMNIST", image_size=32, channels=3)
    assert dm.sample_shape == (3, 32, 32)  # known from the config: the network is built without reading files
    dm = TorchvisionDataModule(root, name="FashionMNIST", image_size=16, val_size=0)
    assert dm.sample_shape == (1, 16, 16) and dm.dataset_name == "fashionmnist-16px"
    image = dm.images("train")[0][0]
    expected = np.asarray(Image.fromarray(arrays["train-images"][0]).resize((16, 16), Image.BICUBIC))
    assert image.shape == (1, 16, 16) and torch.equal(image[0], torch.from_numpy(expected))


def test_torchvision_trains_a_few_steps_from_the_mnist_recipe(fashion, tmp_path, monkeypatch):
    """experiment=mnist_small on Fashion-MNIST: trains; fd_mnist is left out with a warning, no classifier built."""
    root, _ = fashion
    monkeypatch.setenv("SCORELAB_CACHE", str(tmp_path / "cache"))
    cfg = make_cfg(tmp_path, [
        "experiment=mnist_small", "data=torchvision", "data.name=FashionMNIST", f"paths.data_dir={root}",
        "data.num_workers=0", "data.batch_size=8", "data.val_size=8", "trainer.max_steps=2",
        "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "sampler.steps=2",
        "callbacks.samples.n_samples=4", "model.net.ch=8", "model.net.num_res_blocks=1", "model.net.ch_mult=[1,2]",
        "model.net.attn_resolutions=[14]"])
    assert cfg.features._target_.endswith("mnist_features") and cfg.callbacks.fid is not None
    with pytest.warns(UserWarning, match="callbacks.fid is off for this run.*fashionmnist.*features=inception"):
        train(cfg)
    run = Path(cfg.paths.output_dir)
    metrics = json.loads((run / "final_metrics.json").read_text())
    assert metrics["global_step"] == 2 and not any("fd_mnist" in k for k in metrics)
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "samples" / "final.png").is_file()
    assert not (tmp_path / "cache").exists()  # the MNIST classifier was neither trained nor loaded


def test_domain_metric_applies_only_to_its_own_data(fashion, tmp_path):
    root, _ = fashion
    write_mnist_layout(root, "MNIST")
    fashion_dm = TorchvisionDataModule(root, name="FashionMNIST")
    assert "fashionmnist" in domain_mismatch(MNISTFeatures, fashion_dm)
    assert domain_mismatch({"_target_": "scorelab.metrics.mnist_classifier.mnist_features"}, fashion_dm)
    assert domain_mismatch(MNISTFeatures, MNISTDataModule(root)) is None
    assert domain_mismatch(MNISTFeatures, TorchvisionDataModule(root, name="MNIST")) is None  # the same digits
    assert domain_mismatch(ProjectionFeatures(4), fashion_dm) is None  # a general extractor applies to any data
    # used from Python, the callback turns itself off at setup with the same warning
    extractor = ProjectionFeatures(28 * 28)
    extractor.domain = "mnist"
    callback = FIDCallback(sampler=None, features=extractor, n_samples=4)
    trainer = types.SimpleNamespace(datamodule=fashion_dm)
    with pytest.warns(UserWarning, match="callbacks.fid is off"):
        callback.setup(trainer, None, "fit")
    assert callback.off and callback.evaluator is None and callback.evaluate(trainer, None) == {}


# --- data=folder ------------------------------------------------------------------------------------------------
def test_folder_with_class_subfolders_reads_labels_and_pixels(class_folder):
    root, written = class_folder
    dm = FolderDataModule(root.parent, path=root.name, val_size=4, batch_size=4)
    assert dm.sample_shape == (3, 16, 16) and dm.num_classes == 2
    images, labels = dm.images("train")
    source = images.source
    assert source.classes == ["cat", "dog"] and len(images) == len(written) == 16
    for i, rel in enumerate(source.paths):
        assert torch.equal(images[i], torch.from_numpy(written[rel]).permute(2, 0, 1))
        assert labels[i] == ["cat", "dog"].index(rel.split("/")[0])
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and set(y.tolist()) <= {0, 1}
    assert dm.dataset_name.startswith("folder-pets-")


def test_folder_without_subfolders_is_unlabelled_and_grayscale_kept(tmp_path):
    for i in range(5):
        write_png(tmp_path / "flat" / f"{i}.png", np.full((8, 8), 40 * i, dtype=np.uint8))
    write_png(tmp_path / "flat" / "more" / "5.jpg", np.full((8, 8), 200, dtype=np.uint8))
    dm = FolderDataModule(tmp_path, path="flat", val_size=0)
    assert dm.sample_shape == (1, 8, 8) and dm.num_classes is None
    images, labels = dm.images("train")
    assert len(images) == 6 and (labels == NO_LABEL).all()
    assert FolderDataModule(tmp_path, path="flat", channels=3).sample_shape == (3, 8, 8)


def test_resize_and_center_crop_to_image_size(tmp_path):
    """An 80 x 20 image, red at the sides and blue in the middle 40 x 20: centre-cropped it is all blue."""
    array = np.zeros((20, 80, 3), dtype=np.uint8)
    array[:, :20, 0] = array[:, 60:, 0] = 255
    array[:, 20:60, 2] = 255
    write_png(tmp_path / "wide" / "a.png", array)
    write_png(tmp_path / "wide" / "b.png", np.zeros((30, 30, 3), dtype=np.uint8))  # another size: resized too
    cropped = FolderDataModule(tmp_path, path="wide", image_size=10, val_size=0)
    assert cropped.sample_shape == (3, 10, 10)
    images = cropped.images("train")[0][:2]
    assert images.shape == (2, 3, 10, 10)
    assert (images[0, 2] == 255).all() and (images[0, 0] == 0).all()
    stretched = FolderDataModule(tmp_path, path="wide", image_size=10, center_crop=False, val_size=0)
    first = stretched.images("train")[0][0]
    assert first[0, :, 0].float().mean() > 200 and first[2, :, 5].float().mean() > 200  # sides red, middle blue
    with pytest.raises(ValueError, match="set data.image_size"):  # native sizes differ: one clear error
        FolderDataModule(tmp_path, path="wide", val_size=0).images("train")[0][:2]


def test_folder_trains_a_few_steps_through_the_config(class_folder, tmp_path):
    root, _ = class_folder
    overrides = [o for o in TINY_IMAGE_RUN if not o.startswith(("data=", "data.val_size"))]
    cfg = make_cfg(tmp_path, overrides + ["data=folder", f"data.path={root}", "data.val_size=4",
                                          "data.random_flip=true", "data.dequantize=true"])
    train(cfg)
    run = Path(cfg.paths.output_dir)
    assert json.loads((run / "final_metrics.json").read_text())["global_step"] == 2
    assert (run / "checkpoints" / "last.ckpt").is_file()


# --- errors -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [["data=torchvision", "data.name=FashionMNIST"], ["data=folder", "data.path=faces"]])
def test_missing_dataset_is_one_line_and_writes_nothing(tmp_path, data):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = data + ["model=unet_small", f"paths.data_dir={empty}"]
    res = run_script("train.py", args, cwd=tmp_path, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    if data[0] == "data=torchvision":
        assert f"{empty / 'FashionMNIST' / 'raw'}" in line and "train-images-idx3-ubyte" in line
        assert "torchvision.datasets.FashionMNIST(" in line and "download=True" in line
    else:
        assert f"No image folder at {empty / 'faces'}" in line and "data.path" in line
    assert list(empty.iterdir()) == []  # nothing downloaded or created
    assert not list((tmp_path / "logs").rglob("*.ckpt"))


def test_empty_folder_and_unknown_class_name_errors(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetNotFoundError, match="No PNG or JPEG files under .*empty"):
        _ = FolderDataModule(tmp_path, path="empty").sample_shape
    with pytest.raises(ValueError, match="'FashonMNIST' is not a torchvision dataset class: did you mean FashionMNIST"):
        TorchvisionDataModule(tmp_path, name="FashonMNIST")
    with pytest.raises(ValueError, match="not a torchvision dataset class"):
        TorchvisionDataModule(tmp_path, name="utils")  # a module of torchvision.datasets, not a dataset


# --- decoded on access ------------------------------------------------------------------------------------------
def test_modules_hold_paths_not_decoded_images(class_folder, fashion, monkeypatch):
    root, _ = class_folder
    decoded = []
    read = FolderImages.read
    monkeypatch.setattr(FolderImages, "read", lambda self, i: decoded.append(i) or read(self, i))
    dm = FolderDataModule(root.parent, path=root.name, val_size=0, batch_size=4, image_size=16, channels=3)
    dm.setup("fit")
    assert isinstance(dm.train_set.images, LazyImages) and decoded == []  # setup decodes nothing
    assert len(pickle.dumps(dm.train_set)) < 16 * 3 * 16 * 16  # what a worker or DDP rank receives: paths
    dm.train_set[(3, 7)]
    assert decoded == [3]
    # a torchvision dataset is rebuilt from its arguments in a spawned worker, not pickled with its arrays
    fashion_root, _ = fashion
    tv = TorchvisionDataModule(fashion_root, name="FashionMNIST", val_size=0)
    tv.setup("fit")
    state = pickle.loads(pickle.dumps(tv.train_set))
    assert state.images.source._dataset is None and len(pickle.dumps(tv.train_set)) < N_TRAIN * 28 * 28
    assert torch.equal(state.images[5], tv.train_set.images[5])
    loader = torch.utils.data.DataLoader(tv.train_set, batch_size=8, num_workers=1)
    assert next(iter(loader))[0].shape == (8, 1, 28, 28)  # decoded in the worker


def test_per_image_seeds_give_the_same_flip_and_dequantisation(class_folder):
    """The (index, seed) items of resumable training: the same seed, the same augmented image."""
    root, _ = class_folder
    dm = FolderDataModule(root.parent, path=root.name, val_size=0, random_flip=True, dequantize=True)
    dm.setup("fit")
    x1, y1 = dm.train_set[(2, 1234)]
    x2, y2 = dm.train_set[(2, 1234)]
    assert torch.equal(x1, x2) and y1 == y2
    expected = ImageTransform((-1.0, 1.0), True, True)(dm.train_set.images[2], torch.Generator().manual_seed(1234))
    assert torch.equal(x1, expected)
    assert not torch.equal(x1, dm.train_set[(2, 1235)][0])


def test_reference_statistics_of_images_decoded_on_access(class_folder, tmp_path):
    root, _ = class_folder
    dm = FolderDataModule(root.parent, path=root.name)
    extractor = ProjectionFeatures(3 * 16 * 16)
    stats, path = reference_stats(dm, "train", extractor, count=5, cache=tmp_path, batch_size=2, log=lambda _: None)
    assert stats.count == 5 and path.is_file() and extractor.calls == 3 and dm.dataset_name in path.name
    with pytest.raises(Exception, match="asked for 99 reference images"):
        reference_stats(dm, "train", extractor, count=99, cache=tmp_path, log=lambda _: None)


@pytest.mark.parametrize("name", ["torchvision", "folder"])
def test_configs_instantiate_without_reading_files(tmp_path, name):
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path / "absent")}, "data": OmegaConf.load(CONF / "data" /
                                                                                                   f"{name}.yaml")})
    dm = instantiate(cfg.data)
    assert type(dm).__name__.lower().startswith(name) and dm.data_range == (-1.0, 1.0)
    with pytest.raises(DatasetNotFoundError):
        _ = dm.sample_shape
