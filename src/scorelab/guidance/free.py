"""Classifier-free guidance: sample a class-conditional score model towards its labels (Ho & Salimans 2022).

A network trained with label dropout (:class:`~scorelab.lit.module.ScoreModule` ``label_dropout``) estimates both
``s(x, t, y) = ∇ log p_t(x | y)`` and, with the null label, ``s(x, t, ∅) = ∇ log p_t(x)``. The guided score

    s_w(x, t, y) = s(x, t, ∅) + w (s(x, t, y) - s(x, t, ∅))

is the score of ``p_t(x) p_t(y | x)^w`` (up to the error of the estimates): ``w = 0`` is the unconditional model,
``w = 1`` the conditional one, ``w > 1`` sharpens the class (fewer, more typical samples). Ho & Salimans (2022,
Eq. 6) write it for noise predictions, ``eps~ = (1 + w') eps(z, c) - w' eps(z)``; noise and score are proportional
(``eps = -s(t) score``), so it is this formula with ``w = 1 + w'``: their ``w' = 0`` (plain conditional sampling)
is ``task.guidance=1`` here, their ``w' = 1`` is ``task.guidance=2``.

:class:`ClassifierFreeGuidance` is itself a score model ``(x, t) -> score``, so every sampler, the likelihood code
and the conditional tasks use it unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from .labels import check_labels, labels_for


class ClassifierFreeGuidance(nn.Module):
    """The guided score ``s(x, t, ∅) + w (s(x, t, y) - s(x, t, ∅))`` of a class-conditional model.

    ``scale = 0`` calls the model once without labels (exactly the unconditional score), ``scale = 1`` once with
    them (exactly the conditional score); any other scale evaluates both in one forward pass of a doubled batch.

    Args:
        model: a class-conditional score model ``model(x, t, y)`` (``y=None``: the null class), e.g. a
            :class:`~scorelab.models.ScoreModel` whose network has ``num_classes > 0``.
        labels: one label per example ``[B]`` (the batch the samplers will pass), or one ``int`` for every example
            (then any batch size is accepted).
        scale: the guidance weight ``w`` (finite; usually ``>= 0``).

    Raises:
        ValueError: the model has no classes, a label is out of range, or the scale is not a finite number.
    """

    def __init__(self, model: nn.Module, labels: torch.Tensor | int, scale: float = 1.0):
        super().__init__()
        num_classes = int(getattr(model, "num_classes", 0) or 0)
        if not num_classes:
            raise ValueError("classifier-free guidance needs a class-conditional model (num_classes > 0); this one "
                             "has no classes")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not torch.isfinite(
                torch.tensor(float(scale))):
            raise ValueError(f"the guidance scale must be a finite number, got {scale!r}")
        self.model, self.scale, self.num_classes = model, float(scale), num_classes
        self.register_buffer("labels", check_labels(labels, num_classes), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Guided score; ``x [B, ...]``, ``t [B]`` (or a scalar) -> ``[B, ...]``."""
        if self.scale == 0.0:
            return self.model(x, t)
        y = labels_for(self.labels, x, verb="were given")
        if self.scale == 1.0:
            return self.model(x, t, y)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        null = torch.full_like(y, self.num_classes)
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        conditional, unconditional = both.chunk(2)
        return unconditional + self.scale * (conditional - unconditional)
