"""What every sampler shares: the :class:`Sampler` contract, time grids, NFE counting and the callback contract."""
from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import torch

from ..core.errors import UserError
from ..core.rng import sample_noise
from ..ops.flow import batch_time  # noqa: F401  (re-exported: the samplers take it from here)

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]
# ``project(x [B, ...], t [B]) -> x [B, ...]``: a map applied to the state after every step (e.g. replacing known
# pixels, :mod:`scorelab.tasks.conditional`); the sampler continues from what it returns.
Project = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Sampler(abc.ABC):
    """The contract of a sampler: ``sampler(score_fn, sde, shape, ...) -> (samples, nfe)``.

    A new sampler subclasses this, implements :meth:`__call__` with the arguments below, and is named by a
    ``conf/sampler/<name>.yaml`` whose ``_target_`` is its class.

    Attributes:
        supports_inpainting: whether ``project=`` may be passed: the sampler applies it to its state after every step
            and continues from what it returns (what inpainting and colourisation need,
            :mod:`scorelab.tasks.conditional`). A sampler that cannot says why in :meth:`inpainting_refusal`.
    """

    supports_inpainting: bool = True

    @abc.abstractmethod
    def __call__(self, score_fn: ScoreFn, sde, shape: tuple[int, ...] | None = None,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, callback: Callback | None = None,
                 x_init: torch.Tensor | None = None, project: Project | None = None) -> tuple[torch.Tensor, int]:
        """Draw samples of ``shape`` from ``sde``'s prior at ``T`` (or from ``x_init``) down to the data end.

        Args:
            score_fn: ``(x [B, ...], t [B]) -> score [B, ...]``.
            sde: the forward SDE.
            shape: ``(B, ...)``; may be None when ``x_init`` is given.
            generator: source of all randomness (``torch.Generator`` or a per-sample generator).
            device, dtype: of the samples.
            callback: called after every step with ``{"i", "t", "x", "x_mean"}``.
            x_init: the initial state instead of a prior sample.
            project: applied to the state after every step (see :attr:`supports_inpainting`).

        Returns:
            ``(samples [B, ...], nfe)``: NFE counts batched score evaluations.
        """

    def describe(self) -> str:
        """What this sampler is, in words, for titles and messages: e.g. ``"PC: reverse diffusion + Langevin
        (snr 0.16), 1000 steps"`` (subclasses name their method; this default gives the class and its steps)."""
        steps = getattr(self, "steps", None)
        return type(self).__name__ + (f", {steps} steps" if steps is not None else "")

    def inpainting_refusal(self) -> str:
        """Why ``project=`` cannot be used (only read when :attr:`supports_inpainting` is False)."""
        return "its steps do not take a project= hook"

    def check_project(self, project: Project | None) -> None:
        """Refuse, in one line, a ``project`` hook this sampler cannot apply."""
        if project is not None:
            refuse_project(self)


class GridSampler(Sampler):
    """A sampler that walks a time grid of ``steps`` steps from ``T`` down to ``eps``.

    Args:
        steps: N, the number of grid steps.
        eps: the final time of the grid.
        grid: time-grid kind or :class:`~scorelab.sampling.TimeGrid` (see :func:`~scorelab.sampling.time_grid`).
        denoise: finish with a noise-free last step (each subclass says which).
    """

    def __init__(self, steps: int, eps: float, grid, denoise: bool):
        from .grids import as_grid

        self.grid = as_grid(grid)
        self.grid.check(steps, eps)
        self.steps, self.eps, self.denoise = steps, eps, bool(denoise)


def describe_sampler(sampler) -> str:
    """:meth:`Sampler.describe` of ``sampler``, or its class name when it is some other callable."""
    return sampler.describe() if isinstance(sampler, Sampler) else type(sampler).__name__


def refuse_project(sampler) -> None:
    """Raise :class:`UserError` naming ``sampler`` when it cannot replace known values after every step."""
    if isinstance(sampler, Sampler) and sampler.supports_inpainting:
        return
    reason = sampler.inpainting_refusal() if isinstance(sampler, Sampler) else \
        "it is not a scorelab.sampling.Sampler that takes project="
    raise UserError(f"{sampler!r} cannot replace known values during sampling: {reason}; use a predictor-corrector "
                    "or few-step sampler, e.g. sampler=dpmpp_2m_sde")


class CountingScore:
    """Wrap a score function and count its (batched) evaluations: the honest NFE."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn, self.nfe = score_fn, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.score_fn(x, t)


def initial_noise(sde, shape, generator, device, dtype, x_init):
    """The caller's initial state if given, else a prior sample ``x(T)``."""
    if x_init is not None:
        return x_init
    return sde.prior_sampling(tuple(shape), generator=generator, device=device, dtype=dtype)


def noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``z ~ N(0, I)`` shaped like ``x``; drawn on the generator's device and moved to ``x``'s."""
    return sample_noise(x.shape, x, generator)
