"""Reading files that other people wrote, without letting them run code.

Checkpoints, statistics and sample files are loaded with ``torch.load(weights_only=True)`` (tensors, numbers,
strings and plain containers only) or ``numpy.load(allow_pickle=False)``. A file that needs anything else is
refused with :class:`~scorelab.errors.UnsafeFileError`.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .errors import UnsafeFileError

_WEIGHTS_ONLY_FAILURE = "Weights only load failed"


def load_torch_file(path: str | os.PathLike, what: str = "file", map_location: Any = "cpu") -> Any:
    """``torch.load`` that can never execute code from the file.

    Args:
        path: the file.
        what: what the file is, for the refusal message (``"checkpoint"``, ``"statistics file"``).
        map_location: as ``torch.load``.

    Returns:
        The loaded object (tensors, numbers, strings and plain containers).

    Raises:
        UnsafeFileError: the file holds pickled Python objects other than those; nothing of it was run.
        Exception: whatever ``torch.load`` raises for a truncated or foreign file (left to the caller).
    """
    try:
        return torch.load(Path(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if _WEIGHTS_ONLY_FAILURE not in str(exc) or "Unsupported operand" in str(exc):
            raise  # not a pickle at all (truncated or foreign bytes): the caller says it cannot be read
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        culprit = f"the Python object {found.group(1)}" if found else "pickled Python objects"
        raise UnsafeFileError(
            f"refused to load {what} {path}: it contains {culprit}, and unpickling that could run code. scorelab "
            "only loads tensors, numbers, strings and plain containers (torch.load with weights_only=True); "
            "if you trust the file's author, ask for a copy saved that way (scorelab's own checkpoints are)"
        ) from None
