"""Files that cannot hurt: loads that never run code from the file, writes that never leave a truncated file.

Checkpoints, statistics and sample files are loaded with ``torch.load(weights_only=True)`` (tensors, numbers,
strings and plain containers only) or ``numpy.load(allow_pickle=False)``. A file that needs anything else is
refused with :class:`~scorelab.core.errors.UnsafeFileError`. Results are written to a temporary file in the same folder
and renamed over the target, so a crash mid-write leaves the previous file intact.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import UnsafeFileError, UserError

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


def _current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would give a new file (mkstemp's is 0o600)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it is fsynced and renamed onto ``path``.

    A crash, a full disk or an exception inside the block leaves ``path`` as it was (the old file, or none):
    never a truncated file in its place. The temporary file is removed on failure.

    Example::

        with atomic_path(out / "metrics.json") as tmp:
            tmp.write_text(json.dumps(metrics))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the bytes must be on disk before the rename makes them the file
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)  # readable by whoever could read a file written in place
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # a write through a file object: name the target
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


DEFERRED_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2", "SIGHUP")


@contextlib.contextmanager
def deferred_signals(names: tuple[str, ...] = DEFERRED_SIGNALS) -> Iterator[list[int]]:
    """Hold back termination signals for the duration of a block, then deliver them.

    A signal that arrives while a checkpoint is being written (a second SIGTERM, SLURM's SIGUSR1, Ctrl-C) is
    recorded instead of acted on; once the block is over the previous handlers are restored and each recorded
    signal is raised again, so it takes effect after the file is complete. Outside the main thread (where Python
    cannot install handlers) the block runs unprotected.

    Args:
        names: the signals to hold back (those this platform lacks are skipped).

    Yields:
        The list of signal numbers received so far (filled while the block runs).
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {}
    for name in names:
        signum = getattr(signal, name, None)
        if signum is not None:
            previous[signum] = signal.signal(signum, lambda num, _frame: received.append(num))
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(received):  # each signal once, in arrival order
            signal.raise_signal(signum)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_npz_atomic(path: str | os.PathLike, **arrays: Any) -> Path:
    """``numpy.savez`` to ``path`` atomically (see :func:`atomic_path`); ``path`` should end in ``.npz``."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: numpy would otherwise append ".npz" to the temporary name
            np.savez(f, **arrays)
    return Path(path)


class UnreadableFileError(UserError, ValueError):
    """A file that cannot be read as what it claims to be (truncated, corrupt, foreign bytes): one line saying so.

    ``reason`` is the short cause alone (e.g. ``BadZipFile: File is not a zip file``), for callers that word their
    own message.
    """

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` of an exception on one line, at most ``limit`` characters of message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def load_npz(path: str | os.PathLike) -> dict[str, Any]:
    """Read every array of an ``.npz`` with ``allow_pickle=False`` (object arrays are refused, never unpickled).

    Raises:
        UnsafeFileError: the file holds an object array (reading it would mean unpickling).
        UnreadableFileError: the file cannot be read as an ``.npz`` (missing, a folder, truncated, corrupt, not a zip
            archive); the message names the file. It is also a ``ValueError``, as the earlier refusal was.
    """
    import numpy as np

    try:
        with open(path, "rb") as f:
            signature = f.read(4)
    except OSError as exc:
        raise UnreadableFileError(f"{path} cannot be read ({_one_line(exc)}); pass an existing .npz file",
                                  _one_line(exc)) from None
    if signature != b"PK\x03\x04":  # numpy would take any other bytes for a pickle
        raise UnreadableFileError(f"{path} is not an .npz archive (no zip signature): it cannot be read; it may be "
                                  "truncated or another kind of file: write it again with numpy.savez",
                                  "not an .npz archive: no zip signature")
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UnsafeFileError(f"refused to load {path}: it holds pickled Python objects (an object array), and "
                                  "unpickling that could run code; save plain numeric or string arrays") from None
        error = exc
    except Exception as exc:  # BadZipFile, EOFError, zlib.error, OSError, MemoryError of a corrupt header, ...
        error = exc
    raise UnreadableFileError(f"{path} cannot be read as an .npz archive ({_one_line(error)}); it is probably "
                              "truncated or corrupt (an interrupted copy or write?): copy or write it again",
                              _one_line(error))


def cache_dir() -> Path:
    """scorelab's cache folder: ``$SCORELAB_CACHE`` if set, else ``~/.cache/scorelab``.

    It holds what is computed once and reused across runs: FID reference statistics (``fid_stats/``) and the
    MNIST feature classifier. Inception weights go to torch's own hub cache (``$TORCH_HOME/hub/checkpoints``).
    Smoke runs (``SCORELAB_SMOKE=1``) use its ``smoke/`` subfolder, so that what they cache (a classifier trained for
    a few batches) is never taken for the real thing.
    """
    root = Path(os.environ.get("SCORELAB_CACHE") or Path.home() / ".cache" / "scorelab").expanduser()
    return root / "smoke" if os.environ.get("SCORELAB_SMOKE", "") not in ("", "0") else root
