"""Fault injection for the reliability tests, reachable from configs (``loss._target_=tests.faults.FaultyLoss``)."""
from __future__ import annotations

import sys

import lightning as L
import torch

from scorelab.objectives.score_matching import DSMLoss


class FaultyLoss(DSMLoss):
    """The DSM loss, broken on chosen training steps (validation calls run under no_grad and are left alone).

    Args:
        sde: the forward SDE.
        nan_loss_at: training steps (0-based calls with gradients) whose loss is NaN.
        nan_grad_at: training steps whose loss is finite but whose gradients are NaN.
        raise_at: a training step that raises ``ValueError`` (a bug deep inside a step).
        **kwargs: the other :class:`DSMLoss` arguments.
    """

    def __init__(self, sde, nan_loss_at=(), nan_grad_at=(), raise_at: int | None = None, **kwargs):
        super().__init__(sde, **kwargs)
        self.nan_loss_at, self.nan_grad_at, self.raise_at = set(nan_loss_at), set(nan_grad_at), raise_at
        self.calls = 0

    def __call__(self, score_fn, x0, generator=None):
        loss = super().__call__(score_fn, x0, generator)
        if not torch.is_grad_enabled():
            return loss
        step, self.calls = self.calls, self.calls + 1
        if step == self.raise_at:
            raise ValueError(f"injected bug at training step {step}")
        if step in self.nan_loss_at:
            return loss * float("nan")
        if step in self.nan_grad_at:  # sqrt'(0) = inf: a zero added to the loss whose gradient is 0 * inf = NaN
            first = next(p for p in score_fn.parameters() if p.requires_grad)
            return loss + 0.0 * torch.sqrt((first - first.detach()).abs().sum())
        return loss


class StepMarker(L.Callback):
    """Print ``step <global_step>`` to stdout after every training step (a test waits for it, then signals)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        print(f"step {trainer.global_step}", file=sys.stdout, flush=True)


class NaNSampler:
    """A sampler whose state turns NaN at step ``at_step`` (what a diverging sampler or model does)."""

    def __init__(self, at_step: int = 1, **ignored):
        self.at_step = at_step

    def __call__(self, score_fn, sde, shape, generator=None, device=None, dtype=torch.float32, callback=None,
                 x_init=None):
        x = torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)
        if callback is not None:
            callback({"i": self.at_step, "t": 0.5, "x": x, "x_mean": x})
        return x, self.at_step + 1

    def __repr__(self) -> str:
        return f"NaNSampler(at_step={self.at_step})"


class LastCheckpointProbe(L.Callback):
    """Record, when training ends, the step of ``last.ckpt`` as the end-of-training evaluations would find it."""

    seen: list[tuple[int, int | None]] = []

    def on_train_end(self, trainer, pl_module) -> None:
        from pathlib import Path

        path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        saved = torch.load(path, weights_only=True)["global_step"] if path.is_file() else None
        LastCheckpointProbe.seen.append((trainer.global_step, saved))


class SignalAtStep(L.Callback):
    """Send ``signum`` to this process once ``step`` optimizer steps are done (a preemption at a known step)."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum, self.sent = step, signum, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.sent and trainer.global_step >= self.step:
            import os

            self.sent = True
            os.kill(os.getpid(), self.signum)
