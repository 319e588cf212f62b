"""Turn configuration and input mistakes into one clear line instead of a traceback; keep tracebacks for bugs."""
from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

from hydra.errors import HydraException, InstantiationException
from omegaconf.errors import OmegaConfBaseException

from ..core.errors import UnsafeFileError, UserError

T = TypeVar("T")
__all__ = ["USER_ERRORS", "UnsafeFileError", "UserError", "describe", "is_user_error", "root_message", "run_or_exit"]

# OSError: a missing or unreadable file, an unwritable folder, a full disk (and PIL's unreadable images)
USER_ERRORS = (UserError, ValueError, OSError, InstantiationException, OmegaConfBaseException, HydraException)
# Code that runs training and validation steps, their hooks and callbacks: a bare ValueError from in there is a bug.
TRAINING_LOOP_FILES = (os.path.join("lightning", "pytorch", "loops", ""),)


def raised_in_training_loop(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while Lightning's loops ran a step, a hook or a callback.

    Args:
        exc: a caught exception (its traceback is read).

    Returns:
        True when a frame of its traceback lies in ``lightning/pytorch/loops/``.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    return any(part in frame.filename for frame in frames for part in TRAINING_LOOP_FILES)


def is_user_error(exc: BaseException) -> bool:
    """A mistake in config, paths or files (one line), as opposed to a bug (a traceback).

    A :class:`UserError`, an ``OSError`` (a missing or unreadable file, an unwritable folder, a full disk), a
    Hydra/OmegaConf error or a ``ValueError`` raised while building objects from the config is the user's; a bare
    ``ValueError`` raised inside a training or validation step (or a hook they call) is not: bad values are refused
    before training starts, so one there is a bug.

    Args:
        exc: a caught exception.

    Returns:
        True for a user error.
    """
    if not isinstance(exc, USER_ERRORS):
        return False
    if isinstance(exc, ValueError) and not isinstance(exc, UserError):
        return not raised_in_training_loop(exc)
    return True


def root_message(exc: BaseException) -> str:
    """The innermost cause's message, prefixed by the config key Hydra reports when it has one."""
    key = None
    while True:
        text = str(exc)
        if "full_key:" in text and key is None:
            key = text.rsplit("full_key:", 1)[1].strip().split()[0]
        cause = exc.__cause__ or exc.__context__
        if cause is None or not isinstance(exc, (InstantiationException, HydraException)):
            break
        exc = cause
    message = " ".join(str(exc).split()) or type(exc).__name__
    return f"{key}: {message}" if key and not message.startswith(key) else message


_ELSEWHERE = "write elsewhere (paths.log_dir=<folder> or hydra.run.dir=<folder>)"
_OS_HINTS = {
    errno.ENOSPC: f"the disk is full: free space, or {_ELSEWHERE}; files already written are kept",
    errno.EDQUOT: f"the disk quota is exceeded: free space, or {_ELSEWHERE}; files already written are kept",
    errno.EACCES: f"no permission: {_ELSEWHERE}",
    errno.EPERM: f"no permission: {_ELSEWHERE}",
    errno.EROFS: f"a read-only file system: {_ELSEWHERE}",
}


def describe(exc: BaseException) -> str:
    """The one line a user error is reported as: :func:`root_message`, with what to do for a failed file operation
    and, for missing data, which settings name the data folder and fetch the files."""
    from ..data.images import DatasetNotFoundError

    inner = exc
    while isinstance(inner, (InstantiationException, HydraException)) and (inner.__cause__ or inner.__context__):
        inner = inner.__cause__ or inner.__context__
    if isinstance(inner, DatasetNotFoundError):
        return (f"{root_message(exc)} The data folder is data.data_dir, by default paths.data_dir (environment "
                "SCORELAB_DATA, else ./data); data.download=true fetches missing files when training")
    if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, UserError, HydraException)) \
            and exc.errno is not None:
        where = f": {exc.filename}" if exc.filename else ""
        hint = _OS_HINTS.get(exc.errno)
        return f"{exc.strerror or os.strerror(exc.errno)}{where}" + (f"; {hint}" if hint else "")
    return root_message(exc)


def run_or_exit(fn: Callable[..., T], *args, **kwargs) -> T:
    """Call ``fn`` (a command outside Hydra); on a user error print ``error: <one line>`` to stderr and exit with
    status 2.

    Anything else (a bug) propagates with its traceback, after a line saying where it was raised. Hydra's entry
    points use :func:`scorelab.cli.entry.run_job`, which also knows about run folders and sweeps.
    """
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as exc:
        if not is_user_error(exc):
            where = traceback.extract_tb(exc.__traceback__)[-1]
            print(f"{type(exc).__name__} inside a training step at {where.filename}:{where.lineno} ({where.name}): "
                  "a bug, not a config mistake; the traceback follows", file=sys.stderr)
            raise
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # the developer asked for the whole traceback
            raise
        print(f"error: {' '.join(describe(exc).split())} (HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
        sys.exit(2)
