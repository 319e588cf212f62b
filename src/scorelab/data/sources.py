"""Image sources: the one way every image dataset is found, fetched and read.

An :class:`ImageSource` knows its files: it checks that they are there, fetches them when asked
(:meth:`ImageSource.ensure` with ``download=True``, through torchvision) and gives each split as uint8 images
``[N, C, H, W]`` with long labels ``[N]`` (or None when unlabelled). Whether a source holds its images in memory
(MNIST, CIFAR-10, ``.npz``: tensors) or decodes them on access (a folder of PNG/JPEG files, any torchvision dataset
by class name: :class:`LazyImages`) is a property of the source (``lazy``), not a second pipeline.

Missing or unreadable files and failed downloads raise one :class:`~scorelab.data.images.DatasetNotFoundError`,
built by :meth:`DataFiles.error` for every source alike: it names the folder (or file), what is expected there and
how to fetch or write it.

:class:`LazyImages` stands in for a uint8 tensor ``[N, C, H, W]`` (``shape``, ``dtype``, ``len``, indexing,
``index_select``), so :class:`~scorelab.data.images.UInt8ImageDataset`, the train/validation split, FID reference
statistics and likelihood evaluations take it unchanged; but it holds only where the images are (file paths, or the
arguments of a torchvision dataset) and decodes one image per access. DataLoader workers (and every DDP rank) decode
their own images, so a CelebA-sized folder never sits in memory. Each image is converted to ``channels``
(grayscale or RGB) and, with ``image_size``, its shorter side resized to ``image_size`` (bicubic, antialiased) and
centre-cropped to a square (or resized to the square without cropping). Decoding is deterministic: the random flip
and dequantisation still come from the per-image seeds of ``UInt8ImageDataset`` (exact resume).
"""

from __future__ import annotations

import contextlib
import difflib
import gzip
import hashlib
import inspect
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import UserError
from .images import NO_LABEL, DatasetNotFoundError, UInt8ImageDataset

SPLITS = ("train", "test")
DOWNLOAD_TIMEOUT = 30.0
"""Socket timeout in seconds of a download (it then fails fast offline)."""

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
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
"""File suffixes (any case) read by :class:`FolderImages`."""

Split = tuple[Any, torch.Tensor | None]
"""``(images, labels)``: uint8 ``[N, C, H, W]`` (a tensor or :class:`LazyImages`) and long ``[N]`` or None."""


# --- the one missing-data error and download path -------------------------------------------------------------
def first_line(err: BaseException) -> str:
    """``<exception type>: <first line of its message>``, for one-line errors."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def socket_timeout(seconds: float | None) -> Iterator[None]:
    """Set the default socket timeout for the duration of a block (downloads then fail fast offline)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


@dataclass(frozen=True)
class DataFiles:
    """The files of a dataset and how to get them: what its missing-data error says.

    Attributes:
        name: The dataset in words (``MNIST``, ``CIFAR-10``, ``FashionMNIST``); empty for a file or folder the user
            names (``.npz``, a folder of images), whose error starts with the reason (``No .npz file at``).
        folder: Where the files belong (for ``.npz``: the file itself).
        files: The file names expected there.
        fetch: The ``torchvision.datasets`` call that downloads them (``"MNIST('/data', download=True)"``), or None
            when torchvision cannot download the dataset.
        manual: How to put the files there by hand; with ``fetch`` None, the whole instruction.
        files_note: Said after the file names.
        fetch_note: Said after the download settings.
    """

    name: str
    folder: Path
    files: Sequence[str] = ()
    fetch: str | None = None
    manual: str = ""
    files_note: str = ""
    fetch_note: str = ""

    def error(self, reason: str, detail: str = "") -> DatasetNotFoundError:
        """``<name> <reason> in <folder> (<detail>). Expected files: ... <how to fetch them>`` as an exception;
        without a name, ``<reason> <folder> (<detail>). <how>``."""
        where = (f"{self.name} {reason} in {self.folder}" if self.name else f"{reason} {self.folder}") + (
            f" ({detail})" if detail else "")
        expected = f" Expected files: {', '.join(self.files)}{self.files_note}." if self.files else ""
        how = self.manual if self.fetch is None else (
            f"Fetch them with: python -c \"import torchvision; torchvision.datasets.{self.fetch}\" (or pass "
            f"data.download=true, download=True from Python{self.fetch_note}), or {self.manual}.")
        return DatasetNotFoundError(f"{where}.{expected} {how}")


# --- the contract -----------------------------------------------------------------------------------------------
class ImageSource:
    """Where an image dataset comes from: its files, how to check and fetch them, and the images of each split.

    :meth:`load` gives a split as ``(images, labels)``: uint8 ``[N, C, H, W]`` (a tensor, or :class:`LazyImages`
    when ``lazy``) and long ``[N]`` (or None), read once and then kept. A subclass says which splits it has
    (:meth:`splits`), what keeps one from loading (:meth:`missing`), how to fetch its files (:meth:`_download`,
    downloadable datasets only) and how to read a split (:meth:`_read`); checking, fetching and the error of
    missing files or failed downloads are the same for every source.
    """

    lazy = False
    """True when images are decoded on access (:class:`LazyImages`) rather than held in memory."""

    downloadable = False
    """True when :meth:`ensure` can fetch missing files (``download=True`` is ignored otherwise)."""

    def __init__(self):
        self._loaded: dict[str, Split] = {}

    def splits(self) -> tuple[str, ...]:
        """The splits this source has (of ``"train"`` and ``"test"``)."""
        return SPLITS

    def missing(self, split: str) -> tuple[str, str] | None:
        """What keeps ``split`` from loading, as the ``(reason, detail)`` of :meth:`DataFiles.error`, or None."""
        return None

    def files(self, split: str) -> DataFiles:
        """The files of ``split`` and how to get them, for the error of missing ones."""
        raise NotImplementedError(f"{type(self).__name__} does not say which files it needs")

    def _download(self, split: str) -> None:
        """Fetch the files of ``split`` (any exception becomes the error ``download failed``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot download its files")

    def _read(self, split: str) -> Split:
        """Read a split whose files are there."""
        raise NotImplementedError(f"{type(self).__name__} does not define _read(split)")

    def check(self, split: str = "train") -> None:
        """Raise the :class:`DatasetNotFoundError` of ``split`` when something keeps it from loading."""
        if split in self._loaded:
            return
        problem = self.missing(split)
        if problem is not None:
            raise self.files(split).error(*problem)

    def ensure(self, download: bool = False, timeout: float = DOWNLOAD_TIMEOUT) -> None:
        """Check that the training split's files are there; with ``download``, first fetch what any split lacks.

        Nothing is fetched or written when the files are there. A missing file or a failed download raises one
        :class:`DatasetNotFoundError` naming the folder, the files expected and how to fetch them. A source that
        cannot download (``downloadable`` False) only checks.

        Args:
            download: Download missing files (with torchvision).
            timeout: Socket timeout in seconds for the download.
        """
        for split in self.splits() if download and self.downloadable else ():
            if self.missing(split) is None:
                continue
            try:
                with socket_timeout(timeout):
                    self._download(split)
            except Exception as err:  # noqa: BLE001 - any download failure becomes one clear error
                raise self.files(split).error("download failed", first_line(err)) from None
        self.check("train")

    def load(self, split: str, download: bool = False) -> Split | None:
        """The images and labels of a split, or None when the source has no such split.

        Args:
            split: ``"train"`` or ``"test"``.
            download: Fetch missing files first (:meth:`ensure`).
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self._loaded:
            if download:
                self.ensure(True)
            if split not in self.splits():
                return None
            self.check(split)
            self._loaded[split] = self._read(split)
        return self._loaded[split]

    def num_classes(self) -> int | None:
        """The number of classes of the training labels (``max + 1``), or None when unlabelled."""
        labels = self.load("train")[1]
        if labels is None or not len(labels) or int(labels.max()) < 0:
            return None
        return int(labels.max()) + 1


# --- in memory: MNIST, CIFAR-10, .npz --------------------------------------------------------------------------
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


class DownloadableFiles(ImageSource):
    """A dataset whose files torchvision downloads (``torchvision.datasets.<dataset>(root, download=True)``) into
    ``<root>/<subfolder>``, where ``expected`` names them.

    Args:
        root: Root folder (torchvision layout).
    """

    downloadable = True
    dataset: str = ""
    subfolder: str = ""
    expected: tuple[str, ...] = ()

    def __init__(self, root: str | os.PathLike):
        super().__init__()
        self.root = Path(root).expanduser()
        self.folder = self.root / self.subfolder

    def _present(self, name: str) -> bool:
        """Whether the expected file ``name`` is there."""
        return (self.folder / name).is_file()

    def missing(self, split: str) -> tuple[str, str] | None:
        names = [name for name in self.expected if not self._present(name)]
        return ("files missing", ", ".join(names)) if names else None

    def _download(self, split: str) -> None:
        import torchvision

        getattr(torchvision.datasets, self.dataset)(str(self.root), train=True, download=True)


class MNISTSource(DownloadableFiles):
    """MNIST (60000 train / 10000 test, uint8 ``[N, 1, 28, 28]``, labels 0-9) from ``<root>/MNIST/raw``.

    Extracted files are read through torchvision; ``.gz`` files are read in place (nothing is written).

    Args:
        root: Root folder (torchvision layout).
    """

    dataset, subfolder, expected = "MNIST", "MNIST/raw", MNIST_FILES

    def files(self, split: str = "train") -> DataFiles:
        return DataFiles("MNIST", self.folder, MNIST_FILES, fetch=f"MNIST('{self.root}', download=True)",
                         manual=f"copy the four *-ubyte.gz files into {self.folder} (read in place; gunzip -k is "
                                "optional)", files_note=" (or the same names with .gz)")

    def _file(self, name: str) -> Path | None:
        """The extracted file ``raw/name`` if present, else ``raw/name.gz`` if present, else None."""
        for path in (self.folder / name, self.folder / f"{name}.gz"):
            if path.is_file():
                return path
        return None

    def _present(self, name: str) -> bool:
        return self._file(name) is not None

    def _read(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        train = split == "train"
        prefix = "train" if train else "t10k"
        try:
            if all((self.folder / name).is_file() for name in MNIST_FILES):
                import torchvision

                ds = torchvision.datasets.MNIST(str(self.root), train=train, download=False)
                images, labels = ds.data, ds.targets
            else:
                images, labels = (read_idx(self._file(f"{prefix}-{kind}"))
                                  for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))
        except (RuntimeError, ValueError, TypeError, OSError, EOFError) as err:
            raise self.files().error("files unreadable", first_line(err)) from None
        if images.ndim != 3 or labels.shape != (images.shape[0],):
            raise self.files().error("files inconsistent", f"shapes {tuple(images.shape)}, {tuple(labels.shape)}")
        return images.unsqueeze(1).contiguous(), labels.long()


class CIFAR10Source(DownloadableFiles):
    """CIFAR-10 (50000 train / 10000 test, uint8 ``[N, 3, 32, 32]``, labels 0-9) from
    ``<root>/cifar-10-batches-py``, read through torchvision (which checks each batch file's md5).

    Args:
        root: Root folder (torchvision layout).
    """

    dataset, subfolder, expected = "CIFAR10", CIFAR10_FOLDER, CIFAR10_FILES

    def files(self, split: str = "train") -> DataFiles:
        return DataFiles("CIFAR-10", self.folder, CIFAR10_FILES, fetch=f"CIFAR10('{self.root}', download=True)",
                         manual=f"download {CIFAR10_URL} and run tar -xzf {CIFAR10_ARCHIVE} -C {self.root}",
                         fetch_note=f"; a local {self.root / CIFAR10_ARCHIVE} is then extracted without network")

    def _read(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        import torchvision

        try:
            ds = torchvision.datasets.CIFAR10(str(self.root), train=split == "train", download=False)
        except (RuntimeError, ValueError, OSError) as err:
            raise self.files().error("files corrupted", first_line(err)) from None
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        return images, torch.as_tensor(ds.targets, dtype=torch.long)


NO_NPZ = "No .npz file at"
"""The reason of the error of a missing ``.npz`` file."""


def npz_files(path: Path) -> DataFiles:
    """What an ``.npz`` file of images holds and how to write one, for the error of a missing one."""
    return DataFiles("", path, manual="Expected 'x' (uint8 [N, H, W, C] or [N, H, W]) and optionally 'y' (integer "
                     f"labels [N]); write one with numpy.savez('{path}', x=images_uint8, y=labels).")


def load_npz(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read an ``.npz`` of images: ``x`` uint8 ``[N, H, W, C]`` or ``[N, H, W]``, optional integer ``y [N]``.

    Args:
        path: The ``.npz`` file.

    Returns:
        ``(images, labels)``: uint8 ``[N, C, H, W]`` and long ``[N]`` (None when the file has no ``y``).
    """
    path = Path(path)
    if not path.is_file():
        raise npz_files(path).error(NO_NPZ)
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


def _split_paths(path: str | os.PathLike, test_path: str | os.PathLike | None) -> dict[str, Path]:
    """``{"train": path, "test": test_path}`` without the test split when ``test_path`` is None."""
    paths = {"train": path} if test_path is None else {"train": path, "test": test_path}
    return {split: Path(p).expanduser() for split, p in paths.items()}


class NpzSource(ImageSource):
    """Images in ``.npz`` files (see :func:`load_npz`), one file a split; unlabelled files give labels None.

    Args:
        path: The training file.
        test_path: The test file; None: no test split.
    """

    def __init__(self, path: str | os.PathLike, test_path: str | os.PathLike | None = None):
        super().__init__()
        self.paths = _split_paths(path, test_path)

    def splits(self) -> tuple[str, ...]:
        return tuple(self.paths)

    def files(self, split: str) -> DataFiles:
        return npz_files(self.paths[split])

    def missing(self, split: str) -> tuple[str, str] | None:
        return None if self.paths[split].is_file() else (NO_NPZ, "")

    def _read(self, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        return load_npz(self.paths[split])


class NpzImageDataset(UInt8ImageDataset):
    """Images from an ``.npz`` file (see :func:`load_npz`); unlabelled files give labels ``NO_LABEL`` (-1).

    Args:
        path: The ``.npz`` file.
        transform: Callable on one uint8 image ``[C, H, W]``; default ``ImageTransform()``.
    """

    def __init__(self, path: str | os.PathLike, transform=None):
        images, labels = NpzSource(path).load("train")
        super().__init__(images, labels, transform)
        self.path = Path(path)
        self.has_labels = labels is not None


# --- decoded on access: what LazyImages reads -------------------------------------------------------------------
class ImageDecoder:
    """Turn a PIL image (or an array/tensor image) into uint8 ``[C, H, W]`` of a fixed mode and size.

    Args:
        channels: 1 (grayscale, PIL mode ``L``) or 3 (RGB); None keeps what the image has (1 for ``L``/``1``/``I``
            modes, else 3).
        image_size: side of the square output; None keeps the native size.
        center_crop: with ``image_size``, resize the shorter side to it and crop the centre (True), or resize both
            sides to it, changing the aspect ratio (False).
    """

    def __init__(self, channels: int | None = None, image_size: int | None = None, center_crop: bool = True):
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 (grayscale), 3 (RGB) or null (from the images), got {channels!r}")
        if image_size is not None and int(image_size) < 1:
            raise ValueError(f"image_size must be a positive integer or null (native size), got {image_size!r}")
        self.channels = channels
        self.image_size = int(image_size) if image_size is not None else None
        self.center_crop = bool(center_crop)

    def __call__(self, image: Any) -> torch.Tensor:
        """Decode, convert and resize one image; returns uint8 ``[C, H, W]``."""
        from PIL import Image

        if not isinstance(image, Image.Image):  # torchvision datasets that yield arrays or tensors
            import torchvision.transforms.functional as TF

            image = TF.to_pil_image(image)
        channels = self.channels or (1 if image.mode in ("1", "L", "I", "I;16", "F") else 3)
        image = image.convert("L" if channels == 1 else "RGB")
        if self.image_size is not None and image.size != (self.image_size, self.image_size):
            image = self._resize(image, self.image_size)
        array = np.array(image, dtype=np.uint8)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(array))

    def _resize(self, image, size: int):
        from PIL import Image

        width, height = image.size
        if not self.center_crop:
            return image.resize((size, size), Image.BICUBIC)
        scale = size / min(width, height)
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        if new != (width, height):
            image = image.resize(new, Image.BICUBIC)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        return image.crop((left, top, left + size, top + size))

    def describe(self) -> str:
        """A short tag of what the decoder changes (empty when it keeps every image as it is)."""
        parts = [f"{self.image_size}px{'' if self.center_crop else '-stretch'}"] if self.image_size else []
        return "-".join(parts + ([f"c{self.channels}"] if self.channels else []))


class ImageReader:
    """Where the images of one split of a :class:`LazyImages` come from: ``len``, ``read(i)`` and cheap labels.

    Subclasses hold paths or constructor arguments, never decoded images.
    """

    labels: torch.Tensor | None = None
    """long ``[N]`` when the labels are known without decoding, else None."""

    classes: Sequence[str] = ()
    """The class names, when the reader knows them."""

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} does not say how many images it has")

    def read(self, index: int) -> Any:
        """Image ``index`` as a PIL image (or an array/tensor image)."""
        raise NotImplementedError(f"{type(self).__name__} does not define read(index)")

    def describe(self, index: int) -> str:
        """Where image ``index`` comes from, for error messages."""
        return f"image {index}"


class LazyImages:
    """uint8 images ``[N, C, H, W]`` decoded one by one on access; what the image data modules need of a tensor.

    ``images[i]`` is one decoded image ``[C, H, W]``; ``images[a:b]``, ``images[list]`` and ``images[tensor]`` are
    decoded and stacked; ``images.index_select(0, idx)`` is a lazy view (nothing decoded).

    Args:
        source: the :class:`ImageReader` of the images.
        decoder: the :class:`ImageDecoder` applied to every image.
        indices: optional long tensor selecting images of ``source`` (a view).
    """

    dtype = torch.uint8
    ndim = 4

    def __init__(self, source: ImageReader, decoder: ImageDecoder, indices: torch.Tensor | None = None):
        self.source, self.decoder, self.indices = source, decoder, indices
        self._shape: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.source)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image: the decoder's, completed from the first image where it keeps the native
        channels or size."""
        if self._shape is None:
            if self.decoder.channels is not None and self.decoder.image_size is not None:
                size = self.decoder.image_size
                self._shape = (self.decoder.channels, size, size)
            elif len(self.source) == 0:
                raise DatasetNotFoundError(f"{type(self.source).__name__} holds no images: no image shape to read")
            else:
                self._shape = tuple(self._decode(0).shape)
        return self._shape

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.image_shape))

    def _decode(self, i: int) -> torch.Tensor:
        try:
            image = self.decoder(self.source.read(i))
        except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for unreadable or truncated files
            raise ValueError(f"{self.source.describe(i)} cannot be decoded ({first_line(err)})") from None
        if self._shape is not None and tuple(image.shape) != self._shape:
            raise ValueError(f"{self.source.describe(i)} decodes to {tuple(image.shape)} but the first image to "
                             f"{self._shape}: set data.image_size (and data.channels) so every image gets one shape")
        return image

    def _position(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"image index {index} out of range for {n} images")
        index %= n
        return int(self.indices[index]) if self.indices is not None else index

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, (int, np.integer)) or (torch.is_tensor(index) and index.ndim == 0):
            self.image_shape  # noqa: B018 - fixes the shape every image is checked against
            return self._decode(self._position(int(index)))
        positions = range(len(self))[index] if isinstance(index, slice) else [int(i) for i in index]
        if not len(positions):
            return torch.empty((0, *self.image_shape), dtype=torch.uint8)
        return torch.stack([self[i] for i in positions])

    def index_select(self, dim: int, index: torch.Tensor) -> LazyImages:
        """A lazy view on some of the images (``dim`` must be 0), as ``Tensor.index_select``."""
        if dim != 0:
            raise ValueError("LazyImages selects along dimension 0 (images) only")
        index = torch.as_tensor(index, dtype=torch.long)
        base = self.indices[index] if self.indices is not None else index
        view = LazyImages(self.source, self.decoder, base)
        view._shape = self._shape
        return view

    def labels(self) -> torch.Tensor | None:
        """The labels of these images (long ``[N]``) when the reader knows them without decoding, else None."""
        labels = self.source.labels
        if labels is None:
            return None
        return labels[self.indices] if self.indices is not None else labels

    def __repr__(self) -> str:
        return f"LazyImages({len(self)} images from {type(self.source).__name__})"


class LazySource(ImageSource):
    """A source whose splits are :class:`LazyImages`: one :class:`ImageReader` a split, decoded by ``decoder``.

    Args:
        decoder: The :class:`ImageDecoder` of every image; default: images as they are.
    """

    lazy = True
    not_found: tuple[type[BaseException], ...] = ()
    """Exceptions of :meth:`_reader` that mean the split's files are missing (``not found`` in the error)."""

    def __init__(self, decoder: ImageDecoder | None = None):
        super().__init__()
        self.decoder = decoder or ImageDecoder()
        self._readers: dict[str, ImageReader] = {}

    def _reader(self, split: str) -> ImageReader:
        """The reader of ``split``: holds paths or arguments, reads no image."""
        raise NotImplementedError(f"{type(self).__name__} does not define _reader(split)")

    def missing(self, split: str) -> tuple[str, str] | None:
        if split not in self._readers:
            try:
                self._readers[split] = self._reader(split)
            except self.not_found as err:
                return "not found", first_line(err)
        return None

    def _read(self, split: str) -> tuple[LazyImages, torch.Tensor | None]:
        images = LazyImages(self._readers[split], self.decoder)
        return images, images.labels()

    def num_classes(self) -> int | None:
        """The number of class names of the training split when it has them, else counted from its labels."""
        count = super().num_classes()
        classes = self.load("train")[0].source.classes
        return len(classes) if count is not None and classes else count


# --- a folder of image files -----------------------------------------------------------------------------------
def folder_files(root: Path) -> DataFiles:
    """What belongs in a folder of images and how to point at another, for the error of a missing or empty one."""
    return DataFiles("", root, manual=(
        f"Put PNG or JPEG files under it (found recursively; first-level subfolders, e.g. {root}/<class>/<name>.png, "
        "become class labels), or point data.path at the folder that has them (absolute, or relative to "
        "data.data_dir)."))


class FolderImages(ImageReader):
    """The PNG/JPEG files under a folder, found recursively in a sorted (reproducible) order.

    When every image lies in a first-level subfolder, those subfolders are the classes (sorted by name, labels
    ``0..K-1``); when some image lies directly in the folder, the images are unlabelled (label ``NO_LABEL``).

    Args:
        root: the folder.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise folder_files(self.root).error("No image folder at")
        files = []
        for folder, dirs, names in os.walk(self.root, followlinks=True):
            dirs.sort()
            files += [Path(folder, name) for name in sorted(names) if name.lower().endswith(IMAGE_EXTENSIONS)]
        if not files:
            raise folder_files(self.root).error("No PNG or JPEG files under",
                                                f"searched recursively for {', '.join(IMAGE_EXTENSIONS)}")
        self.paths = [str(p.relative_to(self.root)) for p in files]
        tops = [Path(p).parts[0] if len(Path(p).parts) > 1 else None for p in self.paths]
        if None in tops:
            self.classes: list[str] = []
            self.labels = torch.full((len(files),), NO_LABEL, dtype=torch.long)
        else:
            self.classes = sorted(set(tops))
            lookup = {name: i for i, name in enumerate(self.classes)}
            self.labels = torch.tensor([lookup[t] for t in tops], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int):
        from PIL import Image

        with Image.open(self.root / self.paths[index]) as image:
            image.load()
            return image

    def describe(self, index: int) -> str:
        return str(self.root / self.paths[index])

    def fingerprint(self) -> str:
        """8 hex digits of the folder's resolved path and file list: another set of files, another value."""
        key = f"{self.root.resolve()}:{len(self.paths)}:" + "\n".join(self.paths)
        return hashlib.sha256(key.encode()).hexdigest()[:8]


class FolderSource(LazySource):
    """The PNG/JPEG files under a folder (:class:`FolderImages`), and optionally a second folder of test images.

    Args:
        path: The training folder.
        test_path: The test folder; None: no test split.
        decoder: As :class:`LazySource`.
    """

    def __init__(self, path: str | os.PathLike, test_path: str | os.PathLike | None = None,
                 decoder: ImageDecoder | None = None):
        super().__init__(decoder)
        self.paths = _split_paths(path, test_path)

    def splits(self) -> tuple[str, ...]:
        return tuple(self.paths)

    def files(self, split: str) -> DataFiles:
        return folder_files(self.paths[split])

    def _reader(self, split: str) -> FolderImages:
        return FolderImages(self.paths[split])


# --- a torchvision dataset by class name -----------------------------------------------------------------------
def torchvision_class(name: str) -> type:
    """The torchvision dataset class ``torchvision.datasets.<name>``; a clear error (with close names) otherwise."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, str(name), None)
    if not (inspect.isclass(cls) and issubclass(cls, torch.utils.data.Dataset)):
        names = sorted(n for n, c in vars(tvd).items() if inspect.isclass(c) and issubclass(c, torch.utils.data.Dataset)
                       and n[0].isupper() and n not in ("VisionDataset", "DatasetFolder"))
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"data.name={name!r} is not a torchvision dataset class: {hint}"
                         f"choose one of torchvision.datasets ({', '.join(names)})")
    return cls


def default_split_kwargs(cls: type) -> dict[str, dict[str, Any]]:
    """How ``cls`` takes the split, from its signature: ``train=True/False``, ``split="train"/"test"``, or neither
    (then the whole dataset is the training set and there is no test set)."""
    params = inspect.signature(cls.__init__).parameters
    if "train" in params:
        return {"train": {"train": True}, "test": {"train": False}}
    if "split" in params:
        return {"train": {"split": "train"}, "test": {"split": "test"}}
    return {"train": {}, "test": None}


def _expected_files(cls: type) -> list[str]:
    """File names a torchvision dataset class declares (its resources, file or split lists), where it does."""
    names: list[str] = []

    def add(item):
        if isinstance(item, str):
            names.append(Path(item).name)
        elif isinstance(item, Sequence) and item and isinstance(item[0], str):  # (url or file, md5[, name])
            strings = [s for s in item if isinstance(s, str)]
            names.append(Path(strings[2] if len(strings) > 2 else strings[0]).name)

    for attr in ("resources", "file_list", "train_list", "test_list"):
        for item in getattr(cls, attr, None) or []:
            add(item)
    split_list = getattr(cls, "split_list", None)
    if isinstance(split_list, Mapping):
        for item in split_list.values():
            add(item[1] if isinstance(item, Sequence) and len(item) > 1 else item)
    return list(dict.fromkeys(n for n in names if n))


def torchvision_files(cls: type, root: Path, kwargs: Mapping[str, Any]) -> DataFiles:
    """The files of ``cls(root, **kwargs)`` and how to get them: where, which files, the call that fetches them."""
    name = cls.__name__
    if any("raw_folder" in vars(base) for base in cls.__mro__):  # the MNIST family: <root>/<class name>/raw
        folder = root / name / "raw"
    else:
        base = getattr(cls, "base_folder", None)
        folder = root / base if isinstance(base, str) else root
    raw = folder.name == "raw"
    files = [f.removesuffix(".gz") if raw else f for f in _expected_files(cls)]  # the MNIST family: extracted
    if "download" not in inspect.signature(cls.__init__).parameters:
        return DataFiles(name, folder, files, manual=f"torchvision cannot download {name}: get it from the "
                         f"dataset's site and place it as torchvision.datasets.{name} documents, under {root}.")
    args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    manual = f"copy them into {folder}" + (" (extracted: gunzip -k the .gz files)" if raw else "")
    return DataFiles(name, folder, files, fetch=f"{name}('{root}'{args}, download=True)", manual=manual)


TORCHVISION_NOT_FOUND = (RuntimeError, OSError, EOFError)
"""What torchvision raises for a missing dataset ("Dataset not found ...") or a failed download."""


def build_torchvision(cls: type, root: Path, kwargs: Mapping[str, Any], download: bool = False):
    """``cls(root, **kwargs, download=download)``; arguments it refuses and missing packages become clear errors.

    A missing dataset raises torchvision's own error (one of ``TORCHVISION_NOT_FOUND``).
    """
    kwargs = dict(kwargs)
    if "download" in inspect.signature(cls.__init__).parameters:
        kwargs["download"] = bool(download)
    try:
        return cls(str(root), **kwargs)
    except TypeError as err:  # an argument the class does not take
        raise ValueError(f"torchvision.datasets.{cls.__name__}{inspect.signature(cls.__init__)} refused the "
                         f"arguments {sorted(kwargs)} ({first_line(err)}); fix data.dataset_kwargs or "
                         f"data.split_kwargs") from None
    except ValueError as err:  # torchvision's check of a split or option value
        raise ValueError(f"torchvision.datasets.{cls.__name__}: {first_line(err)}; fix data.dataset_kwargs or "
                         f"data.split_kwargs (e.g. data.split_kwargs.test.split=valid)") from None
    except ImportError as err:  # e.g. LSUN needs lmdb, some datasets scipy
        raise UserError(f"torchvision.datasets.{cls.__name__} needs the package {err.name or first_line(err)}: "
                        f"pip install {err.name or '<it>'}") from None


class TorchvisionImages(ImageReader):
    """The images of ``cls(root, **kwargs)`` (a ``torchvision.datasets`` class), read item by item (``dataset[i][0]``).

    Holds the constructor's arguments; the torchvision object is built on first use in each process and left out
    when pickled (a spawned worker builds its own). Labels come from the dataset's ``targets`` or ``labels`` when
    they are one integer per image, else there are none.

    Args:
        cls: the class in ``torchvision.datasets``.
        root: its root folder.
        kwargs: the other constructor arguments (split, ...); ``download`` is always False here.
        dataset: the object already built with these arguments, if any.
    """

    def __init__(self, cls: type, root: str | os.PathLike, kwargs: Mapping[str, Any] | None = None,
                 dataset: Any = None):
        self.cls, self.name = cls, cls.__name__
        self.root, self.kwargs = Path(root).expanduser(), dict(kwargs or {})
        self._dataset = dataset
        self.labels = self._cheap_labels()  # builds the dataset: fails now, with the one-message error
        self.classes = list(getattr(self.dataset, "classes", None) or [])

    @property
    def dataset(self):
        if self._dataset is None:
            try:
                self._dataset = build_torchvision(self.cls, self.root, self.kwargs)
            except TORCHVISION_NOT_FOUND as err:
                raise torchvision_files(self.cls, self.root, self.kwargs).error("not found", first_line(err)) from None
        return self._dataset

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_dataset": None}

    def _cheap_labels(self) -> torch.Tensor | None:
        for attr in ("targets", "labels"):
            values = getattr(self.dataset, attr, None)
            if values is None:
                continue
            try:
                labels = torch.as_tensor(np.asarray(values))
            except (TypeError, ValueError, RuntimeError):
                continue
            if labels.shape == (len(self),) and not labels.is_floating_point() and labels.dtype != torch.bool:
                return labels.long()
        return None

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, index: int):
        item = self.dataset[index]
        return item[0] if isinstance(item, (tuple, list)) else item

    def describe(self, index: int) -> str:
        return f"{self.name} image {index} (in {self.root})"


class TorchvisionSource(LazySource):
    """Any torchvision image dataset by class name: ``torchvision.datasets.<name>(root, **kwargs(split))``.

    How the class takes the split is read from its signature (:func:`default_split_kwargs`) unless
    ``split_kwargs`` says it; a split whose arguments are None does not exist.

    Args:
        name: Class name in ``torchvision.datasets``.
        root: The dataset's root folder (torchvision layout).
        decoder: As :class:`LazySource`.
        dataset_kwargs: Other constructor arguments of every split.
        split_kwargs: Constructor arguments of each split (keys ``train``, ``test``); None: detected.
    """

    downloadable = True
    not_found = TORCHVISION_NOT_FOUND

    def __init__(self, name: str, root: str | os.PathLike, decoder: ImageDecoder | None = None,
                 dataset_kwargs: Mapping[str, Any] | None = None,
                 split_kwargs: Mapping[str, Mapping[str, Any] | None] | None = None):
        super().__init__(decoder)
        self.cls = torchvision_class(name)
        self.name, self.root = self.cls.__name__, Path(root).expanduser()
        self.dataset_kwargs = dict(dataset_kwargs or {})
        given = dict(split_kwargs or {})
        unknown = sorted(set(given) - set(SPLITS))
        if unknown:
            raise ValueError(f"data.split_kwargs takes the keys train and test, got {unknown}")
        detected = default_split_kwargs(self.cls)
        self.split_kwargs = {s: given.get(s, detected[s]) for s in SPLITS}
        if self.split_kwargs["train"] is None:
            raise ValueError("data.split_kwargs.train cannot be null: the training split is needed")
        self.detected = not given
        """True when the split arguments come from the class's signature."""

    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLITS if self.split_kwargs[s] is not None)

    def kwargs(self, split: str) -> dict[str, Any]:
        """The constructor arguments of ``split`` (without ``download``)."""
        return {**self.dataset_kwargs, **dict(self.split_kwargs[split])}

    def files(self, split: str) -> DataFiles:
        return torchvision_files(self.cls, self.root, self.kwargs(split))

    def _reader(self, split: str) -> TorchvisionImages:
        kwargs = self.kwargs(split)
        return TorchvisionImages(self.cls, self.root, kwargs, build_torchvision(self.cls, self.root, kwargs))

    def _download(self, split: str) -> None:
        build_torchvision(self.cls, self.root, self.kwargs(split), download=True)


# --- by dataset name ---------------------------------------------------------------------------------------------
def _npz_source(data_dir: str | os.PathLike) -> NpzSource:
    """An ``.npz`` file (every split reads it), or a folder holding ``train.npz`` and ``test.npz``."""
    path = Path(data_dir).expanduser()
    return NpzSource(path, path) if path.suffix == ".npz" else NpzSource(path / "train.npz", path / "test.npz")


IMAGE_SOURCES = {"mnist": MNISTSource, "cifar10": CIFAR10Source, "npz": _npz_source}
"""The in-memory sources by dataset name, each built from a data folder (for ``npz``: a file, or a folder)."""


def image_source(name: str, data_dir: str | os.PathLike) -> ImageSource:
    """The in-memory source named ``name`` in :data:`IMAGE_SOURCES` (``mnist``, ``cifar10``, ``npz``), for scripts.

    Args:
        name: The dataset.
        data_dir: Root folder (torchvision layout); for ``"npz"`` an ``.npz`` file, or a folder holding
            ``train.npz`` and ``test.npz``.
    """
    if name not in IMAGE_SOURCES:
        raise ValueError(f"Unknown image dataset {name!r}; choose {', '.join(map(repr, IMAGE_SOURCES))}.")
    return IMAGE_SOURCES[name](data_dir)


def load_mnist(data_dir: str | os.PathLike, split: str = "train",
               download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """An MNIST split: uint8 ``[N, 1, 28, 28]`` and long ``[N]`` (``MNISTSource(data_dir).load(split, download)``)."""
    return MNISTSource(data_dir).load(split, download)
