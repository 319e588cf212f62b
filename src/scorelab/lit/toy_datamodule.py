"""A Lightning data module for toy Gaussian mixtures: a fixed, seeded training set with exact truth attached."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from ..data.toy import GaussianMixture, mixture_from_spec
from ..utils import mix_seed


class EpochSeededSampler(Sampler[int]):
    """A random permutation per epoch drawn from ``seed + epoch``, so the data order is a function of position.

    With ``position_fn`` (samples consumed so far, e.g. ``global_step * batch_size``) the epoch and the samples
    already seen in it are derived from the training position itself, not from Lightning's epoch counter (which
    differs between a fresh run and one restored from a checkpoint): a resumed run, at an epoch end or
    mid-epoch, sees exactly the batches an uninterrupted run would. Without it, ``set_epoch`` decides.

    Args:
        n: dataset size.
        seed: base seed of the permutations.
        position_fn: returns the number of samples consumed so far.
        epoch_size: samples per epoch (``n`` rounded down to whole batches when the loader drops the last one).
        with_seeds: yield ``(index, seed)`` pairs, ``seed`` a function of ``(seed, epoch, index)``, for datasets
            whose random augmentation must also follow the position (see ``UInt8ImageDataset``).
    """

    def __init__(self, n: int, seed: int = 0, position_fn: Callable[[], int] | None = None,
                 epoch_size: int | None = None, with_seeds: bool = False):
        self.n, self.seed, self.epoch, self.position_fn = n, seed, 0, position_fn
        self.epoch_size = epoch_size or n
        self.with_seeds = with_seeds

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        epoch, skip = self.epoch, 0
        if self.position_fn is not None:
            epoch, skip = divmod(self.position_fn(), self.epoch_size)
        gen = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.n, generator=gen)[skip:].tolist()
        if self.with_seeds:
            return iter([(i, mix_seed(self.seed, epoch, i)) for i in order])
        return iter(order)

    def __len__(self) -> int:
        return self.n


class ToyDataModule(L.LightningDataModule):
    """Samples of a Gaussian mixture as a fixed training set; batches are ``(x [B, D], component [B])``.

    The mixture states what the module exposes: ``sample_shape`` is ``(mixture.dim,)`` and ``num_classes`` its
    component count. Configs build it with a ``_target_`` (``scorelab.data.toy.two_modes``, ``GaussianMixture``, or
    any function returning a mixture).

    Args:
        mixture: the :class:`~scorelab.data.toy.GaussianMixture`; for older configs and checkpoints also a preset
            name or a mapping without ``_target_`` (see :func:`~scorelab.data.toy.mixture_from_spec`).
        n_train: size of the fixed training set.
        n_val: size of the validation set (0: none).
        batch_size: training batch size.
        seed: seed of the data sets and of the per-epoch shuffling.
        num_workers: DataLoader workers (0 is fastest for in-memory points).
    """

    def __init__(self, mixture: GaussianMixture | str | Mapping[str, Any] = "two_modes", n_train: int = 65_536,
                 n_val: int = 8192, batch_size: int = 1024,
                 seed: int = 0, num_workers: int = 0):
        super().__init__()
        for name, value in (("n_train", n_train), ("batch_size", batch_size)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if batch_size > n_train:
            raise ValueError(f"batch_size ({batch_size}) must not exceed n_train ({n_train})")
        self.mixture = mixture if isinstance(mixture, GaussianMixture) else mixture_from_spec(mixture)
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

        def consumed() -> int:  # samples trained on so far; under DDP Lightning re-shards per epoch with set_epoch
            return trainer.global_step * trainer.accumulate_grad_batches * self.batch_size

        position = consumed if trainer is not None and trainer.world_size == 1 else None
        sampler = EpochSeededSampler(self.n_train, self.seed, position,
                                     epoch_size=self.n_train // self.batch_size * self.batch_size)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=max(self.batch_size, 4096), num_workers=0)
