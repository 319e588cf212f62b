"""Images decoded on access: any torchvision dataset by class name, or a folder of PNG/JPEG files.

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

import difflib
import hashlib
import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import UserError
from .images import NO_LABEL, DatasetNotFoundError, _first_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
"""File suffixes (any case) read by :class:`FolderImages`."""


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


class ImageSource:
    """Where the images of a :class:`LazyImages` come from: ``len``, ``read(i)`` and cheap labels.

    Subclasses hold paths or constructor arguments, never decoded images.
    """

    labels: torch.Tensor | None = None
    """long ``[N]`` when the labels are known without decoding, else None."""

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: int) -> Any:
        """Image ``index`` as a PIL image (or an array/tensor image)."""
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Where image ``index`` comes from, for error messages."""
        return f"image {index}"


class LazyImages:
    """uint8 images ``[N, C, H, W]`` decoded one by one on access; what the image data modules need of a tensor.

    ``images[i]`` is one decoded image ``[C, H, W]``; ``images[a:b]``, ``images[list]`` and ``images[tensor]`` are
    decoded and stacked; ``images.index_select(0, idx)`` is a lazy view (nothing decoded).

    Args:
        source: the :class:`ImageSource`.
        decoder: the :class:`ImageDecoder` applied to every image.
        indices: optional long tensor selecting images of ``source`` (a view).
    """

    dtype = torch.uint8
    ndim = 4

    def __init__(self, source: ImageSource, decoder: ImageDecoder, indices: torch.Tensor | None = None):
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
                raise DatasetNotFoundError("no images to read the image shape from")
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
            raise ValueError(f"{self.source.describe(i)} cannot be decoded ({_first_line(err)})") from None
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
        """The labels of these images (long ``[N]``) when the source knows them without decoding, else None."""
        labels = self.source.labels
        if labels is None:
            return None
        return labels[self.indices] if self.indices is not None else labels

    def __repr__(self) -> str:
        return f"LazyImages({len(self)} images from {type(self.source).__name__})"


# --- a folder of image files --------------------------------------------------------------------------------------
class FolderImages(ImageSource):
    """The PNG/JPEG files under a folder, found recursively in a sorted (reproducible) order.

    When every image lies in a first-level subfolder, those subfolders are the classes (sorted by name, labels
    ``0..K-1``); when some image lies directly in the folder, the images are unlabelled (label ``NO_LABEL``).

    Args:
        root: the folder.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"No image folder at {self.root}. Expected PNG or JPEG files under it (found recursively; "
                f"first-level subfolders, e.g. {self.root}/<class>/<name>.png, become class labels). "
                f"Point data.path at your folder (absolute, or relative to data.data_dir).")
        files = []
        for folder, dirs, names in os.walk(self.root, followlinks=True):
            dirs.sort()
            files += [Path(folder, name) for name in sorted(names) if name.lower().endswith(IMAGE_EXTENSIONS)]
        if not files:
            raise DatasetNotFoundError(
                f"No PNG or JPEG files under {self.root} (searched recursively for "
                f"{', '.join(IMAGE_EXTENSIONS)}). Put the images there, or point data.path at the folder that has "
                "them.")
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


# --- a torchvision dataset by class name --------------------------------------------------------------------------
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


def _expected_folder(cls: type, root: Path) -> Path:
    if any("raw_folder" in vars(base) for base in cls.__mro__):  # the MNIST family: <root>/<class name>/raw
        return root / cls.__name__ / "raw"
    base = getattr(cls, "base_folder", None)
    return root / base if isinstance(base, str) else root


def torchvision_error(cls: type, root: Path, kwargs: Mapping[str, Any], reason: str,
                      detail: str) -> DatasetNotFoundError:
    """The one-message error of a missing torchvision dataset: where, which files, how to fetch them."""
    name = cls.__name__
    folder = _expected_folder(cls, root)
    files = _expected_files(cls)
    if folder.name == "raw":  # the MNIST family checks the extracted files
        files = [f.removesuffix(".gz") for f in files]
    expected = f" Expected files: {', '.join(files)}." if files else ""
    args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    if "download" in inspect.signature(cls.__init__).parameters:
        fetch = (f"Fetch them with: python -c \"import torchvision; torchvision.datasets.{name}('{root}'{args}, "
                 f"download=True)\" (or pass data.download=true), or copy them into {folder}"
                 + (" (extracted: gunzip -k the .gz files)." if folder.name == "raw" else "."))
    else:
        fetch = (f"torchvision cannot download {name}: get it from the dataset's site and place it as "
                 f"torchvision.datasets.{name} documents, under {root}.")
    return DatasetNotFoundError(f"{name} {reason} in {folder} ({detail}).{expected} {fetch}")


class TorchvisionImages(ImageSource):
    """The images of ``torchvision.datasets.<name>(root, **kwargs)``, read item by item (``dataset[i][0]``).

    Holds the constructor's arguments; the torchvision object is built on first use in each process and left out
    when pickled (a spawned worker builds its own). Labels come from the dataset's ``targets`` or ``labels`` when
    they are one integer per image, else there are none.

    Args:
        name: the class name in ``torchvision.datasets``.
        root: its root folder.
        kwargs: the other constructor arguments (split, ...); ``download`` is always False here.
    """

    def __init__(self, name: str, root: str | os.PathLike, kwargs: Mapping[str, Any] | None = None):
        self.cls = torchvision_class(name)
        self.name, self.root, self.kwargs = self.cls.__name__, Path(root).expanduser(), dict(kwargs or {})
        self._dataset = None
        self.dataset  # noqa: B018 - fail now, with the one-message error, when the files are missing
        self.labels = self._cheap_labels()
        self.classes = list(getattr(self.dataset, "classes", None) or [])

    @property
    def dataset(self):
        if self._dataset is None:
            self._dataset = build_torchvision(self.cls, self.root, self.kwargs, download=False)
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


def build_torchvision(cls: type, root: Path, kwargs: Mapping[str, Any], download: bool = False):
    """``cls(root, **kwargs, download=download)``; a missing or failed dataset becomes :class:`DatasetNotFoundError`."""
    from .images import socket_timeout

    kwargs = dict(kwargs)
    if "download" in inspect.signature(cls.__init__).parameters:
        kwargs["download"] = bool(download)
    try:
        with socket_timeout(30.0 if download else None):
            return cls(str(root), **kwargs)
    except TypeError as err:  # an argument the class does not take
        raise ValueError(f"torchvision.datasets.{cls.__name__}{inspect.signature(cls.__init__)} refused the "
                         f"arguments {sorted(kwargs)} ({_first_line(err)}); fix data.dataset_kwargs or "
                         f"data.split_kwargs") from None
    except ValueError as err:  # torchvision's check of a split or option value
        raise ValueError(f"torchvision.datasets.{cls.__name__}: {_first_line(err)}; fix data.dataset_kwargs or "
                         f"data.split_kwargs (e.g. data.split_kwargs.test.split=valid)") from None
    except ImportError as err:  # e.g. LSUN needs lmdb, some datasets scipy
        raise UserError(f"torchvision.datasets.{cls.__name__} needs the package {err.name or _first_line(err)}: "
                        f"pip install {err.name or '<it>'}") from None
    except (RuntimeError, OSError, EOFError) as err:  # torchvision: "Dataset not found ..."; failed downloads
        reason = "download failed" if download else "not found"
        raise torchvision_error(cls, root, {k: v for k, v in kwargs.items() if k != "download"}, reason,
                                _first_line(err)) from None
