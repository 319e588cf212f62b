"""The contract of a training objective.

An objective turns a score function and a batch of data into one loss per example; the training module averages
them. A new objective subclasses :class:`Objective`, implements :meth:`Objective.per_example`, and is named by a
``conf/loss/<name>.yaml`` whose ``_target_`` is its class (the SDE is passed as the ``sde`` argument).
"""
from __future__ import annotations

import abc
from collections.abc import Callable

import torch

ScoreFn = Callable[..., torch.Tensor]


class Objective(abc.ABC):
    """A training objective ``loss(score_fn, x0, generator) -> scalar``, the batch mean of :meth:`per_example`.

    Attributes:
        lr_scale: the factor the training module multiplies the optimizer's learning rate by for this objective
            (1: the rate as configured).
    """

    lr_scale: float = 1.0

    @abc.abstractmethod
    def per_example(self, score_fn: ScoreFn, x0: torch.Tensor, generator=None) -> torch.Tensor:
        """The loss of each example ``[B]`` of ``x0 [B, ...]``; all randomness from ``generator``."""

    def check_model(self, score_model: torch.nn.Module) -> None:
        """Refuse, in one line (``ValueError``), a score model this objective cannot train; called once when a run
        is built. The default accepts every model."""
        del score_model

    def __call__(self, score_fn: ScoreFn, x0: torch.Tensor, generator=None) -> torch.Tensor:
        """Scalar loss: the batch mean of :meth:`per_example`."""
        return self.per_example(score_fn, x0, generator).mean()


def loss_lr_scale(loss) -> float:
    """The learning-rate factor an objective is trained with (its :attr:`Objective.lr_scale`; 1 for a plain
    callable)."""
    return float(loss.lr_scale) if isinstance(loss, Objective) else 1.0
