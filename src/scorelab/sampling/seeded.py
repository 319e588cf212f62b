"""Generate many samples in batches, sample ``i`` from its own seed, and stop at the first non-finite step.

Because every sample draws its noise from its own generator (:class:`~scorelab.core.rng.PerSampleGenerator`), a
seed range gives the same samples at any batch size and split across any number of processes (on one device
type: CPU and CUDA generators differ).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch

from ..core.errors import UserError
from ..core.rng import PerSampleGenerator
from ..sde import SDE
from .base import ScoreFn


class NonFiniteSamplesError(UserError):
    """A sampler produced NaN or Inf: the message names the sampler, the step and the seeds."""


class SeededBatch(NamedTuple):
    """One batch: position of its first sample, its seeds, the samples ``[B, ...]`` and the sampler's NFE."""

    start: int
    seeds: list[int]
    x: torch.Tensor
    nfe: int


class FiniteWatch:
    """A sampler callback that remembers the first step whose state is not finite (one reduction per step)."""

    def __init__(self):
        self.bad_step: dict | None = None

    def __call__(self, info: dict) -> None:
        if self.bad_step is None and not bool(torch.isfinite(info["x"]).all()):
            self.bad_step = {"i": info["i"], "t": info["t"]}

    def where(self, x: torch.Tensor, step: str = "step") -> str | None:
        """None when the samples ``x`` and every step were finite; else where they stopped being finite (``at step
        i (t = ...)`` or ``in its final step``), for the caller's message."""
        if self.bad_step is None and bool(torch.isfinite(x).all()):
            return None
        bad = self.bad_step
        return f"at {step} {bad['i']} (t = {bad['t']:.4g})" if bad else "in its final step"


def draw_seeded(sampler: Callable, score_fn: ScoreFn, sde: SDE, sample_shape: Sequence[int], seeds: Sequence[int],
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                on_step: Callable[[dict], None] | None = None) -> tuple[torch.Tensor, int, FiniteWatch]:
    """Draw one batch, sample ``k`` from seed ``seeds[k]`` alone (:class:`~scorelab.core.rng.PerSampleGenerator`):
    the one seeded drawing of ``sample.py``, the FID callback and the training-time pictures and metrics, so a seed
    range gives the same samples in all of them, at any batch size and on any number of processes.

    ``on_step`` (e.g. a progress bar's) is called after every sampler step with the sampler's callback dict.

    Returns:
        ``(samples [len(seeds), ...], nfe, watch)``; ``watch.bad_step`` names the first non-finite step, if any.
    """
    watch = FiniteWatch()
    callback = watch
    if on_step is not None:
        def callback(info: dict) -> None:
            watch(info)
            on_step(info)
    x, nfe = sampler(score_fn, sde, (len(seeds), *sample_shape), generator=PerSampleGenerator([int(s) for s in seeds],
                                                                                            device),
                     device=device, dtype=dtype, callback=callback)
    return x, nfe, watch


def seeded_batches(sampler: Callable, score_fn: ScoreFn, sde: SDE, sample_shape: Sequence[int],
                   seeds: Sequence[int], batch_size: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, on_step: Callable[[dict], None] | None = None
                   ) -> Iterator[SeededBatch]:
    """Yield batches of samples, sample ``k`` drawn with seed ``seeds[k]`` whatever the batching.

    Args:
        sampler: a scorelab sampler ``(score_fn, sde, shape, generator=, device=, dtype=, callback=)``.
        score_fn: the score model.
        sde: the forward SDE.
        sample_shape: shape of one sample, e.g. ``(2,)`` or ``(3, 32, 32)``.
        seeds: one seed per sample (e.g. ``range(seed, seed + n)``).
        batch_size: samples per sampler call.
        device, dtype: where and in what precision to sample.
        on_step: called after every sampler step (a progress bar).

    Raises:
        NonFiniteSamplesError: a batch became NaN/Inf; nothing of that batch is yielded.
    """
    seeds = [int(s) for s in seeds]
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start:start + batch_size]
        x, nfe, watch = draw_seeded(sampler, score_fn, sde, sample_shape, chunk, device, dtype, on_step)
        where = watch.where(x)
        if where is not None:
            raise NonFiniteSamplesError(
                f"{sampler!r} produced NaN/Inf {where} for seeds {chunk[0]}..{chunk[-1]}; nothing of this batch was "
                "written. Try more steps, another sampler, or check the model (e.g. a checkpoint from before a "
                "divergence)")
        yield SeededBatch(start, chunk, x, nfe)
