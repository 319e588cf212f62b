"""What training does when the loss or the gradients hold NaN/Inf: skip the optimizer step, or stop.

Checked once per optimizer step, after backward and before the update (Lightning's ``on_before_optimizer_step``),
so the weights, the optimizer state and the EMA are never touched by a non-finite step. Under DDP the gradients are
already averaged over ranks and the decision is all-reduced, so every rank skips or stops together. With fp16 loss
scaling (``precision=16-mixed``) only the loss is checked: overflowing gradients are normal there, and the
scaler skips those steps itself.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from lightning.pytorch.utilities import rank_zero_warn

from ..core.errors import UserError

POLICIES = ("skip", "stop")


class NonFiniteTrainingError(UserError):
    """Training stopped on a NaN/Inf loss or gradient (policy ``stop``, or too many skipped steps in a row)."""


def gradients_finite(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """Whether every gradient entry is finite, as a 0-dim bool tensor (no host synchronisation).

    The total norm is non-finite exactly when some entry is NaN or Inf (or the norm overflows, ~1e38 in fp32).

    Args:
        parameters: the parameters whose ``.grad`` to check (those without one are left out).

    Returns:
        A bool tensor on the gradients' device (CPU when there is none).
    """
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(True)
    total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # fused per-device norms (torch >= 2.6)
    if total_norm is not None:
        return torch.isfinite(total_norm(grads))
    return torch.isfinite(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))


class NonFiniteGuard:
    """Per-step check of loss and gradients with a policy, and the count of skipped steps.

    Args:
        policy: ``"skip"``: leave out the optimizer and EMA update of a non-finite step, count it and go on;
            ``"stop"``: stop training with an error naming the step (checkpoints already written are kept).
        patience: with ``skip``, stop anyway after this many non-finite steps in a row (a run that only skips
            makes no progress).
    """

    def __init__(self, policy: str = "skip", patience: int = 20):
        if policy not in POLICIES:
            raise UserError(f"module.nonfinite must be one of {POLICIES}, got {policy!r}")
        if not isinstance(patience, int) or patience < 1:
            raise UserError(f"module.nonfinite_patience must be a positive integer, got {patience!r}")
        self.policy, self.patience = policy, patience
        self.skipped, self.in_a_row = 0, 0
        self._loss_ok: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None

    def observe_loss(self, loss: torch.Tensor) -> None:
        """Record one micro-batch's loss (several per step under gradient accumulation).

        Args:
            loss: the scalar training loss, before backward.
        """
        ok = torch.isfinite(loss.detach()).all()
        self._loss_ok = ok if self._loss_ok is None else self._loss_ok & ok
        self._loss = loss.detach()

    def check(self, module, optimizer: torch.optim.Optimizer) -> bool:
        """Decide this step; on a non-finite one drop the gradients (the update becomes a no-op) or raise.

        Args:
            module: the LightningModule (its trainer gives the step, the ranks and the checkpoint folder).
            optimizer: the optimizer about to step.

        Returns:
            True when the step is skipped.

        Raises:
            NonFiniteTrainingError: policy ``stop``, or ``patience`` skipped steps in a row.
        """
        trainer = module.trainer
        loss_ok = self._loss_ok if self._loss_ok is not None else torch.tensor(True)
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            grads_ok = torch.tensor(True)  # fp16 loss scaling: overflowing gradients are the scaler's to skip
        else:
            grads_ok = gradients_finite(p for group in optimizer.param_groups for p in group["params"])
        flags = torch.stack([~loss_ok.to(module.device), ~grads_ok.to(module.device)])
        if trainer.world_size > 1:
            flags = trainer.strategy.reduce(flags.float(), reduce_op="sum") > 0
        bad_loss, bad_grads = (bool(f) for f in flags.tolist())
        self._loss_ok = None
        if not (bad_loss or bad_grads):
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        step = trainer.global_step
        what = (f"the loss was {float(self._loss):g}" if bad_loss and self._loss is not None and self._loss.numel() == 1
                else "the loss was not finite" if bad_loss else "the gradients held NaN/Inf (the loss was finite)")
        if self.policy == "stop" or self.in_a_row >= self.patience:
            raise NonFiniteTrainingError(self._stop_message(trainer, step, what))
        optimizer.zero_grad(set_to_none=True)  # no gradient: the optimizer leaves every parameter and its state alone
        self.skipped += 1
        rank_zero_warn(f"step {step}: {what}; skipped the optimizer and EMA update ({self.skipped} skipped so far, "
                       "module.nonfinite=skip)")
        return True

    def _stop_message(self, trainer, step: int, what: str) -> str:
        reason = (f"{self.in_a_row} steps in a row were not finite (module.nonfinite_patience={self.patience})"
                  if self.policy == "skip" else "module.nonfinite=stop")
        ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
        advice = "lower the learning rate or clip gradients harder, or use module.nonfinite=skip"
        then = (f"the last good checkpoint, {ckpt}, is kept: {advice}, and resume from it" if ckpt
                else f"no checkpoint had been written yet: {advice}")
        return f"training stopped at step {step}: {what} [{reason}]; {then}"

    def state_dict(self) -> dict[str, int]:
        """The counters, for checkpoints."""
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the counters from :meth:`state_dict`."""
        self.skipped, self.in_a_row = int(state.get("skipped", 0)), int(state.get("in_a_row", 0))
