"""Checkpoints that survive preemption and crashes: atomic writes, and ``last.ckpt`` on SIGTERM or SIGUSR1.

* :class:`AtomicCheckpointIO` writes every checkpoint (periodic, last, SLURM's ``hpc_ckpt_*``) to a temporary file
  in the same folder and renames it over the target, with termination signals held back while it writes. A crash,
  a full disk or a kill mid-write leaves the previous file in place; a checkpoint whose weights hold NaN/Inf is
  refused, so it never replaces a good one.
* :class:`PreemptionCallback` turns SIGTERM and SIGUSR1 (what SLURM sends before the time limit with
  ``--signal=USR1@<seconds>``) into: ``last.ckpt`` written at the current step, exit status 0, and a run that
  ``ckpt_path=auto`` continues exactly.
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..core.errors import UserError
from ..core.io import atomic_path, deferred_signals

LAST = "last.ckpt"


class NonFiniteWeightsError(UserError):
    """A checkpoint about to be written holds NaN/Inf weights; the previous file was kept."""


def first_nonfinite(state_dict: dict[str, Any]) -> str | None:
    """The first floating-point entry of ``state_dict`` holding NaN or Inf, or None when all are finite."""
    for key, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None


def remove_unfinished_writes(folder: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that a kill interrupted (``.<name>.ckpt.<random>.tmp``).

    Args:
        folder: a checkpoint folder no other process is writing to.

    Returns:
        The files removed.
    """
    stale = sorted(Path(folder).glob(".*.ckpt.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary name in the target's folder, fsync, rename; signals deferred meanwhile.

    Local paths only get this treatment; remote URLs (``s3://``...) go through Lightning's own writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically.

        Args:
            checkpoint: the dictionary Lightning assembled.
            path: the target file.
            storage_options: unsupported (as in ``TorchCheckpointIO``).

        Raises:
            NonFiniteWeightsError: the weights hold NaN/Inf (nothing is written).
            OSError: the write failed (disk full...); the previous file at ``path`` is untouched.
        """
        bad = first_nonfinite(checkpoint.get("state_dict", {}))
        if bad is not None:
            raise NonFiniteWeightsError(
                f"refused to write {path} at step {checkpoint.get('global_step')}: weight {bad} holds NaN/Inf; the "
                "previous checkpoint was kept. The run diverged: lower the learning rate and resume from it")
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with deferred_signals(), atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def _is_lightnings(handler: Any) -> bool:
    """Whether a signal handler is Lightning's own (its SLURM requeue), which returns; others may exit."""
    return str(getattr(handler, "__module__", "") or "").startswith("lightning")


class PreemptionCallback(L.Callback):
    """On SIGTERM, SIGUSR1 or SIGUSR2 during training: write ``<dirpath>/last.ckpt`` at the current step and exit
    with 0.

    SIGTERM is Lightning's own: its signal connector stops the loop once the current step (and any validation it
    triggers) is complete, with ``SIGTERMException`` (a ``SystemExit``, so status 0), and this callback saves in
    ``on_exception``, so the checkpoint holds the state of a finished step. SIGUSR1 is re-raised as SIGTERM and
    takes the same path; under SLURM with auto-requeue Lightning's own SIGUSR1 handler runs first
    (``hpc_ckpt_N.ckpt`` and ``scontrol requeue``). Every rank calls ``save_checkpoint``; rank 0 writes.
    SIGUSR2 is submitit's preemption signal (``hydra/launcher=slurm_*``): its handler requeues the job and exits
    the process, so any handler that is not Lightning's runs only after ``last.ckpt`` is written.

    With ``save_at_end`` it also writes ``last.ckpt`` at the final step in ``on_train_end``; placed first among the
    callbacks, that happens before end-of-training evaluations (samples, metrics, FID), so a preemption during
    those loses no training.

    Args:
        dirpath: the checkpoint folder (ModelCheckpoint's ``dirpath``).
        signals: the extra signals that stop training like SIGTERM (default SIGUSR1 and SIGUSR2).
        save_at_end: write ``last.ckpt`` when training ends normally too.
    """

    def __init__(self, dirpath: str | Path, signals: tuple[str, ...] = ("SIGUSR1", "SIGUSR2"),
                 save_at_end: bool = False):
        self.dirpath = Path(dirpath)
        self.save_at_end = save_at_end
        self.signal_names = signals
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._after_save: list[tuple[Any, int]] = []  # replaced handlers that must wait for last.ckpt
        self.full_state = True  # resuming needs optimizer, loops and callbacks, not only the weights

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Clear what killed checkpoint writes of earlier runs in this folder left behind (rank 0)."""
        if trainer.is_global_zero and self.dirpath.is_dir():
            stale = remove_unfinished_writes(self.dirpath)
            if stale:
                print(f"removed {len(stale)} unfinished checkpoint write(s) from {self.dirpath}", file=sys.stderr)

    # --- signals -------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Install the SIGUSR1 handler, after Lightning's own (which it then calls first)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.signal_names:
            signum = getattr(signal, name, None)
            if signum is not None:
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        """SIGUSR1/2: run Lightning's handler it replaced (SLURM requeue) now, others after the save; stop as on
        SIGTERM."""
        previous = self._previous.get(signum)
        if callable(previous):
            if _is_lightnings(previous):
                previous(signum, frame)  # Lightning's SLURM requeue handler
            else:
                self._after_save.append((previous, signum))  # e.g. submitit's requeue, which exits the process
        self.received = signum
        signal.raise_signal(signal.SIGTERM)  # from here on exactly Lightning's SIGTERM path

    def _restore(self) -> None:
        """Put back the handlers replaced in :meth:`on_train_start`."""
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    # --- the save ------------------------------------------------------------------------------------
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Save ``last.ckpt`` when the loop was stopped by a termination signal; leave other failures alone."""
        self._restore()
        if not isinstance(exception, SIGTERMException) or trainer.fast_dev_run:
            return
        path = self.dirpath / LAST
        trainer.save_checkpoint(str(path), weights_only=not self.full_state)
        name = signal.Signals(self.received).name if self.received else "SIGTERM"
        message = (f"{name}: saved {path} at step {trainer.global_step}; continue with ckpt_path={path} "
                   "(or ckpt_path=auto hydra.run.dir=<this run folder>)")
        if trainer.is_global_zero:
            print(message, file=sys.stderr, flush=True)
        pending, self._after_save = self._after_save, []
        for handler, signum in pending:
            handler(signum, None)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Give SIGUSR1 back to its previous handler; with ``save_at_end``, write ``last.ckpt`` at the final step
        (ModelCheckpoint saves only when validation runs, which need not be the last step)."""
        self._restore()
        if self.save_at_end and not trainer.fast_dev_run:
            trainer.save_checkpoint(str(self.dirpath / LAST), weights_only=not self.full_state)
