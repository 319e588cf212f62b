"""Which checkpoint ``train.py ckpt_path=...`` continues from: a file, a run folder, ``last`` or ``auto``.

``last`` and ``auto`` look in the current run folder (``paths.output_dir``; pin it with ``hydra.run.dir=<run>``, so a
requeued job lands in the folder of the job it continues), which Lightning's own ``ckpt_path="last"`` does not do
when Hydra makes a new folder per run.
"""
from __future__ import annotations

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from ..errors import UserError

RESUME_KEYWORDS = ("last", "auto")


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """Resumable checkpoints of a run folder: ``checkpoints/last.ckpt`` and SLURM's ``hpc_ckpt_N.ckpt``.

    Args:
        run_dir: a ``train.py`` run folder.

    Returns:
        The existing files, newest (by modification time) first.
    """
    run_dir = Path(run_dir)
    found = [p for p in (run_dir / "checkpoints" / "last.ckpt", run_dir / "last.ckpt") if p.is_file()]
    found += [p for p in run_dir.glob("hpc_ckpt_*.ckpt") if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def resolve_ckpt_path(value: str | None, run_dir: str | Path) -> str | None:
    """The checkpoint file that ``ckpt_path=value`` names, or None to start from scratch.

    Args:
        value: ``None``; a ``.ckpt`` file; a run folder (its newest resumable checkpoint); ``last`` (the newest one
            of the current run folder, which must exist) or ``auto`` (the same, or a fresh start when there is
            none: one command for a job's first submission and for its requeues).
        run_dir: the current run folder (``paths.output_dir``).

    Returns:
        A path, or None.

    Raises:
        UserError: ``last`` with nothing to resume, or a run folder without a checkpoint.
    """
    if value is None or str(value) == "":
        return None
    text = str(value)
    if text in RESUME_KEYWORDS:
        found = run_checkpoints(run_dir)
        if found:
            rank_zero_info(f"ckpt_path={text}: resuming from {found[0]}")
            return str(found[0])
        if text == "auto":
            rank_zero_info(f"ckpt_path=auto: no checkpoint in {run_dir}; starting from step 0")
            return None
        raise UserError(f"ckpt_path=last: no checkpoint in {Path(run_dir) / 'checkpoints'} (a new run folder?). Pass "
                        "hydra.run.dir=<the folder of the run to continue>, ckpt_path=<that folder or a .ckpt file>, "
                        "or ckpt_path=auto to start from scratch when there is nothing to resume")
    path = Path(text).expanduser()
    if path.is_dir():
        found = run_checkpoints(path)
        if not found:
            raise UserError(f"ckpt_path={path} is a folder without a resumable checkpoint (checkpoints/last.ckpt or "
                            "hpc_ckpt_*.ckpt); pass a .ckpt file")
        return str(found[0])
    return text
