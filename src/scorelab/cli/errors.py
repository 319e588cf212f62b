"""Turn configuration and input mistakes into one clear line instead of a traceback."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

from hydra.errors import HydraException, InstantiationException
from omegaconf.errors import OmegaConfBaseException

from ..errors import UnsafeFileError, UserError

T = TypeVar("T")
__all__ = ["USER_ERRORS", "UnsafeFileError", "UserError", "root_message", "run_or_exit"]

USER_ERRORS = (UserError, ValueError, FileNotFoundError, InstantiationException, OmegaConfBaseException,
               HydraException)


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


def run_or_exit(fn: Callable[..., T], *args, **kwargs) -> T:
    """Call ``fn``; on a user error print ``error: <one line>`` to stderr and exit with status 2."""
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # the developer asked for the whole traceback
            raise
        print(f"error: {root_message(exc)} (HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
        sys.exit(2)
