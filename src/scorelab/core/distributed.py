"""Multi-process evaluation without collectives in the loop: every rank solves its own shard, results meet once.

Why per-rank solves. Adaptive ODE solvers (``dopri5``, the RK45 of Song et al. 2021, App. D.2) choose their step
sizes from the data, so two ranks working on different examples take different numbers of steps. A collective
inside the solve (a DDP-wrapped forward, SyncBatchNorm, an ``all_reduce`` of an error norm) would then be entered a
different number of times on each rank, and the ranks that finish first would wait forever for partners that never
come: a deadlock. Evaluation commands (likelihood, sampling, FID) therefore run the plain model on each rank, with
no communication until every rank has finished its shard, and gather the results once at the end
(:func:`run_and_gather`). A rank that fails still takes part in that gather, carrying its error, so the others
raise too instead of waiting.

Results that do not depend on the number of processes: :func:`shard` splits by index (rank ``r`` of ``W`` takes
items ``r, r + W, ...``); shard *batches* rather than examples, and seed randomness per example (see
:class:`scorelab.core.rng.PerSampleGenerator`), and every batch is computed exactly as in a single process.

Hydra creates a time-stamped run folder per process; under ``torchrun`` the entry point wraps its ``main()`` in
:func:`hydra_run_folder_on_rank_zero`, so only rank 0 makes one (the others get a temporary folder, removed on exit).

Usage::

    with process_group(device):                      # no-op without torchrun (WORLD_SIZE unset or 1)
        mine = shard(n_batches)                      # this rank's batch indices
        parts = run_and_gather(solve, mine)          # one list entry per rank, on every rank
        if is_main_process():
            write(merge(parts))
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# Ranks that finish their shard early wait in the final gather for the slowest; with adaptive solvers that wait can
# be long, and NCCL's default 10-minute timeout would abort a correct run.
DEFAULT_TIMEOUT = timedelta(hours=24)


def env_world_size() -> int:
    """``WORLD_SIZE`` set by ``torchrun`` (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_size() -> int:
    """Number of processes of the initialised group, else of the launch environment (1 for a plain run)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else env_world_size()


def rank() -> int:
    """Global rank of this process (0 for a plain run)."""
    return _current_rank()


def _current_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """Rank of this process on its machine (``LOCAL_RANK`` set by ``torchrun``; 0 for a plain run)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Whether this process is rank 0: the one that prints and writes results."""
    return rank() == 0


def device_for_rank(device: torch.device) -> torch.device:
    """Give each local rank its own GPU: ``cuda`` without an index becomes ``cuda:<LOCAL_RANK>``; others unchanged."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank())
    return device


def init_process_group(device: torch.device, timeout: timedelta = DEFAULT_TIMEOUT) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1); do nothing in a plain run.

    The backend follows the device: NCCL for CUDA (after selecting this rank's GPU), gloo for the CPU.

    Args:
        device: where this rank computes (see :func:`device_for_rank`).
        timeout: how long a collective may wait for the slowest rank (long: shards finish at different times).

    Returns:
        Whether this process is part of a multi-process group.
    """
    if env_world_size() <= 1:
        return False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return True


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: torch.device, timeout: timedelta = DEFAULT_TIMEOUT) -> Iterator[bool]:
    """:func:`init_process_group` on entry, :func:`cleanup` on exit; yields whether the run is multi-process."""
    try:
        yield init_process_group(device, timeout)
    finally:
        cleanup()


def shard(n: int, rank: int | None = None, world: int | None = None) -> list[int]:
    """The indices of ``range(n)`` a rank handles: ``rank, rank + W, ...`` (a deterministic split by index).

    Args:
        n: number of items (examples or batches).
        rank: the rank (default: this process's).
        world: the world size W (default: this process's).

    Returns:
        Sorted indices; the shards of ranks ``0 .. W-1`` partition ``range(n)``.
    """
    r = _current_rank() if rank is None else rank
    w = world_size() if world is None else world
    if not 0 <= r < w:
        raise ValueError(f"rank must lie in [0, world={w}), got {r}")
    return list(range(r, n, w))


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (any picklable value), on every rank: ``[obj_0, ..., obj_{W-1}]``; ``[obj]`` alone."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class RankFailedError(RuntimeError):
    """Another rank failed during its solo part of :func:`run_and_gather`; the message carries its error."""


def run_and_gather(fn: Callable[..., T], *args, **kwargs) -> list[T]:
    """Run ``fn`` on this rank alone, then gather every rank's result (the single collective of an evaluation).

    An exception in ``fn`` is gathered too, so no rank is left waiting for a partner that died: every rank then
    raises, the failing one its own exception, the others :class:`RankFailedError` naming it.

    Returns:
        ``[result of rank 0, ..., result of rank W-1]`` on every rank.
    """
    try:
        outcome: tuple[bool, Any] = (True, fn(*args, **kwargs))
        error: BaseException | None = None
    except Exception as exc:  # noqa: BLE001 - re-raised below, after the others have heard of it
        outcome, error = (False, f"{type(exc).__name__}: {exc}"), exc
    outcomes = gather(outcome)
    if error is not None:
        raise error
    failed = [(r, msg) for r, (ok, msg) in enumerate(outcomes) if not ok]
    if failed:
        r, msg = failed[0]
        raise RankFailedError(f"rank {r} failed: {msg}")
    return [value for _, value in outcomes]


@contextlib.contextmanager
def hydra_run_folder_on_rank_zero(argv: list[str] | None = None) -> Iterator[None]:
    """Keep ranks other than 0 from creating a Hydra run folder: exactly one run folder per ``torchrun`` job.

    Hydra makes a time-stamped folder per process. On rank ``r > 0`` this appends overrides to ``argv`` (default
    ``sys.argv``) that point the run folder at a fresh temporary folder, write no ``.hydra/`` and log to stdout
    only; the folder is removed on exit. Rank 0 (and a plain run) is untouched. Wrap the ``@hydra.main`` call.
    """
    argv = sys.argv if argv is None else argv
    if env_world_size() <= 1 or int(os.environ.get("RANK", "0")) == 0:
        yield
        return
    tmp = tempfile.mkdtemp(prefix=f"scorelab-rank{os.environ['RANK']}-")
    argv.extend(_non_zero_rank_overrides(tmp))
    try:
        yield
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _non_zero_rank_overrides(folder: str) -> Sequence[str]:
    return [f"hydra.run.dir={folder}", "hydra.output_subdir=null", "hydra/job_logging=stdout"]
