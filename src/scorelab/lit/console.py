"""What training shows on the console: the global step out of ``max_steps`` with an ETA, a model summary of a few
lines, and a checkpoint callback that asks for ``val/loss`` only when validation runs.

Configured in ``conf/callbacks/default.yaml`` (``progress_bar``, ``model_summary``, ``model_checkpoint``);
``train.py`` adds the progress bar and the summary when a callbacks config leaves them out, and drops them when
``trainer.enable_progress_bar`` / ``trainer.enable_model_summary`` is false.
"""
from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, Timer
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count

from ..core.console import Progress, format_seconds, say

__all__ = ["CompactModelSummary", "StepProgressBar", "ValidatedCheckpoint", "time_limit"]


def time_limit(trainer: L.Trainer) -> float | None:
    """``trainer.max_time`` in seconds (its Timer callback), or None."""
    for cb in trainer.callbacks:
        if isinstance(cb, Timer) and getattr(cb, "_duration", None):
            return float(cb._duration)
    return None


class StepProgressBar(ProgressBar):
    """Training progress as the global step out of ``trainer.max_steps`` (or the time out of ``trainer.max_time``
    when no step budget is set) with an ETA, and the last ``train/loss``; instead of Lightning's per-epoch bar
    (``Epoch 23/-2``, since runs are counted in steps).

    On a terminal it is a tqdm bar on stderr; otherwise (a log, a pipe, SLURM) one line every ``every`` percent,
    which also goes into ``train.log``. Rank 0 only; validation draws no bar.

    Args:
        every: the percentage between two lines when stderr is not a terminal.
    """

    def __init__(self, every: float = 10.0):
        super().__init__()
        if not 0 < every <= 100:
            raise ValueError(f"every must be in (0, 100], got {every}")
        self.every = float(every)
        self._enabled = True
        self.bar: Progress | None = None
        self._by_time = False

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.bar is not None and self.bar._bar is not None:
            self.bar._bar.write(" ".join(str(a) for a in args))
        else:
            print(*args, **kwargs)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        steps, seconds = trainer.max_steps, time_limit(trainer)
        if steps is None or steps < 0:  # an epoch budget: the steps it makes
            batches = self.total_train_batches
            if trainer.max_epochs and trainer.max_epochs > 0 and batches not in (None, float("inf")):
                steps = int(trainer.max_epochs * batches // max(1, trainer.accumulate_grad_batches))
        if steps is not None and steps > 0:
            limit = f" (or {format_seconds(seconds)}, max_time)" if seconds else ""
            self.bar = Progress(steps, f"training{limit}", "step", every=self.every,
                                fmt=lambda n: f"step {int(n)}/{steps}", initial=trainer.global_step, quiet_seconds=0)
        elif seconds:
            self._by_time = True
            self.bar = Progress(seconds, "training (max_time)", "s", every=self.every, quiet_seconds=0,
                                fmt=lambda n: f"{format_seconds(n)} of {format_seconds(seconds)}, step "
                                              f"{trainer.global_step}")
        else:
            self.bar = Progress(None, "training", "step", every=self.every, initial=trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.bar is None:
            return
        metrics = self.get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        shown = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()]
        self.bar.set_postfix_str(", ".join(shown))
        if self._by_time:  # the Timer's own clock, which decides when training stops
            timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
            elapsed = timer.time_elapsed() if timer is not None else self.bar.elapsed
            self.bar.set_to(int(min(elapsed, self.bar.total or elapsed)))
        else:
            self.bar.set_to(trainer.global_step)
            if self.bar.total and trainer.global_step >= self.bar.total:
                self._close()  # the last step: what follows (evaluations at the end) has bars of its own

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()


class CompactModelSummary(ModelSummary):
    """The model in a few lines: its top-level modules with their parameters, and the totals (no FLOPs column, which
    Lightning fills with 0 when the module has no ``example_input_array``)."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int = 0,
                  **summarize_kwargs: Any) -> None:
        columns = dict(summary_data)
        names, types, params = columns.get("Name", []), columns.get("Type", []), columns.get("Params", [])
        width = max((len(n) for n in names), default=0)
        type_width = max((len(t) for t in types), default=0)
        rows = [f"  {n:<{width}}  {t:<{type_width}}  {p:>7}" for n, t, p in
                zip(names, types, params, strict=False)]
        frozen = total_parameters - trainable_parameters
        head = (f"model: {get_human_readable_count(trainable_parameters)} trainable parameters"
                + (f", {get_human_readable_count(frozen)} not trained (EMA copy, frozen parts)" if frozen else "")
                + f", {model_size:.1f} MB")
        say("\n".join([head, *rows]))


class ValidatedCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that keeps the "best" checkpoint by ``monitor`` only once validation ran.

    * Without validation (``trainer.limit_val_batches=0``, no validation data) there is no ``val/loss`` to rank by:
      ``monitor`` is dropped and the newest checkpoint is kept, which is what the best-by-nothing checkpoint is.
    * Before the first validation (a run shorter than its first validation epoch, which stops mid-epoch) there is
      nothing to rank yet: no "best" checkpoint is written (``last.ckpt`` still is, at the final step), where
      Lightning would warn that it "could not find the monitored key".

    A monitor that validation does not log still fails as in Lightning, after validation ran.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.monitor is not None and not _validation_runs(trainer):
            self.monitor = None
            self.mode = "min"

    def _generate_state_key(self, **kwargs: Any) -> str:
        """Lightning's own key (``ModelCheckpoint{...}``): checkpoints written before and after resume alike."""
        return f"ModelCheckpoint{kwargs!r}"

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if (self.monitor is not None and self.monitor not in monitor_candidates
                and not trainer.fit_loop.epoch_loop.val_loop._has_run):
            return  # no validation yet: nothing to rank by
        super()._save_topk_checkpoint(trainer, monitor_candidates)


def _validation_runs(trainer: L.Trainer) -> bool:
    """Whether this fit can run a validation loop at all (validation data, ``limit_val_batches`` not 0)."""
    limit = trainer.limit_val_batches
    if limit is not None and limit == 0:
        return False
    datamodule = getattr(trainer, "datamodule", None)
    model = trainer.lightning_module
    has_val = (datamodule is not None and type(datamodule).val_dataloader is not L.LightningDataModule.val_dataloader) \
        or (model is not None and type(model).val_dataloader is not L.LightningModule.val_dataloader) \
        or (model is not None and type(model).validation_step is not L.LightningModule.validation_step)
    return bool(has_val)
