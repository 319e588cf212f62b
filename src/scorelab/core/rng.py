"""Randomness that follows a position, not a global state: one generator per sample, a shard of a larger draw,
and seeds derived from (seed, epoch, index, step, rank)."""
from __future__ import annotations

from collections.abc import Sequence

import torch


class PerSampleGenerator:
    """One ``torch.Generator`` per sample, so row ``i`` of every draw depends on its own seed alone.

    Passed wherever a sampler takes a ``generator``, it makes sample ``i`` a function of ``seeds[i]`` only: the
    same seed gives the same image at any batch size, in any batch, on any number of processes (the per-image
    seeding of Karras et al. 2022's reference code). Every draw must have the batch as its first dimension.

    Args:
        seeds: one integer seed per sample of the batch.
        device: where the generators (and so the draws) live.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("PerSampleGenerator needs at least one seed")
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def draw(self, shape: tuple[int, ...], dtype: torch.dtype, kind: str = "normal") -> torch.Tensor:
        """Standard normal (or U[0, 1)) noise of ``shape = (B, ...)`` with ``B == len(self)``, on ``self.device``."""
        if not shape or shape[0] != len(self.generators):
            raise ValueError(f"a draw of shape {tuple(shape)} does not have one row per seed ({len(self)} seeds)")
        fn = torch.randn if kind == "normal" else torch.rand
        return torch.stack([fn(tuple(shape[1:]), generator=g, dtype=dtype, device=self.device)
                            for g in self.generators])


class ShardedGenerator:
    """This process's rows of draws made for a larger batch: ``rows`` of a ``total``-row draw of ``generator``.

    Every draw first makes the noise of the whole batch (``total`` rows, exactly what a single process would draw
    from ``generator``) and keeps the rows this process holds. Data-parallel ranks that each hold ``rows`` of one
    global batch (rank ``r`` of ``W``: ``range(r, total, W)``) thus see, together, the noise of a single process
    with the whole batch: a run on ``W`` processes matches a run on one, example for example. The cost is drawing
    ``W`` times the local noise, small next to a network evaluation.

    Args:
        generator: the generator a single process would use (on the device the noise is drawn on).
        rows: the row indices of the global batch held here, one per local example, in local order.
        total: rows of the global batch.
    """

    def __init__(self, generator: torch.Generator, rows: Sequence[int], total: int):
        self.generator, self.total = generator, int(total)
        self.rows = torch.as_tensor(list(rows), dtype=torch.long)
        if len(self.rows) == 0 or int(self.rows.min()) < 0 or int(self.rows.max()) >= self.total:
            raise ValueError(f"rows must be a non-empty subset of range({total}), got {list(rows)[:8]}...")
        self.device = generator.device

    def __len__(self) -> int:
        return len(self.rows)

    def _global_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if not shape or shape[0] != len(self.rows):
            raise ValueError(f"a draw of shape {tuple(shape)} does not have one row per local example ({len(self)})")
        return (self.total, *shape[1:])

    def draw(self, shape: tuple[int, ...], dtype: torch.dtype, kind: str = "normal") -> torch.Tensor:
        """Standard normal (or U[0, 1)) noise of ``shape = (len(rows), ...)``, on the generator's device."""
        fn = torch.randn if kind == "normal" else torch.rand
        full = fn(self._global_shape(tuple(shape)), generator=self.generator, dtype=dtype, device=self.device)
        return full[self.rows.to(self.device)]

    def randint(self, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Integers in ``[0, high)`` of ``shape = (len(rows), ...)`` (as ``torch.randint`` over the whole batch)."""
        full = torch.randint(0, high, self._global_shape(tuple(shape)), generator=self.generator, device=self.device)
        return full[self.rows.to(self.device)]


def data_parallel_rows(local: int, rank: int, world: int) -> range:
    """Rows of a global batch of ``local * world`` examples that rank ``rank`` holds when ranks interleave
    (rank ``r`` takes positions ``r, r + W, ...``, as :class:`~scorelab.lit.toy_datamodule.EpochSeededSampler`
    shards the data)."""
    return range(rank, local * world, world)


Generator = torch.Generator | PerSampleGenerator | ShardedGenerator


def sample_noise(shape: tuple[int, ...], like: torch.Tensor, generator: Generator | None = None,
                 kind: str = "normal") -> torch.Tensor:
    """Noise of ``shape`` in ``like``'s dtype and device: standard normal or, with ``kind="uniform"``, U[0, 1).

    Drawn on the generator's own device (a CPU generator can drive GPU tensors), then moved to ``like``'s. A
    :class:`PerSampleGenerator` draws each row from its own generator, a :class:`ShardedGenerator` keeps its rows of
    a larger draw.
    """
    if kind not in ("normal", "uniform"):
        raise ValueError(f"kind must be normal or uniform, got {kind!r}")
    if isinstance(generator, (PerSampleGenerator, ShardedGenerator)):
        return generator.draw(tuple(shape), like.dtype, kind).to(like.device)
    device = generator.device if generator is not None else like.device
    draw = torch.randn if kind == "normal" else torch.rand
    return draw(shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed that is a pure function of some integers (SplitMix64's finaliser applied to each in turn).

    Used to derive per-sample and per-step seeds from a training position (seed, epoch, index, step, rank...):
    nearby positions give unrelated streams, and the result is the same on every run, machine and process.

    Args:
        *values: non-negative integers.

    Returns:
        An integer in ``[0, 2**63)``, accepted by ``torch.Generator.manual_seed``.
    """
    h = 0x9E3779B97F4A7C15
    for value in values:
        h = (h ^ (int(value) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h >> 1
