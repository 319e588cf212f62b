"""Learning-rate schedules, instantiated from ``conf/scheduler`` as partials taking the optimizer."""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def linear_warmup(optimizer: Optimizer, warmup_steps: int = 5000) -> LambdaLR:
    """Linear warm-up from 0 to the base learning rate over ``warmup_steps`` steps, then constant (the reference's)."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)


def warmup_cosine(optimizer: Optimizer, warmup_steps: int = 100, total_steps: int = 3000,
                  min_ratio: float = 0.05) -> LambdaLR:
    """Linear warm-up, then cosine decay to ``min_ratio`` of the base rate at ``total_steps``."""
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def warmup_stable_decay(optimizer: Optimizer, warmup_steps: int = 100, total_steps: int = 3000,
                        decay_fraction: float = 0.2, min_ratio: float = 0.05) -> LambdaLR:
    """Linear warm-up, the base rate held, then a linear decay to ``min_ratio`` over the last ``decay_fraction`` of
    ``total_steps`` (warmup-stable-decay: Hu et al., *MiniCPM*, 2024; Hägele et al., *Scaling Laws and
    Compute-Optimal Training beyond Fixed Training Durations*, 2024). Keeps the full rate for most of the run
    (unlike the cosine, which starts decaying right after the warm-up) and anneals the gradient noise at the end.
    """
    if not 0.0 < decay_fraction <= 1.0:
        raise ValueError(f"decay_fraction must lie in (0, 1], got {decay_fraction}")
    decay_steps = max(1, round(decay_fraction * total_steps))
    decay_start = total_steps - decay_steps
    if decay_start < warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) minus the decay ({decay_steps} steps) must be at least "
                         f"warmup_steps ({warmup_steps})")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, max(0.0, (step - decay_start) / decay_steps))
        return 1.0 - (1.0 - min_ratio) * progress

    return LambdaLR(optimizer, factor)
