"""Which checkpoint ``train.py ckpt_path=...`` continues from: a file, a run folder, ``last`` or ``auto``.

``last`` and ``auto`` look in the current run folder (``paths.output_dir``; pin it with ``hydra.run.dir=<run>``, so a
requeued job lands in the folder of the job it continues), which Lightning's own ``ckpt_path="last"`` does not do
when Hydra makes a new folder per run.
"""
from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from ..core.errors import UserError

RESUME_KEYWORDS = ("last", "auto")
CHECKPOINT_NAMES = ("checkpoints/last.ckpt", "last.ckpt")


def _unusable(path: Path) -> str | None:
    """Why an entry named like a checkpoint cannot be one (a dangling link, a folder), or None."""
    if path.is_symlink() and not path.exists():
        return f"is a link to {os.readlink(path)}, which does not exist (a scratch disk not mounted?)"
    if path.exists() and not path.is_file():
        return "is not a file"
    return None


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """Resumable checkpoints of a run folder: ``checkpoints/last.ckpt`` and SLURM's ``hpc_ckpt_N.ckpt``.

    Args:
        run_dir: a ``train.py`` run folder.

    Returns:
        The existing files, newest (by modification time) first.

    Raises:
        UserError: one of them exists but cannot be read as a file (a dangling link, a folder): resuming from an
            older file, or from nothing, would silently throw away the work it holds.
    """
    run_dir = Path(run_dir)
    candidates = [run_dir / name for name in CHECKPOINT_NAMES] + sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
    for path in candidates:
        problem = _unusable(path)
        if problem:
            raise UserError(f"{path} {problem}: refusing to resume from anything else, or to start again from step "
                            "0 over it. Make it readable (mount the disk, restore the file), or move it away to "
                            "start afresh")
    found = [p for p in candidates if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def resolve_ckpt_path(value: str | None, run_dir: str | Path, key: str = "ckpt_path",
                      fresh_start: bool = True) -> str | None:
    """The checkpoint file that ``<key>=value`` names, or None to start from scratch: the one resolver of every
    command (``train.py``, ``sample.py``, ``likelihood.py``, ``task.classifier=``).

    Args:
        value: ``None``; a ``.ckpt`` file; a run folder (its newest resumable checkpoint); ``last`` (the newest one
            of the current run folder, which must exist) or ``auto`` (the same, or a fresh start when there is
            none: one command for a job's first submission and for its requeues).
        run_dir: the current run folder (``paths.output_dir``).
        key: the setting's name, for messages.
        fresh_start: whether ``auto`` may find nothing (training); commands that read a model need one.

    Returns:
        A path, or None.

    Raises:
        UserError: ``last`` with nothing to resume, a run folder without a checkpoint, a checkpoint that exists
            but cannot be read as a file.
    """
    if value is None or str(value) == "":
        return None
    text = str(value)
    if text in RESUME_KEYWORDS:
        found = run_checkpoints(run_dir)
        if found:
            rank_zero_info(f"{key}={text}: using {found[0]}")
            return str(found[0])
        if text == "auto" and fresh_start:
            rank_zero_info(f"{key}=auto: no checkpoint in {run_dir}; starting from step 0")
            return None
        raise UserError(f"{key}={text}: no checkpoint in {Path(run_dir) / 'checkpoints'} (a new run folder?). Pass "
                        f"hydra.run.dir=<the folder of that run>, or {key}=<that folder or a .ckpt file>"
                        + (", or ckpt_path=auto to start from scratch when there is nothing to resume"
                           if fresh_start else ""))
    path = Path(text).expanduser()
    problem = _unusable(path) if not path.is_dir() else None
    if problem:
        raise UserError(f"{key}={path} {problem}; pass a checkpoint file or a run folder")
    if path.is_dir():
        found = run_checkpoints(path)
        if not found:
            raise UserError(f"{key}={path} is a folder without a resumable checkpoint (checkpoints/last.ckpt or "
                            "hpc_ckpt_*.ckpt); pass a .ckpt file or a train.py run folder")
        return str(found[0])
    return text
