"""Binding class labels to a batch: the one place where labels are checked and matched to the examples.

Training binds each example's label to a conditional score model (:class:`BoundLabels`, for the losses, which call
``score_fn(x, t)``); classifier-free guidance (:mod:`scorelab.guidance.free`) and classifier guidance
(:mod:`scorelab.guidance.classifier`) bind the labels wanted for the samples. All three check labels with
:func:`check_labels` and fit them to a batch with :func:`labels_for`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def check_labels(labels: torch.Tensor | int, num_classes: int | None, allow_null: bool = False,
                 what: str = "labels must be class indices") -> torch.Tensor:
    """``labels`` (one int, or one per example ``[B]``) as a long tensor, refused when a class is out of range.

    Args:
        labels: class indices.
        num_classes: classes of the model or classifier (None: unknown, nothing checked).
        allow_null: accept the null class ``num_classes`` too (label dropout in training).
        what: how the message starts (it ends with the allowed range and the labels seen).

    Raises:
        ValueError: a label outside ``0..num_classes - 1`` (``0..num_classes`` with ``allow_null``), or labels of
            more than one dimension.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.ndim > 1:
        raise ValueError(f"{what}: one int or one label per example [B], got shape {tuple(labels.shape)}")
    if num_classes is None or labels.numel() == 0:
        return labels
    top = num_classes + int(allow_null)
    if bool(((labels < 0) | (labels >= top)).any()):
        raise ValueError(f"{what} 0..{top - 1}, got {labels.min().item()}..{labels.max().item()}")
    return labels


def labels_for(labels: torch.Tensor, x: torch.Tensor, verb: str = "are given") -> torch.Tensor:
    """The labels ``[B]`` of the batch ``x [B, ...]`` on its device: one int expanded to every example, or one label
    per example (refused, naming both counts, when they differ from the batch's)."""
    batch = x.shape[0]
    if labels.ndim == 0:
        return labels.to(x.device).expand(batch)
    if labels.shape[0] != batch:
        raise ValueError(f"{labels.shape[0]} labels {verb} but the score was asked for {batch} examples: bind "
                         "one label per example of the batch (or one int for all)")
    return labels.to(x.device)


class BoundLabels(nn.Module):
    """``(x, t) -> model(x, t, y)``: a conditional score with its labels bound, for code that calls
    ``score_fn(x, t)`` (the losses, the samplers).

    Args:
        model: a class-conditional score model ``(x, t, y) -> score``.
        y: labels ``[B]`` (the null class allowed), or one int for every example.
    """

    def __init__(self, model: Callable, y: torch.Tensor | int):
        super().__init__()
        object.__setattr__(self, "model", model)  # not a submodule: the wrapper owns no parameters
        self.y = torch.as_tensor(y, dtype=torch.long) if not torch.is_tensor(y) else y

    @property
    def learn_variance(self) -> bool:
        """Whether the bound model has a learned reverse variance (what ``loss=hybrid`` checks)."""
        return bool(getattr(self.model, "learn_variance", False))

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> Any:
        """The bound model's output; keywords (e.g. ``return_variance`` of the hybrid loss) pass through."""
        return self.model(x, t, labels_for(self.y, x, verb="are bound"), **kwargs)
