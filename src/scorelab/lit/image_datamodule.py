"""Lightning data modules for images: MNIST, CIFAR-10, a generic ``.npz`` file, any torchvision dataset by class
name, and a folder of PNG/JPEG files.

Every module yields batches ``(x, y)``: ``x`` float32 ``[B, C, H, W]`` in ``data_range`` and ``y`` long
labels (``-1`` for unlabelled images). They expose ``sample_shape`` ``(C, H, W)``, ``data_range``
and ``num_classes`` (None when unlabelled) before ``setup`` is called, for building the model.

Splits: MNIST and CIFAR-10 use the official train/test sets; validation is a seeded hold-out of the
training set (``val_size`` images, or a fraction if in (0, 1); 0 disables validation). An ``.npz`` or a folder
is split the same way; its test set is ``test_path`` (none if unset). The random flip applies to training only;
dequantisation applies to every split (as in the score SDE reference, so likelihoods are on dequantised data).
MNIST, CIFAR-10 and ``.npz`` images are held in memory as uint8; torchvision datasets and folders are decoded
image by image in the DataLoader workers (:class:`~scorelab.data.lazy_images.LazyImages`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from scorelab.data.images import (
    DatasetNotFoundError,
    ImageTransform,
    UInt8ImageDataset,
    check_data_range,
    ensure_cifar10,
    ensure_mnist,
    load_cifar10,
    load_mnist,
    load_npz,
)
from scorelab.data.lazy_images import (
    FolderImages,
    ImageDecoder,
    LazyImages,
    TorchvisionImages,
    build_torchvision,
    default_split_kwargs,
    torchvision_class,
)
from scorelab.domains import Images
from scorelab.lit.toy_datamodule import EpochSeededSampler, train_sampler


def split_indices(n: int, val_size: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into seeded train and validation indices (each sorted).

    Args:
        n: Number of items.
        val_size: Number of validation items (int >= 0), or a fraction in (0, 1).
        seed: Seed of the permutation.

    Returns:
        ``(train_indices, val_indices)`` as long tensors.
    """
    if isinstance(val_size, float) and 0.0 < val_size < 1.0:
        count = round(val_size * n)
    elif float(val_size) == int(val_size) and 0 <= int(val_size) < n:
        count = int(val_size)
    else:
        raise ValueError(f"val_size must be an integer in [0, {n}) or a fraction in (0, 1), got {val_size!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[count:].sort().values, perm[:count].sort().values


class ImageDataModule(L.LightningDataModule):
    """Shared logic of the image data modules; subclasses say how to fetch and load a split.

    Args:
        data_dir: Root data folder (torchvision layout).
        batch_size: Batch size of every split.
        num_workers: DataLoader worker processes (persistent when > 0).
        pin_memory: Pin host memory for faster transfers to the GPU.
        data_range: Pixel range ``(low, high)``: ``(-1, 1)`` for VP/sub-VP, ``(0, 1)`` for VE.
        random_flip: Random horizontal flip of training images.
        dequantize: Uniform dequantisation ``(x + U[0, 1)) / 256`` before scaling.
        val_size: Validation hold-out taken from the training set (count, or fraction in (0, 1); 0: none).
        seed: Seed of the train/validation split, of the per-epoch order and of each image's flip and
            dequantisation noise (drawn from ``(seed, epoch, image)``, so a resumed run sees the same batches).
        download: Download missing files in ``prepare_data`` (MNIST, CIFAR-10).
    """

    sample_shape: tuple[int, int, int]
    num_classes: int | None

    def __init__(self, data_dir: str | os.PathLike, batch_size: int = 128, num_workers: int = 0,
                 pin_memory: bool = False, data_range: Sequence[float] = (-1.0, 1.0),
                 random_flip: bool = False, dequantize: bool = False, val_size: float = 5000,
                 seed: int = 0, download: bool = False):
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.data_range = check_data_range(data_range)
        self.random_flip = bool(random_flip)
        self.dequantize = bool(dequantize)
        self.val_size = val_size
        self.seed = int(seed)
        self.download = bool(download)
        self.train_set: UInt8ImageDataset | None = None
        self.val_set: UInt8ImageDataset | None = None
        self.test_set: UInt8ImageDataset | None = None

    # --- what a subclass provides -----------------------------------------------------------------
    def _fetch(self, download: bool) -> None:
        """Check that the files are there; download missing ones if asked. Default: nothing."""

    def _load(self, split: str) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Return ``(images uint8 [N, C, H, W], labels long [N] or None)`` of ``"train"`` or ``"test"``,
        or None when the split does not exist. Every subclass defines it."""
        raise TypeError(f"{type(self).__name__} does not define _load(split): subclass ImageDataModule with one")

    # --- Lightning hooks --------------------------------------------------------------------------
    def check_available(self) -> None:
        """Refuse missing files before a run writes anything (with ``download`` set, ``prepare_data`` fetches them
        instead)."""
        if not self.download:
            self._fetch(False)

    def prepare_data(self) -> None:
        """Check the files once per node; download missing ones when ``download`` is set."""
        self._fetch(self.download)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits needed by ``stage`` ("fit", "validate", "test", "predict" or None for all)."""
        if stage in (None, "fit", "validate") and self.train_set is None:
            loaded = self._load_or_fetch("train")
            train_idx, val_idx = split_indices(loaded[0].shape[0], self.val_size, self.seed)
            full = UInt8ImageDataset(*loaded, transform=self._transform(train=True))
            self.train_set = full.subset(train_idx)
            self.val_set = full.subset(val_idx, self._transform(train=False)) if len(val_idx) else None
        if stage in (None, "test") and self.test_set is None:
            loaded = self._load_or_fetch("test")
            if loaded is not None:
                self.test_set = UInt8ImageDataset(*loaded, transform=self._transform(train=False))

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the last incomplete batch is dropped.

        The order and each image's random flip and dequantisation come from ``(seed, epoch, image)``, and on one
        device the epoch and the images already seen come from the trainer's step count, so a run resumed
        mid-epoch sees exactly the batches an uninterrupted one would, with any number of workers.
        """
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in a fixed order, or an empty list when ``val_size`` is 0."""
        if self.train_set is None:
            self.setup("validate")
        return self._loader(self.val_set, train=False) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader | list:
        """Test batches in a fixed order, or an empty list when there is no test set."""
        if self.test_set is None:
            self.setup("test")
        return self._loader(self.test_set, train=False) if self.test_set is not None else []

    # --- evaluation -------------------------------------------------------------------------------
    @property
    def domain(self) -> Images:
        """8-bit images of this dataset in ``data_range`` (:mod:`scorelab.domains`)."""
        return Images(self.dataset_name, self.data_range)

    @property
    def dataset_name(self) -> str:
        """A short name identifying the dataset (cache keys of FID statistics, result files)."""
        return type(self).__name__.removesuffix("DataModule").lower()

    def images(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor | None]:
        """The raw images of a split, as stored: uint8 ``[N, C, H, W]`` and labels ``[N]`` (or None).

        No scaling, flip or dequantisation: this is what FID statistics and likelihood evaluations start from.

        Args:
            split: ``"train"`` (the whole official training set, validation hold-out included, as FID reference
                statistics use it), ``"val"`` (the hold-out only) or ``"test"``.
        """
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {split!r}")
        loaded = self._load_or_fetch("test" if split == "test" else "train")
        if loaded is None:
            raise DatasetNotFoundError(f"{self.dataset_name} has no {split} split here "
                                       "(an .npz data module has a test split only when data.test_path is set)")
        if split == "val":
            _, val_idx = split_indices(loaded[0].shape[0], self.val_size, self.seed)
            return loaded[0].index_select(0, val_idx), None if loaded[1] is None else loaded[1][val_idx]
        return loaded

    # --- helpers ----------------------------------------------------------------------------------
    def _load_or_fetch(self, split: str) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Load a split; used on its own (no Trainer, so no ``prepare_data``), fetch first when allowed."""
        try:
            return self._load(split)
        except DatasetNotFoundError:
            if not self.download or self.trainer is not None:
                raise
        self.prepare_data()
        return self._load(split)

    def _transform(self, train: bool) -> ImageTransform:
        return ImageTransform(self.data_range, self.random_flip and train, self.dequantize)

    def _loader(self, dataset: UInt8ImageDataset, train: bool) -> DataLoader:
        sampler = self._train_sampler(len(dataset)) if train else None
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=train,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def _train_sampler(self, n: int) -> EpochSeededSampler:
        """Per-epoch permutation and per-image seeds derived from the training position (as the toy data's)."""
        return train_sampler(self.trainer, n, self.batch_size, self.seed, with_seeds=True)


class MNISTDataModule(ImageDataModule):
    """MNIST (60000 train / 10000 test, ``1 x 28 x 28``, 10 classes) from ``<data_dir>/MNIST/raw``.

    Arguments as :class:`ImageDataModule`; the flip is off by default (digits are not mirror-symmetric).
    """

    sample_shape = (1, 28, 28)
    num_classes = 10

    def _fetch(self, download: bool) -> None:
        ensure_mnist(self.data_dir, download)

    def _load(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return load_mnist(self.data_dir, split, download=False)


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (50000 train / 10000 test, 3 x 32 x 32, 10 classes) from ``<data_dir>/cifar-10-batches-py``.

    Arguments as :class:`ImageDataModule`; the random flip is on by default.
    """

    sample_shape = (3, 32, 32)
    num_classes = 10

    def __init__(self, data_dir: str | os.PathLike, random_flip: bool = True, **kwargs):
        super().__init__(data_dir, random_flip=random_flip, **kwargs)

    def _fetch(self, download: bool) -> None:
        ensure_cifar10(self.data_dir, download)

    def _load(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return load_cifar10(self.data_dir, split, download=False)


class NpzDataModule(ImageDataModule):
    """Images from ``.npz`` files (``x`` uint8 ``[N, H, W, C]`` or ``[N, H, W]``, optional labels ``y``).

    Without ``y`` every label is ``-1`` and ``num_classes`` is None. ``sample_shape`` and ``num_classes``
    read the training file on first access (it is then kept for ``setup``).

    Args:
        data_dir: Folder that relative paths are resolved against.
        path: Training file (split into train/validation by ``val_size`` and ``seed``).
        test_path: Optional test file; None: no test set.
        num_classes: Number of classes; None: ``max(y) + 1`` (or None without labels).
        val_size: As :class:`ImageDataModule`; default 10% of the file.
        **kwargs: The other arguments of :class:`ImageDataModule` (``download`` is ignored).
    """

    def __init__(self, data_dir: str | os.PathLike, path: str | os.PathLike = "train.npz",
                 test_path: str | os.PathLike | None = None, num_classes: int | None = None,
                 val_size: float = 0.1, **kwargs):
        super().__init__(data_dir, val_size=val_size, **kwargs)
        self.path = self.data_dir / Path(path).expanduser()
        self.test_path = self.data_dir / Path(test_path).expanduser() if test_path is not None else None
        self._num_classes = num_classes
        self._train_arrays: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @property
    def dataset_name(self) -> str:
        """``npz-<file stem>-<8 hex digits of the path, size and modification time>``: another file, another name."""
        import hashlib

        stat = self.path.stat() if self.path.is_file() else None
        key = f"{self.path.resolve()}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}"
        return f"npz-{self.path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"

    def _train(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._train_arrays is None:
            self._train_arrays = load_npz(self.path)
        return self._train_arrays

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image of the training file."""
        return tuple(self._train()[0].shape[1:])

    @property
    def num_classes(self) -> int | None:
        """Configured number of classes, else ``max(y) + 1`` of the training file, or None if unlabelled."""
        if self._num_classes is not None:
            return int(self._num_classes)
        labels = self._train()[1]
        return int(labels.max()) + 1 if labels is not None and len(labels) else None

    def _load(self, split: str) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        if split == "train":
            return self._train()
        return load_npz(self.test_path) if self.test_path is not None else None


def _plain(value: Any) -> Any:
    """Config containers (DictConfig, ListConfig) as plain dicts and lists; anything else as it is."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


class LazyImageDataModule(ImageDataModule):
    """Shared logic of the data modules whose images are decoded on access (:class:`LazyImages`).

    ``sample_shape`` is ``(channels, image_size, image_size)`` when both are set, else read from the first training
    image. Every image is converted to ``channels`` and, with ``image_size``, resized and centre-cropped.

    Args:
        data_dir: Root data folder.
        image_size: Side of the square images the model sees; None: the native size (every image must have it).
        channels: 1 (grayscale) or 3 (RGB); None: from the first image.
        center_crop: With ``image_size``: resize the shorter side and crop the centre (True) or stretch (False).
        num_classes: Number of classes; None: from the dataset's labels (None when unlabelled).
        **kwargs: The other arguments of :class:`ImageDataModule`.
    """

    def __init__(self, data_dir: str | os.PathLike, image_size: int | None = None, channels: int | None = None,
                 center_crop: bool = True, num_classes: int | None = None, **kwargs):
        super().__init__(data_dir, **kwargs)
        self.decoder = ImageDecoder(channels, image_size, center_crop)
        self.image_size, self.channels, self.center_crop = self.decoder.image_size, channels, bool(center_crop)
        self._num_classes = num_classes
        self._splits: dict[str, tuple[LazyImages, torch.Tensor | None] | None] = {}

    def _source(self, split: str):
        """The :class:`~scorelab.data.lazy_images.ImageSource` of a split, or None when it does not exist."""
        raise TypeError(f"{type(self).__name__} does not define _source(split)")

    def _load(self, split: str) -> tuple[LazyImages, torch.Tensor | None] | None:
        if split not in self._splits:
            source = self._source(split)
            images = LazyImages(source, self.decoder) if source is not None else None
            self._splits[split] = (images, images.labels()) if images is not None else None
        return self._splits[split]

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image, known from the config or read from the first training image."""
        if self.channels is not None and self.image_size is not None:
            return (int(self.channels), self.image_size, self.image_size)
        return tuple(self._load("train")[0].image_shape)

    @property
    def num_classes(self) -> int | None:
        """Configured, else the dataset's class count (from its labels), or None when unlabelled."""
        if self._num_classes is not None:
            return int(self._num_classes)
        images, labels = self._load("train")
        classes = getattr(images.source, "classes", None)
        if labels is None or not len(labels) or int(labels.max()) < 0:
            return None
        return len(classes) if classes else int(labels.max()) + 1

    def _tag(self, key: str) -> str:
        """``-<decoder tag>-<8 hex digits of key>``: what makes these images differ from the source's."""
        tag = self.decoder.describe()
        return (f"-{tag}" if tag else "") + (f"-{hashlib.sha256(key.encode()).hexdigest()[:8]}" if key else "")


class TorchvisionDataModule(LazyImageDataModule):
    """Any torchvision image dataset by class name (``FashionMNIST``, ``SVHN``, ``CelebA``, ``LSUN``, ...).

    ``torchvision.datasets.<name>(data_dir, **dataset_kwargs, **split_kwargs[split], download=...)`` builds each split.
    How a class takes the split is read from its signature: ``train=True/False`` or ``split="train"/"test"``; a
    class with neither has its whole dataset as training set and no test set. ``split_kwargs`` overrides this,
    e.g. ``{train: {split: train}, test: {split: valid}}`` (``test: null``: no test set). Images are read with
    ``dataset[i][0]`` (no torchvision transform) and decoded as :class:`LazyImageDataModule` says.

    Args:
        data_dir: The dataset's root folder (torchvision layout: e.g. ``<data_dir>/FashionMNIST/raw``).
        name: Class name in ``torchvision.datasets``.
        dataset_kwargs: Other constructor arguments of every split (e.g. ``{target_type: identity}``).
        split_kwargs: Constructor arguments of each split (``train``, ``test``); None: detected.
        **kwargs: ``image_size``, ``channels``, ``center_crop``, ``num_classes`` and the arguments of
            :class:`ImageDataModule` (``download=True`` fetches missing files with torchvision in ``prepare_data``).
    """

    def __init__(self, data_dir: str | os.PathLike, name: str = "FashionMNIST",
                 dataset_kwargs: Mapping[str, Any] | None = None,
                 split_kwargs: Mapping[str, Mapping[str, Any] | None] | None = None, **kwargs):
        super().__init__(data_dir, **kwargs)
        self.cls = torchvision_class(name)
        self.name = self.cls.__name__
        self.dataset_kwargs = dict(_plain(dataset_kwargs) or {})
        given = dict(_plain(split_kwargs) or {})
        unknown = sorted(set(given) - {"train", "test"})
        if unknown:
            raise ValueError(f"data.split_kwargs takes the keys train and test, got {unknown}")
        detected = default_split_kwargs(self.cls)
        self.split_kwargs = {s: given.get(s, detected[s]) for s in ("train", "test")}
        if self.split_kwargs["train"] is None:
            raise ValueError("data.split_kwargs.train cannot be null: the training split is needed")
        self._detected = not given

    def _kwargs(self, split: str) -> dict[str, Any] | None:
        extra = self.split_kwargs[split]
        return None if extra is None else {**self.dataset_kwargs, **dict(extra)}

    def _fetch(self, download: bool) -> None:
        if download:
            for split in ("train", "test"):
                if self._kwargs(split) is not None:
                    build_torchvision(self.cls, self.data_dir, self._kwargs(split), download=True)
        self._load("train")

    def _source(self, split: str) -> TorchvisionImages | None:
        kwargs = self._kwargs(split)
        return TorchvisionImages(self.name, self.data_dir, kwargs) if kwargs is not None else None

    @property
    def dataset_name(self) -> str:
        """The class name in lower case (``fashionmnist``), tagged with the size, channels and arguments when set."""
        key = repr(sorted(self.dataset_kwargs.items())) if self.dataset_kwargs else ""
        if not self._detected:
            key += repr(sorted(self.split_kwargs.items(), key=lambda kv: kv[0]))
        return self.name.lower() + self._tag(key)


class FolderDataModule(LazyImageDataModule):
    """The PNG/JPEG files under a folder, found recursively and decoded on access.

    When every image lies in a first-level subfolder, the subfolders are the classes (labels in sorted order);
    otherwise the images are unlabelled (label -1). The folder is split into train/validation by ``val_size`` and
    ``seed``; ``test_path`` is an optional second folder.

    Args:
        data_dir: Folder that relative paths are resolved against.
        path: The image folder.
        test_path: Optional folder of test images; None: no test set.
        val_size: As :class:`ImageDataModule`; default 10% of the images.
        **kwargs: ``image_size``, ``channels``, ``center_crop``, ``num_classes`` and the arguments of
            :class:`ImageDataModule` (``download`` is ignored).
    """

    def __init__(self, data_dir: str | os.PathLike, path: str | os.PathLike = "images",
                 test_path: str | os.PathLike | None = None, val_size: float = 0.1, **kwargs):
        super().__init__(data_dir, val_size=val_size, **kwargs)
        self.path = self.data_dir / Path(path).expanduser()
        self.test_path = self.data_dir / Path(test_path).expanduser() if test_path is not None else None

    def _source(self, split: str) -> FolderImages | None:
        if split == "train":
            return FolderImages(self.path)
        return FolderImages(self.test_path) if self.test_path is not None else None

    def _fetch(self, download: bool) -> None:
        self._load("train")

    @property
    def dataset_name(self) -> str:
        """``folder-<folder name>[-<size tag>]-<8 hex digits of its path and file list>``."""
        images = self._load("train")[0]
        return f"folder-{self.path.name}" + self._tag(images.source.fingerprint())
