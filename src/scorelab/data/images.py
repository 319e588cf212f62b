"""Image datasets (MNIST, CIFAR-10, generic ``.npz``) held as uint8 tensors, with a scaling transform.

Pure PyTorch/torchvision, no Lightning. Images stay in memory as uint8 ``[N, C, H, W]``;
:class:`ImageTransform` turns one into floats in ``data_range`` (optional flip, dequantisation), avoiding PIL.
Missing files are detected before torchvision is called and raise :class:`DatasetNotFoundError`, whose message
names the folder, the files expected and the command that fetches them; failed downloads raise it too.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

NO_LABEL = -1
"""Label given to every image of an ``.npz`` file that has no ``y`` array."""

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
SPLITS = ("train", "test")


class DatasetNotFoundError(FileNotFoundError):
    """Dataset files are missing (or could not be downloaded); the message says how to get them."""


def check_data_range(data_range: Sequence[float]) -> tuple[float, float]:
    """Validate a pixel range.

    Args:
        data_range: Two numbers ``(low, high)`` with ``low < high`` (a list from a config is fine).

    Returns:
        The range as a tuple of two floats.
    """
    values = tuple(float(v) for v in data_range)
    if len(values) != 2 or not values[0] < values[1]:
        raise ValueError(f"data_range must be two numbers (low, high) with low < high, got {data_range!r}")
    return values


class ImageTransform:
    """Turn one uint8 image ``[C, H, W]`` into floats in ``data_range``.

    Without dequantisation a pixel ``x`` maps to ``x / 255``; with it, to ``(x + u) / 256`` with
    ``u ~ U[0, 1)`` (as the score SDE reference does); the unit value is then mapped linearly onto
    ``data_range``. The random flip mirrors the width axis with probability 1/2.

    Args:
        data_range: Output range, ``(-1, 1)`` for VP/sub-VP or ``(0, 1)`` for VE.
        random_flip: Randomly flip images horizontally.
        dequantize: Add uniform noise before scaling.
    """

    def __init__(self, data_range: Sequence[float] = (-1.0, 1.0), random_flip: bool = False,
                 dequantize: bool = False):
        self.data_range = check_data_range(data_range)
        self.random_flip = bool(random_flip)
        self.dequantize = bool(dequantize)

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply the transform.

        Args:
            image: uint8 tensor ``[C, H, W]``.
            generator: source of the flip and dequantisation noise (default: the global generator).

        Returns:
            float32 tensor ``[C, H, W]`` in ``data_range``.
        """
        if self.random_flip and torch.rand((), generator=generator) < 0.5:
            image = image.flip(-1)
        x = image.float()
        x = (x + torch.rand(x.shape, generator=generator)) / 256.0 if self.dequantize else x / 255.0
        low, high = self.data_range
        return x * (high - low) + low


class UInt8ImageDataset(Dataset):
    """Images ``uint8 [N, C, H, W]`` with long labels, yielding ``(x, y)`` pairs.

    Args:
        images: uint8 tensor ``[N, C, H, W]`` (shared, never copied, by :meth:`subset`), or images decoded on access
            with the same interface (:class:`~scorelab.data.lazy_images.LazyImages`: each item is decoded when read).
        labels: long tensor ``[N]``, or None for unlabelled data (every label is then ``NO_LABEL``).
        transform: Callable on one uint8 image (with ``generator=`` too, for ``(index, seed)`` items); default
            ``ImageTransform()`` (range ``[-1, 1]``).
        indices: Optional long tensor selecting a subset of ``images``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None, transform=None,
                 indices: torch.Tensor | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels is None:
            labels = torch.full((images.shape[0],), NO_LABEL, dtype=torch.long)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape [{images.shape[0]}], got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.transform = transform if transform is not None else ImageTransform()
        self.indices = indices

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """The shape ``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else self.images.shape[0]

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``index`` transformed; ``(index, seed)`` draws its flip and dequantisation from ``seed`` alone."""
        if isinstance(index, (tuple, list)):
            index, seed = index
            generator = torch.Generator().manual_seed(int(seed))
            i = int(self.indices[index]) if self.indices is not None else int(index)
            return self.transform(self.images[i], generator=generator), self.labels[i]
        i = int(self.indices[index]) if self.indices is not None else index
        return self.transform(self.images[i]), self.labels[i]

    def subset(self, indices: torch.Tensor | None, transform=None) -> UInt8ImageDataset:
        """Return a view on some of the images (of the full arrays) with its own transform.

        Args:
            indices: Long tensor of indices into the full arrays, or None for all.
            transform: Transform of the view; default: this dataset's.

        Returns:
            A dataset sharing this one's storage.
        """
        return UInt8ImageDataset(self.images, self.labels, transform or self.transform, indices)


def load_npz(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read an ``.npz`` of images: ``x`` uint8 ``[N, H, W, C]`` or ``[N, H, W]``, optional integer ``y [N]``.

    Args:
        path: The ``.npz`` file.

    Returns:
        ``(images, labels)``: uint8 ``[N, C, H, W]`` and long ``[N]`` (None when the file has no ``y``).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(
            f"No .npz file at {path}. Expected 'x' (uint8 [N, H, W, C] or [N, H, W]) and optionally 'y' "
            f"(integer labels [N]); write one with numpy.savez('{path}', x=images_uint8, y=labels).")
    fmt = "expected key 'x' (uint8 [N, H, W, C] or [N, H, W]) and optional 'y' (integer [N])"
    with np.load(path, allow_pickle=False) as npz:
        if "x" not in npz.files:
            raise ValueError(f"{path}: no array 'x' (keys: {npz.files}); {fmt}.")
        x = npz["x"]
        y = npz["y"] if "y" in npz.files else None
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise ValueError(f"{path}: 'x' is {x.dtype} with shape {x.shape}; {fmt}.")
    x = x[..., None] if x.ndim == 3 else x
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if y is None:
        return images, None
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise ValueError(f"{path}: 'y' is {y.dtype} with shape {y.shape}; expected non-negative integers "
                         f"of shape ({x.shape[0]},).")
    return images, torch.from_numpy(y.astype(np.int64))


class NpzImageDataset(UInt8ImageDataset):
    """Images from an ``.npz`` file (see :func:`load_npz`); unlabelled files give labels ``NO_LABEL`` (-1).

    Args:
        path: The ``.npz`` file.
        transform: Callable on one uint8 image ``[C, H, W]``; default ``ImageTransform()``.
    """

    def __init__(self, path: str | os.PathLike, transform=None):
        images, labels = load_npz(path)
        super().__init__(images, labels, transform)
        self.path = Path(path)
        self.has_labels = labels is not None


@contextlib.contextmanager
def socket_timeout(seconds: float | None) -> Iterator[None]:
    """Set the default socket timeout for the duration of a block (downloads then fail fast offline)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _mnist_error(data_dir: Path, reason: str) -> DatasetNotFoundError:
    raw = data_dir / "MNIST" / "raw"
    return DatasetNotFoundError(
        f"MNIST {reason} in {raw}. Expected files: {', '.join(MNIST_FILES)} (or the same names with .gz). "
        f"Fetch them with: python -c \"import torchvision; torchvision.datasets.MNIST('{data_dir}', "
        f"download=True)\" (or pass download=True), or copy the four *-ubyte.gz files into {raw} "
        f"(read in place; gunzip -k is optional).")


def _cifar10_error(data_dir: Path, reason: str) -> DatasetNotFoundError:
    folder = data_dir / CIFAR10_FOLDER
    return DatasetNotFoundError(
        f"CIFAR-10 {reason} in {folder}. Expected files: {', '.join(CIFAR10_FILES)}. "
        f"Fetch them with: python -c \"import torchvision; torchvision.datasets.CIFAR10('{data_dir}', "
        f"download=True)\" (or pass download=True; a local {data_dir / CIFAR10_ARCHIVE} is then extracted "
        f"without network), or download {CIFAR10_URL} and run tar -xzf {CIFAR10_ARCHIVE} -C {data_dir}.")


def _mnist_file(raw: Path, name: str) -> Path | None:
    """The extracted file ``raw/name`` if present, else ``raw/name.gz`` if present, else None."""
    for path in (raw / name, raw / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def ensure_mnist(data_dir: str | os.PathLike, download: bool = False, timeout: float = 30.0) -> Path:
    """Check that every MNIST file is in ``<data_dir>/MNIST/raw``, extracted or as ``.gz``; download if asked.

    Nothing is written when the files are there (``.gz`` files are read in place).

    Args:
        data_dir: Root folder (torchvision layout).
        download: Download missing files with torchvision.
        timeout: Socket timeout in seconds for the download.

    Returns:
        The raw folder.
    """
    data_dir = Path(data_dir).expanduser()
    raw = data_dir / "MNIST" / "raw"
    missing = [name for name in MNIST_FILES if _mnist_file(raw, name) is None]
    if not missing:
        return raw
    if not download:
        raise _mnist_error(data_dir, f"files missing ({', '.join(missing)})")
    import torchvision

    try:
        with socket_timeout(timeout):
            torchvision.datasets.MNIST(str(data_dir), train=True, download=True)
    except Exception as err:  # noqa: BLE001 - any download failure becomes one clear error
        raise _mnist_error(data_dir, f"download failed ({_first_line(err)})") from None
    return raw


def ensure_cifar10(data_dir: str | os.PathLike, download: bool = False, timeout: float = 30.0) -> Path:
    """Check that ``<data_dir>/cifar-10-batches-py`` holds the CIFAR-10 batches; download them if asked.

    Args:
        data_dir: Root folder (torchvision layout).
        download: Download (or extract a local, md5-checked archive) with torchvision.
        timeout: Socket timeout in seconds for the download.

    Returns:
        The batches folder.
    """
    data_dir = Path(data_dir).expanduser()
    folder = data_dir / CIFAR10_FOLDER
    missing = [name for name in CIFAR10_FILES if not (folder / name).is_file()]
    if not missing:
        return folder
    if not download:
        raise _cifar10_error(data_dir, f"files missing ({', '.join(missing)})")
    import torchvision

    try:
        with socket_timeout(timeout):
            torchvision.datasets.CIFAR10(str(data_dir), train=True, download=True)
    except Exception as err:  # noqa: BLE001 - any download failure becomes one clear error
        raise _cifar10_error(data_dir, f"download failed ({_first_line(err)})") from None
    return folder


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read a uint8 IDX file (MNIST format), plain or gzipped.

    Args:
        path: The file; a ``.gz`` suffix means gzip.

    Returns:
        A uint8 tensor with the file's shape.
    """
    path = Path(path)
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    ndim, dtype_code = magic % 256, magic // 256
    if dtype_code != 0x08 or magic >> 16 != 0:
        raise ValueError(f"{path} is not a uint8 IDX file (magic {magic:#x})")
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return torch.from_numpy(array.reshape(shape).copy())


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _check_split(split: str) -> bool:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split == "train"


def load_mnist(data_dir: str | os.PathLike, split: str = "train",
               download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an MNIST split: extracted files through torchvision, ``.gz`` files read in place.

    Args:
        data_dir: Root folder holding ``MNIST/raw``.
        split: ``"train"`` (60000 images) or ``"test"`` (10000).
        download: Download missing files.

    Returns:
        ``(images, labels)``: uint8 ``[N, 1, 28, 28]`` and long ``[N]``.
    """
    train = _check_split(split)
    raw = ensure_mnist(data_dir, download)
    prefix = "train" if train else "t10k"
    paths = [_mnist_file(raw, f"{prefix}-{kind}") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    try:
        if all((raw / name).is_file() for name in MNIST_FILES):
            import torchvision

            ds = torchvision.datasets.MNIST(str(raw.parents[1]), train=train, download=False)
            images, labels = ds.data, ds.targets
        else:
            images, labels = read_idx(paths[0]), read_idx(paths[1])
    except (RuntimeError, ValueError, TypeError, OSError, EOFError) as err:
        raise _mnist_error(Path(data_dir), f"files unreadable ({_first_line(err)})") from None
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        shapes = f"{tuple(images.shape)}, {tuple(labels.shape)}"
        raise _mnist_error(Path(data_dir), f"files inconsistent (shapes {shapes})")
    return images.unsqueeze(1).contiguous(), labels.long()


def load_cifar10(data_dir: str | os.PathLike, split: str = "train",
                 download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a CIFAR-10 split through torchvision (which checks each batch file's md5).

    Args:
        data_dir: Root folder holding ``cifar-10-batches-py``.
        split: ``"train"`` (50000 images) or ``"test"`` (10000).
        download: Download missing files.

    Returns:
        ``(images, labels)``: uint8 ``[N, 3, 32, 32]`` and long ``[N]``.
    """
    train = _check_split(split)
    ensure_cifar10(data_dir, download)
    import torchvision

    try:
        ds = torchvision.datasets.CIFAR10(str(Path(data_dir).expanduser()), train=train, download=False)
    except (RuntimeError, ValueError, OSError) as err:
        raise _cifar10_error(Path(data_dir), f"files corrupted ({_first_line(err)})") from None
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    return images, torch.as_tensor(ds.targets, dtype=torch.long)


def build_image_dataset(name: str, data_dir: str | os.PathLike, split: str = "train", download: bool = False,
                        data_range: Sequence[float] = (-1.0, 1.0), random_flip: bool = False,
                        dequantize: bool = False) -> UInt8ImageDataset:
    """Build an image dataset yielding ``(x, y)`` with ``x`` float ``[C, H, W]`` in ``data_range``.

    Args:
        name: ``"mnist"``, ``"cifar10"`` or ``"npz"``.
        data_dir: Root folder (torchvision layout); for ``"npz"`` an ``.npz`` file, or a folder holding
            ``<split>.npz``.
        split: ``"train"`` or ``"test"``.
        download: Download missing files (MNIST, CIFAR-10).
        data_range: Output pixel range.
        random_flip: Randomly flip images horizontally.
        dequantize: Uniform dequantisation before scaling.

    Returns:
        The dataset.
    """
    transform = ImageTransform(data_range, random_flip, dequantize)
    if name == "mnist":
        return UInt8ImageDataset(*load_mnist(data_dir, split, download), transform=transform)
    if name == "cifar10":
        return UInt8ImageDataset(*load_cifar10(data_dir, split, download), transform=transform)
    if name == "npz":
        _check_split(split)
        path = Path(data_dir).expanduser()
        return NpzImageDataset(path if path.suffix == ".npz" else path / f"{split}.npz", transform=transform)
    raise ValueError(f"Unknown image dataset {name!r}; choose 'mnist', 'cifar10' or 'npz'.")
