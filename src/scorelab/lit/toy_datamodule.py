"""A Lightning data module for toy Gaussian mixtures: a fixed, seeded training set with exact truth attached."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ..core.errors import UserError
from ..core.rng import mix_seed
from ..data.toy import GaussianMixture, mixture_from_spec
from ..domains import Points


class EpochSeededSampler(DistributedSampler):
    """A random permutation per epoch drawn from ``seed + epoch``, so the data order is a function of position,
    sharded over data-parallel ranks by the sampler itself.

    With ``position_fn`` (samples consumed so far by all ranks together, e.g. ``global_step * global batch``) the
    epoch and the samples already seen in it are derived from the training position itself, not from Lightning's
    epoch counter (which differs between a fresh run and one restored from a checkpoint): a resumed run, at an epoch
    end or mid-epoch, sees exactly the batches an uninterrupted run would. Without it, ``set_epoch`` decides.

    Under data parallelism (``world > 1``) rank ``r`` takes positions ``r, r + W, ...`` of the epoch's permutation
    (after the samples already seen), so the union of the ranks' ``k``-th batches is the ``k``-th batch a single
    process with ``W`` times the batch size would draw. Being a ``DistributedSampler`` itself, Lightning leaves it
    in place instead of wrapping it, so the data order does not depend on Lightning passing ``set_epoch`` on.

    Args:
        n: dataset size.
        seed: base seed of the permutations.
        position_fn: returns the number of samples consumed so far (all ranks).
        epoch_size: samples per epoch, all ranks together (``n`` rounded down to whole global batches when the
            loader drops the last one); a multiple of ``world``.
        with_seeds: yield ``(index, seed)`` pairs, ``seed`` a function of ``(seed, epoch, index)``, for datasets
            whose random augmentation must also follow the position (see ``UInt8ImageDataset``).
        rank: this process's data-parallel rank.
        world: number of data-parallel ranks.
    """

    def __init__(self, n: int, seed: int = 0, position_fn: Callable[[], int] | None = None,
                 epoch_size: int | None = None, with_seeds: bool = False, rank: int = 0, world: int = 1):
        super().__init__(range(n), num_replicas=world, rank=rank, shuffle=False, drop_last=True)
        self.n, self.seed, self.epoch, self.position_fn = n, seed, 0, position_fn
        self.epoch_size = epoch_size or n // world * world
        if not 0 < self.epoch_size <= n or self.epoch_size % world:
            raise ValueError(f"epoch_size must be a positive multiple of world={world} up to n={n}, "
                             f"got {self.epoch_size}")
        self.with_seeds = with_seeds

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        epoch, skip = self.epoch, 0
        if self.position_fn is not None:
            epoch, skip = divmod(self.position_fn(), self.epoch_size)
        gen = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.n, generator=gen)[skip:self.epoch_size][self.rank::self.num_replicas].tolist()
        if self.with_seeds:
            return iter([(i, mix_seed(self.seed, epoch, i)) for i in order])
        return iter(order)

    def __len__(self) -> int:
        return self.epoch_size // self.num_replicas


def train_sampler(trainer: L.Trainer | None, n: int, batch_size: int, seed: int,
                  with_seeds: bool = False) -> EpochSeededSampler:
    """The training sampler of a data module: order and sharding from the trainer's position, rank and world size.

    An epoch is ``n`` rounded down to whole global batches (``batch_size`` per device times the devices).
    """
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    global_batch = batch_size * world
    if n < global_batch:
        raise UserError(f"the training set ({n} examples) is smaller than one global batch ({batch_size} per "
                         f"device x {world} devices)")

    def consumed() -> int:  # samples trained on so far by all ranks together
        return trainer.global_step * trainer.accumulate_grad_batches * global_batch

    return EpochSeededSampler(n, seed, consumed if trainer is not None else None,
                              epoch_size=n // global_batch * global_batch, with_seeds=with_seeds, rank=rank,
                              world=world)


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
    def domain(self) -> Points:
        """Points of a known mixture: exact score, prior, NLL and classifier (:mod:`scorelab.domains`)."""
        return Points(self.mixture.dim, self.mixture)

    @property
    def num_classes(self) -> int:
        return self.mixture.n_components

    def check_available(self) -> None:
        """Nothing to check: the points are drawn from the mixture."""

    def points(self, split: str, n: int | None = None, seed: int = 0) -> torch.Tensor:
        """The points of a split: ``train`` and ``val`` are the fixed training and validation sets, ``test`` ``n``
        fresh points of the mixture drawn with ``seed`` (``n=None``: as many as the validation set)."""
        if split == "test":
            count = n or self.n_val
            if count < 1:
                raise UserError("split=test on toy data draws n fresh points: pass n=<count>")
            return self.mixture.sample(count, generator=torch.Generator().manual_seed(seed))
        self.setup()
        dataset = self.train_set if split == "train" else self.val_set
        if dataset is None:
            raise UserError(f"this toy data module has no {split} split (data.n_val=0); pick another split")
        return dataset.tensors[0]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        gen = torch.Generator().manual_seed(self.seed)
        self.train_set = TensorDataset(*self.mixture.sample(self.n_train, generator=gen, return_labels=True))
        if self.n_val > 0:
            self.val_set = TensorDataset(*self.mixture.sample(self.n_val, generator=gen, return_labels=True))

    def train_dataloader(self) -> DataLoader:
        sampler = train_sampler(self.trainer, self.n_train, self.batch_size, self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=max(self.batch_size, 4096), num_workers=0)
