"""Exponential moving average of weights, built on ``torch.optim.swa_utils.AveragedModel``."""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(rate: float, num_updates: int, warmup: bool = True) -> float:
    """The reference's decay ``min(rate, (1 + n) / (10 + n))`` (Song et al. 2021 code), or ``rate`` without warmup."""
    return min(rate, (1.0 + num_updates) / (10.0 + num_updates)) if warmup else rate


class EMA(AveragedModel):
    """An EMA copy of a module: ``ema <- d ema + (1 - d) param``; buffers are copied.

    It is an ``nn.Module``, so it lives in the LightningModule's state dict and every checkpoint saves and
    restores it (with its update count ``n_averaged``).

    Args:
        model: the module to average.
        decay: the EMA rate (0.9999 for VP/sub-VP images, 0.999 for VE and toy data in the reference).
        warmup: use the reference's warm-up ``min(decay, (1 + n) / (10 + n))``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must lie in [0, 1), got {decay}")
        self._rate, self._warmup = decay, warmup
        super().__init__(model, multi_avg_fn=self._update, use_buffers=True)
        for p in self.module.parameters():  # never trained: DDP must not wait for their gradients
            p.requires_grad_(False)

    @torch.no_grad()
    def _update(self, ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged) -> None:
        # AveragedModel copies the weights on its first call and calls us from the second on.
        decay = ema_decay_at(self._rate, int(num_averaged), self._warmup)
        floats = [(e, p) for e, p in zip(ema_params, params, strict=True) if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [p for _, p in floats], 1.0 - decay)
        for e, p in zip(ema_params, params, strict=True):
            if not e.is_floating_point():
                e.copy_(p)
