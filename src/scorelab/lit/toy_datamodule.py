"""A Lightning data module for toy Gaussian mixtures: a fixed, seeded training set with exact truth attached."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from ..data.toy import PRESETS, GaussianMixture


class EpochSeededSampler(Sampler[int]):
    """A random permutation per epoch drawn from ``seed + epoch``: the data order is a function of the epoch,
    so a run resumed from an end-of-epoch checkpoint sees exactly the batches an uninterrupted run would.

    ``epoch_fn`` (e.g. the Trainer's ``current_epoch``) is read when iteration starts; it is more reliable than
    ``set_epoch``, which Lightning calls one epoch ahead after restoring an end-of-epoch checkpoint. ``skip_fn``
    gives how many leading samples to skip, so a run resumed mid-epoch continues the epoch where it stopped.
    """

    def __init__(self, n: int, seed: int = 0, epoch_fn: Callable[[], int] | None = None,
                 skip_fn: Callable[[], int] | None = None):
        self.n, self.seed, self.epoch, self.epoch_fn, self.skip_fn = n, seed, 0, epoch_fn, skip_fn

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        gen = torch.Generator().manual_seed(self.seed + epoch)
        skip = self.skip_fn() if self.skip_fn is not None else 0  # samples already trained on after a resume
        return iter(torch.randperm(self.n, generator=gen)[skip:].tolist())

    def __len__(self) -> int:
        return self.n


def build_mixture(mixture: str | GaussianMixture | Mapping[str, Any]) -> GaussianMixture:
    """A mixture from a preset name, a ``GaussianMixture`` or a mapping of its arguments (weights, means, covs/stds)."""
    if isinstance(mixture, GaussianMixture):
        return mixture
    if isinstance(mixture, str):
        if mixture not in PRESETS:
            raise ValueError(
                f"unknown toy preset {mixture!r}: choose one of {sorted(PRESETS)} or give weights/means/stds")
        return PRESETS[mixture]()
    if isinstance(mixture, Mapping):
        spec = dict(mixture)
        preset = spec.pop("preset", None)
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"unknown toy preset {preset!r}: choose one of {sorted(PRESETS)}")
            return PRESETS[preset](**spec)
        return GaussianMixture(**spec)
    raise ValueError(
        f"mixture must be a preset name, a GaussianMixture or a mapping, got {type(mixture).__name__}")


class ToyDataModule(L.LightningDataModule):
    """Samples of a Gaussian mixture as a fixed training set; batches are ``(x [B, D], component [B])``.

    Args:
        mixture: a preset name (``two_modes``, ``eight_gaussians``, ``grid``), a mapping with ``preset`` and its
            keyword arguments, or a mapping with ``weights``, ``means`` and ``covs`` or ``stds`` (any dimension).
        n_train: size of the fixed training set.
        n_val: size of the validation set (0: none).
        batch_size: training batch size.
        seed: seed of the data sets and of the per-epoch shuffling.
        num_workers: DataLoader workers (0 is fastest for in-memory points).
    """

    def __init__(self, mixture: Any = "two_modes", n_train: int = 65_536, n_val: int = 8192, batch_size: int = 1024,
                 seed: int = 0, num_workers: int = 0):
        super().__init__()
        for name, value in (("n_train", n_train), ("batch_size", batch_size)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if batch_size > n_train:
            raise ValueError(f"batch_size ({batch_size}) must not exceed n_train ({n_train})")
        self.mixture = build_mixture(mixture)
        self.n_train, self.n_val, self.batch_size = int(n_train), int(n_val), int(batch_size)
        self.seed, self.num_workers = int(seed), int(num_workers)
        self.train_set = self.val_set = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.mixture.dim,)

    @property
    def data_range(self) -> None:
        return None

    @property
    def num_classes(self) -> int:
        return self.mixture.n_components

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        gen = torch.Generator().manual_seed(self.seed)
        self.train_set = TensorDataset(*self.mixture.sample(self.n_train, generator=gen, return_labels=True))
        if self.n_val > 0:
            self.val_set = TensorDataset(*self.mixture.sample(self.n_val, generator=gen, return_labels=True))

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        steps_per_epoch = self.n_train // self.batch_size

        def samples_done() -> int:  # mid-epoch resume on one device (DDP re-shards with its own sampler)
            if trainer is None or trainer.world_size > 1:
                return 0
            return (trainer.global_step * trainer.accumulate_grad_batches) % steps_per_epoch * self.batch_size

        sampler = EpochSeededSampler(self.n_train, self.seed, (lambda: trainer.current_epoch) if trainer else None,
                                     samples_done)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=max(self.batch_size, 4096), num_workers=0)
