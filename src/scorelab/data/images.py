"""The image dataset layer: uint8 images ``[N, C, H, W]`` with labels, and the transform that scales them.

Pure PyTorch, no Lightning, no files: where the images come from (MNIST, CIFAR-10, ``.npz``, a folder, any
torchvision dataset) is :mod:`scorelab.data.sources`, which gives every split as uint8 images (a tensor, or images
decoded on access with the same interface) and long labels. :class:`UInt8ImageDataset` yields ``(x, y)`` pairs and
:class:`ImageTransform` turns one image into floats in ``data_range`` (optional flip, dequantisation), avoiding PIL.
Missing dataset files raise :class:`DatasetNotFoundError`, whose message names the folder, the files expected and
how to get them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

NO_LABEL = -1
"""Label of every image of an unlabelled dataset (an ``.npz`` file without ``y``, a folder without classes)."""


class DatasetNotFoundError(FileNotFoundError):
    """Dataset files are missing, unreadable or could not be downloaded; the message, built by
    :meth:`scorelab.data.sources.DataFiles.error`, says where they belong and how to get them."""


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
            with the same interface (:class:`~scorelab.data.sources.LazyImages`: each item is decoded when read).
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
