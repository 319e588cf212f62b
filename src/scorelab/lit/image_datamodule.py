"""Lightning data modules for images: MNIST, CIFAR-10, a generic ``.npz`` file, any torchvision dataset by class
name, and a folder of PNG/JPEG files.

Every module yields batches ``(x, y)``: ``x`` float32 ``[B, C, H, W]`` in ``data_range`` and ``y`` long
labels (``-1`` for unlabelled images). They expose ``sample_shape`` ``(C, H, W)``, ``data_range``
and ``num_classes`` (None when unlabelled) before ``setup`` is called, for building the model.

Splits: MNIST and CIFAR-10 use the official train/test sets; validation is a seeded hold-out of the
training set (``val_size`` images, or a fraction if in (0, 1); 0 disables validation). An ``.npz`` or a folder
is split the same way; its test set is ``test_path`` (none if unset). The random flip applies to training only;
dequantisation applies to every split (as in the score SDE reference, so likelihoods are on dequantised data).
Every module finds, fetches and reads its images through one :class:`~scorelab.data.sources.ImageSource`
(``source``): MNIST, CIFAR-10 and ``.npz`` images are held in memory as uint8; torchvision datasets and folders are
decoded image by image in the DataLoader workers (:class:`~scorelab.data.sources.LazyImages`). Missing files raise
the source's :class:`~scorelab.data.images.DatasetNotFoundError`.
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

from scorelab.data.images import DatasetNotFoundError, ImageTransform, UInt8ImageDataset, check_data_range
from scorelab.data.sources import (
    CIFAR10Source,
    FolderSource,
    ImageDecoder,
    ImageSource,
    MNISTSource,
    NpzSource,
    Split,
    TorchvisionSource,
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


def _short_hash(key: str) -> str:
    """8 hex digits of ``key``: another key, another value."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class ImageDataModule(L.LightningDataModule):
    """Shared logic of the image data modules; a subclass says only which :class:`ImageSource` it reads.

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
        download: Download missing files in ``prepare_data`` (sources that can: MNIST, CIFAR-10, torchvision).
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
        self._source: ImageSource | None = None

    # --- what a subclass provides -----------------------------------------------------------------
    def make_source(self) -> ImageSource:
        """The :class:`ImageSource` of this dataset; every subclass defines it. Building it must read no file."""
        raise TypeError(f"{type(self).__name__} does not define make_source(): subclass ImageDataModule with one")

    @property
    def source(self) -> ImageSource:
        """Where the images come from (:meth:`make_source`, built once): checks, fetches and reads every split."""
        if self._source is None:
            self._source = self.make_source()
        return self._source

    def _load(self, split: str) -> Split | None:
        """``(images uint8 [N, C, H, W], labels long [N] or None)`` of ``"train"`` or ``"test"``, or None when the
        split does not exist; read once, then kept by the source."""
        return self.source.load(split)

    # --- Lightning hooks --------------------------------------------------------------------------
    def check_available(self) -> None:
        """Refuse missing files before a run writes anything (with ``download`` set, ``prepare_data`` fetches them
        instead)."""
        if not (self.download and self.source.downloadable):  # a missing .npz or folder cannot be fetched
            self.source.ensure(False)

    def prepare_data(self) -> None:
        """Check the files once per node; download missing ones when ``download`` is set."""
        self.source.ensure(self.download)

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
            raise DatasetNotFoundError(f"{self.dataset_name} has no {split} split here (.npz and folder data have "
                                       "a test split only when data.test_path is set, a torchvision dataset when "
                                       "its class has one or data.split_kwargs.test names it)")
        if split == "val":
            _, val_idx = split_indices(loaded[0].shape[0], self.val_size, self.seed)
            return loaded[0].index_select(0, val_idx), None if loaded[1] is None else loaded[1][val_idx]
        return loaded

    # --- helpers ----------------------------------------------------------------------------------
    def _load_or_fetch(self, split: str) -> Split | None:
        """Load a split; used on its own (no Trainer, so no ``prepare_data``), fetch missing files first when
        ``download`` is set."""
        return self.source.load(split, download=self.download and self.trainer is None)

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

    def make_source(self) -> MNISTSource:
        return MNISTSource(self.data_dir)


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (50000 train / 10000 test, 3 x 32 x 32, 10 classes) from ``<data_dir>/cifar-10-batches-py``.

    Arguments as :class:`ImageDataModule`; the random flip is on by default.
    """

    sample_shape = (3, 32, 32)
    num_classes = 10

    def __init__(self, data_dir: str | os.PathLike, random_flip: bool = True, **kwargs):
        super().__init__(data_dir, random_flip=random_flip, **kwargs)

    def make_source(self) -> CIFAR10Source:
        return CIFAR10Source(self.data_dir)


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

    def make_source(self) -> NpzSource:
        return NpzSource(self.path, self.test_path)

    @property
    def dataset_name(self) -> str:
        """``npz-<file stem>-<8 hex digits of the path, size and modification time>``: another file, another name."""
        stat = self.path.stat() if self.path.is_file() else None
        key = f"{self.path.resolve()}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}"
        return f"npz-{self.path.stem}-{_short_hash(key)}"

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image of the training file."""
        return tuple(self._load("train")[0].shape[1:])

    @property
    def num_classes(self) -> int | None:
        """Configured number of classes, else ``max(y) + 1`` of the training file, or None if unlabelled."""
        return int(self._num_classes) if self._num_classes is not None else self.source.num_classes()


def _plain(value: Any) -> Any:
    """Config containers (DictConfig, ListConfig) as plain dicts and lists; anything else as it is."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


class LazyImageDataModule(ImageDataModule):
    """Shared logic of the data modules whose images are decoded on access
    (:class:`~scorelab.data.sources.LazyImages`): a subclass's :meth:`make_source` gives a
    :class:`~scorelab.data.sources.LazySource` that decodes with ``decoder``.

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

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image, known from the config or read from the first training image."""
        if self.channels is not None and self.image_size is not None:
            return (int(self.channels), self.image_size, self.image_size)
        return tuple(self._load("train")[0].image_shape)

    @property
    def num_classes(self) -> int | None:
        """Configured, else the dataset's class count (from its labels), or None when unlabelled."""
        return int(self._num_classes) if self._num_classes is not None else self.source.num_classes()

    def _tag(self, key: str) -> str:
        """``-<decoder tag>-<8 hex digits of key>``: what makes these images differ from the source's."""
        tag = self.decoder.describe()
        return (f"-{tag}" if tag else "") + (f"-{_short_hash(key)}" if key else "")


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
        self.name = name
        self.dataset_kwargs = dict(_plain(dataset_kwargs) or {})
        self.split_kwargs = _plain(split_kwargs)
        self.source  # noqa: B018 - an unknown class name or split argument fails here, before any file is read

    def make_source(self) -> TorchvisionSource:
        return TorchvisionSource(self.name, self.data_dir, self.decoder, self.dataset_kwargs, self.split_kwargs)

    @property
    def dataset_name(self) -> str:
        """The class name in lower case (``fashionmnist``), tagged with the size, channels and arguments when set."""
        source = self.source
        key = repr(sorted(source.dataset_kwargs.items())) if source.dataset_kwargs else ""
        if not source.detected:
            key += repr(sorted(source.split_kwargs.items(), key=lambda kv: kv[0]))
        return source.name.lower() + self._tag(key)


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

    def make_source(self) -> FolderSource:
        return FolderSource(self.path, self.test_path, self.decoder)

    @property
    def dataset_name(self) -> str:
        """``folder-<folder name>[-<size tag>]-<8 hex digits of its path and file list>``."""
        images = self._load("train")[0]
        return f"folder-{self.path.name}" + self._tag(images.source.fingerprint())
