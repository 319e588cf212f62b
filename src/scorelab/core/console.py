"""What scorelab says on the console: its messages (:func:`say`), progress with an ETA (:func:`progress`) and the cost
of a long evaluation before it starts (:func:`cost_line`).

* Messages go to the ``scorelab`` logger, so that Hydra's job logging puts them on the console *and* into the run
  folder's ``<command>.log`` (``conf/hydra/default.yaml``); outside a configured logging setup (a notebook, a test
  calling a function) they are printed.
* Progress is one tqdm bar (on stderr) when stderr is a terminal. When it is not (a log file, SLURM, a pipe) no bar is
  drawn: one plain line every ``every`` percent (default 10 %) says how far it is and the ETA, so logs hold a few
  lines instead of thousands of carriage returns.
* Only rank 0 of a distributed job speaks (``RANK`` / ``LOCAL_RANK`` / ``NODE_RANK`` / the process group).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

__all__ = ["LOG", "Progress", "SamplingProgress", "cost_line", "format_seconds", "is_rank_zero", "progress", "say"]

LOG = logging.getLogger("scorelab")


def is_rank_zero() -> bool:
    """Whether this process is rank 0 (or the only one): the one that prints."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank() == 0
    except Exception:  # noqa: BLE001 - no torch.distributed: one process
        pass
    return all(os.environ.get(key, "0") in ("0", "") for key in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _logging_configured() -> bool:
    """Whether a message of the ``scorelab`` logger reaches a handler (Hydra's job logging, or the caller's)."""
    logger: logging.Logger | None = LOG
    while logger is not None:
        if logger.handlers:
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


def say(message: str, *, all_ranks: bool = False) -> None:
    """Tell the user ``message``: the ``scorelab`` logger when logging is set up (console and ``<command>.log``),
    else ``print``. Rank 0 only unless ``all_ranks``."""
    if not (all_ranks or is_rank_zero()):
        return
    if _logging_configured():
        if LOG.level == logging.NOTSET and LOG.getEffectiveLevel() > logging.INFO:
            LOG.setLevel(logging.INFO)
        LOG.info(message)
    else:
        print(message, flush=True)


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``1 h 02 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def cost_line(what: str, cost: str, seconds: float | None = None, off: str | None = None) -> str:
    """One line before a long evaluation: ``<what>: <cost>, about <time>; off: <key>``."""
    line = f"{what}: {cost}"
    if seconds is not None and seconds > 0:
        line += f", about {format_seconds(seconds)}"
    if off:
        line += f" (turn off: {off})"
    return line


def _plural(unit: str) -> str:
    """``step`` -> ``steps``, ``batch`` -> ``batches``, ``s`` stays."""
    if unit.endswith("s") or not unit:
        return unit
    return unit + ("es" if unit.endswith(("ch", "sh", "x")) else "s")


def _stderr_is_terminal() -> bool:
    forced = os.environ.get("SCORELAB_PROGRESS")  # "bar" | "lines": force one style (tests, CI logs)
    if forced in ("bar", "lines"):
        return forced == "bar"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Progress over ``total`` units with an ETA: a tqdm bar on a terminal, else a line every ``every`` percent.

    Args:
        total: the units to do (steps, images, batches, seconds); ``None`` or 0: unknown (no ETA).
        desc: what is being done (``sampling 64 images``).
        unit: the unit's name (``step``, ``img``, ``batch``).
        enabled: False: silent (``progress=false``, ranks > 0).
        every: the percentage between two plain lines when stderr is not a terminal.
        fmt: plain lines only: how to write a position (e.g. ``lambda n: f"step {n}"``); default ``<n>/<total>``.
        initial: the position it starts from (a resumed run's step); the ETA counts only what is done from there.
        quiet_seconds: plain lines only: none before this many seconds (a short task writes only its last line).
        auto_close: close (and write the last line) when ``total`` is reached.
    """

    def __init__(self, total: float | None, desc: str, unit: str = "it", enabled: bool = True, every: float = 10.0,
                 fmt=None, initial: float = 0, quiet_seconds: float = 2.0, auto_close: bool = True):
        self.total, self.desc, self.unit, self.every, self.fmt = total or None, desc, unit, float(every), fmt
        self.n: float = initial
        self.initial = initial
        self.quiet_seconds, self.auto_close = float(quiet_seconds), auto_close
        self.enabled = bool(enabled) and is_rank_zero()
        self.began = time.perf_counter()
        self._bar = None
        self._next_line = self.every
        if self.total:
            while self._next_line <= 100.0 * self.n / self.total:
                self._next_line += self.every
        self._postfix = ""
        self._closed = False
        if self.enabled and _stderr_is_terminal():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
                             initial=initial)

    # the tqdm-like interface the callers use
    def update(self, n: float = 1) -> None:
        if self._closed:
            return
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            if self.total and self.n >= self.total and self.auto_close:
                self.close()
        elif self.enabled and self.total:
            percent = 100.0 * self.n / self.total
            if percent >= self._next_line and self.n < self.total:
                if self.elapsed >= self.quiet_seconds:  # a short task: only its last line
                    self._line()
                while self._next_line <= percent:
                    self._next_line += self.every
            elif self.n >= self.total and self.auto_close:
                self.close()

    def set_to(self, n: float) -> None:
        """Move to position ``n`` (e.g. the global step)."""
        if n > self.n:
            self.update(n - self.n)

    def set_postfix_str(self, text: str) -> None:
        self._postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def set_total(self, total: float | None) -> None:
        if self._closed:
            return
        self.total = total or None
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.began

    def eta(self) -> float | None:
        done = self.n - self.initial
        if not self.total or done <= 0:
            return None
        return self.elapsed * (self.total - self.n) / done

    def text(self) -> str:
        """The line written when stderr is not a terminal: ``desc: 30% (step 300/1000), 12 s, ETA 28 s``."""
        if self.fmt is not None:
            where = self.fmt(self.n)
        else:
            n = int(self.n) if float(self.n).is_integer() else round(self.n, 1)
            total = "?" if not self.total else (int(self.total) if float(self.total).is_integer() else self.total)
            where = f"{n}/{total} {_plural(self.unit)}"
        percent = f"{100.0 * self.n / self.total:3.0f}% " if self.total else ""
        eta = self.eta()
        line = f"{self.desc}: {percent}({where}), {format_seconds(self.elapsed)}"
        if eta is not None and self.total and self.n < self.total:
            line += f", ETA {format_seconds(eta)}"
        return line + (f", {self._postfix}" if self._postfix else "")

    def _line(self) -> None:
        say(self.text(), all_ranks=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.n > self.initial:
            self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(total: float | None, desc: str, unit: str = "it", enabled: bool = True, **kwargs: Any) -> Progress:
    """A :class:`Progress` (``with progress(n, "reference statistics", "img") as bar: ... bar.update(len(x))``)."""
    return Progress(total, desc, unit, enabled, **kwargs)


class SamplingProgress:
    """Progress of drawing ``n`` samples in ``batches`` sampler calls, counted per sampler step (so a single large
    batch moves too), with an ETA; per image for samplers without a fixed step count (adaptive ODE solvers).

    Pass :meth:`on_step` as the sampler's step callback and call :meth:`batch_done` after each batch.

    Args:
        n: samples in all.
        batches: sampler calls.
        steps: steps per sampler call (``sampler.steps``), or None when unknown.
        desc: e.g. ``sampling seeds 0..63``.
        enabled: False: silent.
    """

    def __init__(self, n: int, batches: int, steps: int | None, desc: str, enabled: bool = True, **kwargs: Any):
        self.n, self.batches, self.steps = int(n), max(1, int(batches)), steps if steps and steps > 0 else None
        self.images = 0
        self._calls = 0  # step callbacks of the current batch
        if self.steps:
            self.bar = Progress(self.batches * self.steps, desc, "step", enabled, **kwargs)
        else:
            self.bar = Progress(self.n, desc, "image", enabled, **kwargs)

    def on_step(self, info: dict | None = None) -> None:
        if self.steps:
            self._calls += 1
            self.bar.update(1)

    def batch_done(self, images: int) -> None:
        self.images += int(images)
        if self.steps:
            if self._calls and self._calls != self.steps:  # the sampler calls back another number of times
                self.steps = self._calls
                self.bar.set_total(self.batches * self.steps)
            self._calls = 0
        else:
            self.bar.update(images)
        if self.batches > 1:
            self.bar.set_postfix_str(f"{self.images}/{self.n} images")

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> SamplingProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
