"""The console of a command: scorelab's and Lightning's messages routed into the run folder's log, known
third-party noise filtered where it comes from, and the summary ``train.py`` ends with.

:func:`start_job` runs once at the start of every job (:func:`scorelab.cli.entry.run_job`):

* **Logging.** Hydra's job logging (``conf/hydra/default.yaml``) gives the root logger a console handler (plain
  messages) and a file handler (``<run folder>/<command>.log``, with times). Lightning adds its own console handler
  to ``lightning.pytorch`` and stops propagation when it is imported before Hydra configures logging (which it is:
  the entry point imports it), so none of its lines, nor ``rank_zero_info`` ones, reached ``train.log`` (and the
  ``lightning`` package logger prints to stderr with a handler of its own). The job
  hands Lightning's loggers back to the root's handlers; scorelab speaks through the ``scorelab`` logger
  (:func:`scorelab.core.console.say`).
* **Noise.** Each filter names one message of one library; every other warning and message stays:

  - Lightning's advertisements (``💡 Tip: ...`` litlogger / litmodels): a filter on its ``rank_zero`` loggers;
  - the ``_pytree`` ``LeafSpec`` deprecation that Lightning's own code triggers in torch (``FutureWarning``, that
    message only);
  - fixed at the source elsewhere: the ``limit_*_batches=1.0`` notices (``conf/trainer/cpu.yaml`` leaves them
    ``null``), ``Total FLOPs: 0`` (:class:`scorelab.lit.console.CompactModelSummary`), W&B's anonymous-mode warning
    (:func:`scorelab.lit.loggers.wandb_logger`), "could not find val/loss" (:class:`scorelab.lit.console.
    ValidatedCheckpoint`).
"""
from __future__ import annotations

import logging
import re
import shlex
import warnings
from pathlib import Path
from typing import Any

from ..core.console import format_seconds, say

__all__ = ["NOISE", "install_noise_filters", "route_lightning_logs", "start_job", "training_summary"]

# (logger names, message pattern): log records of these loggers matching the pattern are dropped
NOISE_LOGS: list[tuple[tuple[str, ...], re.Pattern]] = [
    (("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero", "lightning.pytorch"),
     re.compile(r"^💡 Tip: .*(litlogger|litmodels|LitLogger|LitModels|Lightning)")),
]
# (category, message regex) for warnings.filterwarnings
NOISE_WARNINGS: list[tuple[type[Warning], str]] = [
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
]
NOISE = [p.pattern for _, p in NOISE_LOGS] + [m for _, m in NOISE_WARNINGS]
"""What is filtered (for the tests and the docs)."""


class _DropMessages(logging.Filter):
    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not self.pattern.search(record.getMessage())
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is not ours to drop
            return True


def install_noise_filters() -> None:
    """Install the filters of :data:`NOISE_LOGS` and :data:`NOISE_WARNINGS` (idempotent)."""
    for names, pattern in NOISE_LOGS:
        for name in names:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _DropMessages) and f.pattern is pattern for f in logger.filters):
                logger.addFilter(_DropMessages(pattern))
    for category, message in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def route_lightning_logs() -> None:
    """Let Lightning's messages reach the root logger's handlers (console and the run's log file) when Hydra (or
    the caller) configured them, instead of Lightning's own console handler, which the log file never saw."""
    root = logging.getLogger()
    if not root.handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # the ones Lightning adds at import (stderr)
                logger.removeHandler(handler)
        logger.propagate = True
    logging.getLogger("scorelab").setLevel(logging.INFO)


def start_job() -> None:
    """What every job does first: filters and logging (see the module docstring)."""
    install_noise_filters()
    route_lightning_logs()


# ------------------------------------------------------------------------------------------ the summary
def _relative(path: str | Path | None) -> str | None:
    if path is None:
        return None
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _weights(values: list[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def training_summary(*, steps: int, seconds: float, metrics: dict[str, Any], toy: dict[str, Any] | None,
                     picture: str | Path | None, checkpoint: str | Path | None, images: bool,
                     stopped_early: str | None = None, classifier: bool = False) -> str:
    """The lines ``train.py`` ends with: what was trained, its key numbers, where the results are, what next.

    Args:
        steps: optimizer steps done.
        seconds: wall time of training (and its end-of-training evaluations).
        metrics: the final scalars (``final_metrics.json``).
        toy: ``metrics.json`` of a toy run (mode weights, NLL gap), or None.
        picture: the last sample picture.
        checkpoint: ``last.ckpt`` (or the newest checkpoint).
        images: image data (fid / fd_mnist and bits/dim apply).
        stopped_early: why it ended before ``max_steps`` (or that it resumed), or None.
        classifier: a noisy classifier was trained (its next command guides a score model with it).
    """
    lines = [f"scorelab: training done ({steps} steps, {format_seconds(seconds)})"
             + (f"; {stopped_early}" if stopped_early else "")]
    rows: list[tuple[str, str]] = []
    if toy:
        if "error" in toy:
            rows.append(("toy metrics", f"not scored: {toy['error']}"))
        else:
            weights, true = toy.get("mode_weights"), toy.get("true_weights")
            if weights is not None:
                text = _weights(weights)
                if true is not None:
                    text += f"  (true {_weights(true)}, max error {toy.get('mode_weight_error', 0.0):.4f})"
                rows.append(("mode weights", text))
            if "nll_gap" in toy:
                rows.append(("NLL gap", f"{toy['nll_gap']:.3f} nats (exact NLL of the samples minus the data "
                                        "entropy)"))
    if classifier:
        for key in sorted(metrics):
            if key == "val/acc":
                rows.append(("val accuracy", f"{metrics[key]:.4f}"))
    if images and not classifier:
        shown = False
        for key in sorted(metrics):
            found = re.fullmatch(r"(fid|fd_[a-z0-9]+|kid|kd_[a-z0-9]+)@(\d+)", key)
            if found:
                rows.append((found.group(1), f"{metrics[key]:.4g} ({found.group(2)} samples, last evaluation)"))
                shown = True
        for key in sorted(metrics):
            found = re.fullmatch(r"bpd@(\d+)", key)
            if found:
                rows.append(("bits/dim", f"{metrics[key]:.4g} ({found.group(1)} validation images)"))
                shown = True
        if not shown:
            rows.append(("metrics", "none measured: add callbacks/fid=default (FID; fd_mnist with features=mnist) "
                                    "and callbacks/likelihood=default (bits/dim)"))
    if picture is not None:
        rows.append(("samples", _relative(picture)))
    if checkpoint is not None:
        rows.append(("checkpoint", _relative(checkpoint)))
        ckpt = shlex.quote(_relative(checkpoint))
        rows.append(("next", f"python sample.py ckpt_path=<score model run> task=labels task.classifier={ckpt} "
                             "task.label=3" if classifier else f"python sample.py ckpt_path={ckpt}"))
    width = max((len(k) for k, _ in rows), default=0)
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def say_training_summary(**kwargs: Any) -> None:
    """:func:`training_summary`, said on rank 0 (console and ``train.log``)."""
    say(training_summary(**kwargs))
