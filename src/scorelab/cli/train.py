"""``train(cfg)``: the whole training job, callable from ``train.py`` and from tests with a composed config."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ModelSummary
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from ..core.console import say
from ..core.io import write_text_atomic
from ..lit.checkpointing import AtomicCheckpointIO, PreemptionCallback
from ..lit.console import CompactModelSummary, StepProgressBar
from ..lit.fid_callback import domain_mismatch
from ..objectives.base import loss_lr_scale
from .common import check_state_dict, load_checkpoint
from .console import say_training_summary
from .errors import UserError
from .resume import resolve_ckpt_path
from .runs import build_module, build_run  # noqa: F401  (build_module: re-exported for scripts)

# trainer.precision values the presets support (Lightning's names; 32 is 32-true)
PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed")


def _instantiate_group(cfg: DictConfig | None, skip: tuple[str, ...] = (), **kwargs) -> list:
    """Instantiate every entry of a dict-of-configs group (callbacks, loggers); ``null`` entries and the names in
    ``skip`` are left out."""
    if not cfg:
        return []
    if "_target_" in cfg:
        return [instantiate(cfg, **kwargs)]
    return [instantiate(c, **kwargs) for name, c in cfg.items()
            if name not in skip and c is not None and "_target_" in c]


def train(cfg: DictConfig) -> float | None:
    """Train a score model as configured; return ``cfg.optimized_metric`` (for Hydra sweepers) if set.

    Writes into the run folder ``cfg.paths.output_dir``: ``checkpoints/`` (last and best), logs, sample
    pictures and, for toy data, ``metrics.json``; checkpoints and result files are written atomically. SIGTERM or
    SIGUSR1 stops training after the current step with ``checkpoints/last.ckpt`` written (exit status 0), which
    ``ckpt_path=auto`` (or ``last``, a run folder, a file) continues.
    """
    check_trainer_config(cfg.trainer)
    resume_from = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir)
    ckpt_path, ckpt = load_checkpoint(resume_from) if resume_from else (None, None)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run = build_run(cfg)
    parts, module = run.parts, run.module
    parts["datamodule"].check_available()  # missing data: one line before loggers and checkpoints write anything
    first_step = 0
    if ckpt is not None:
        check_state_dict(module, ckpt["state_dict"], ckpt_path)
        first_step = int(ckpt.get("global_step", 0) or 0)
        del ckpt
    loggers = _instantiate_group(cfg.get("logger"))
    callbacks = _instantiate_group(cfg.get("callbacks"), skip=_unfitting_callbacks(cfg.get("callbacks"),
                                                                                   parts["datamodule"]))
    if not loggers:  # the LR monitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks = _console_callbacks(callbacks, cfg.trainer)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)  # saved in checkpoints for sample.py
    # First in line, so last.ckpt of the final step is written before the end-of-training evaluations run.
    callbacks.insert(0, PreemptionCallback(_checkpoint_dir(cfg, callbacks), save_at_end=_saves_last(callbacks)))
    # enable_model_summary=False: the summary is the callback above (Lightning would add its own and say so)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                     plugins=[AtomicCheckpointIO()], enable_model_summary=False)
    batch = global_batch(trainer, parts["datamodule"].batch_size)
    for logger in loggers:
        logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "global_batch": batch["global_batch"]})
    say(f"run folder: {cfg.paths.output_dir}")
    say(describe_global_batch(batch, cfg.optimizer.get("lr"), loss_lr_scale(getattr(module, "loss", None))))
    began, summary = time.perf_counter(), None
    try:
        with _sweep_job_as_single_run(trainer, cfg):
            trainer.fit(module, datamodule=parts["datamodule"], ckpt_path=ckpt_path, weights_only=True)
        metrics = _final_metrics(trainer, callbacks)
        if trainer.is_global_zero:
            write_text_atomic(Path(cfg.paths.output_dir) / "final_metrics.json", json.dumps(metrics, indent=2))
            summary = _summary(trainer, callbacks, metrics, cfg, time.perf_counter() - began, first_step)
    finally:
        if any(isinstance(lg, WandbLogger) for lg in loggers):
            import wandb

            wandb.finish()  # one W&B run per job: Lightning never finishes it, so each job must
    if summary is not None:  # the last lines of the job (after W&B's own)
        say_training_summary(**summary)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


def _console_callbacks(callbacks: list, trainer_cfg: DictConfig) -> list:
    """The progress bar and model summary of :mod:`scorelab.lit.console`: added when the callbacks config has none,
    left out when the trainer turns them off (``trainer.enable_progress_bar`` / ``enable_model_summary`` false)."""
    bar_on = trainer_cfg.get("enable_progress_bar", True) is not False
    summary_on = trainer_cfg.get("enable_model_summary", True) is not False
    kept = [c for c in callbacks if not ((isinstance(c, ProgressBar) and not bar_on)
                                         or (isinstance(c, ModelSummary) and not summary_on))]
    if bar_on and not any(isinstance(c, ProgressBar) for c in kept):
        kept.append(StepProgressBar())
    if summary_on and not any(isinstance(c, ModelSummary) for c in kept):
        kept.append(CompactModelSummary())
    # the bar first: it closes at the end of training before the end-of-training evaluations speak
    return sorted(kept, key=lambda c: not isinstance(c, ProgressBar))


def _summary(trainer: L.Trainer, callbacks: list, metrics: dict[str, Any], cfg: DictConfig, seconds: float,
             first_step: int) -> dict[str, Any]:
    """What the lines training ends with say (:func:`scorelab.cli.console.training_summary`): key metrics, the
    picture, the checkpoint and the next command."""
    from ..lit.callbacks import SampleCallback, ToyMetricsCallback

    toy = next((cb.metrics for cb in callbacks if isinstance(cb, ToyMetricsCallback) and cb.metrics), None)
    if toy is None:
        path = Path(cfg.paths.output_dir) / "metrics.json"
        if path.is_file() and any(isinstance(cb, ToyMetricsCallback) for cb in callbacks):
            with contextlib.suppress(ValueError, OSError):
                toy = json.loads(path.read_text())
    picture = next((cb.last_path for cb in callbacks if isinstance(cb, SampleCallback) and cb.last_path), None)
    folder = _checkpoint_dir(cfg, callbacks)
    checkpoint = folder / "last.ckpt" if (folder / "last.ckpt").is_file() else None
    if checkpoint is None and folder.is_dir():
        found = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        checkpoint = found[-1] if found else None
    images = getattr(getattr(trainer.datamodule, "domain", None), "kind", None) == "images"
    stopped = f"resumed from step {first_step}" if first_step else None
    if trainer.max_steps and trainer.max_steps > 0 and trainer.global_step < trainer.max_steps:
        stopped = ", ".join(filter(None, [stopped, f"stopped before max_steps={trainer.max_steps}"]))
    return dict(steps=trainer.global_step, seconds=seconds, metrics=metrics, toy=toy, picture=picture,
                checkpoint=checkpoint, images=images, stopped_early=stopped,
                classifier=bool(cfg.get("classifier_module")))


def _unfitting_callbacks(cfg: DictConfig | None, datamodule) -> tuple[str, ...]:
    """Names of callbacks to leave out: an FID callback whose domain metric (fd_mnist) is not made for this data.

    Decided before anything is built: building the MNIST extractor may train a classifier on MNIST files that a
    run on other data does not have. One warning says so and how to get FID instead (features=inception).
    """
    fid = cfg.get("fid") if cfg and "_target_" not in cfg else None
    if not fid or "features" not in fid or fid.get("ref") is not None:
        return ()
    note = domain_mismatch(fid.features, datamodule)
    if note is None:
        return ()
    rank_zero_warn(note)
    return ("fid",)


def check_trainer_config(trainer_cfg: DictConfig) -> None:
    """Refuse trainer values the presets do not support with one clear line, before anything is built."""
    precision = str(trainer_cfg.get("precision", "32-true"))
    if precision not in PRECISIONS:
        raise UserError(f"trainer.precision must be one of 32, bf16-mixed, 16-mixed, got {precision!r}")
    if precision == "16-mixed" and trainer_cfg.get("accelerator") == "cpu":
        raise UserError("trainer.precision=16-mixed needs a GPU (trainer=gpu or trainer=ddp); on the CPU use "
                        "bf16-mixed or 32")
    accumulate = trainer_cfg.get("accumulate_grad_batches", 1)
    if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
        raise UserError(f"trainer.accumulate_grad_batches must be a positive integer, got {accumulate!r}")
    nodes = trainer_cfg.get("num_nodes", 1)
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
        raise UserError(f"trainer.num_nodes must be a positive integer, got {nodes!r}")


def global_batch(trainer: L.Trainer, per_device: int) -> dict[str, int]:
    """The examples behind one optimizer step: per-device batch x devices x nodes x gradient accumulation."""
    devices, nodes, accumulate = trainer.num_devices, trainer.num_nodes, trainer.accumulate_grad_batches
    return {"per_device": int(per_device), "devices": devices, "nodes": nodes, "accumulate": accumulate,
            "global_batch": int(per_device) * devices * nodes * accumulate}


def describe_global_batch(batch: dict[str, int], lr: float | None, lr_scale: float = 1.0) -> str:
    """The line printed at the start of training (the learning rate is never scaled with the batch; an objective's
    ``loss.lr_scale`` scales it)."""
    line = (f"global batch {batch['global_batch']} = {batch['per_device']} per device x {batch['devices']} "
            f"device(s) x {batch['nodes']} node(s) x {batch['accumulate']} accumulation step(s)")
    if lr is not None:
        rate = f"{lr * lr_scale:g} = optimizer.lr {lr} x loss.lr_scale {lr_scale:g}" if lr_scale != 1.0 \
            else f"{lr} as configured"
        line += f"; learning rate {rate} (not scaled with the global batch)"
    return line


# what Lightning's ddp launcher writes into this process's environment when it starts the other ranks
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def _sweep_job_as_single_run(trainer: L.Trainer, cfg: DictConfig) -> Iterator[None]:
    """Let ``python train.py -m ... trainer=ddp`` start each job's extra ranks as a single run of that job.

    Lightning's ``ddp`` launcher starts ranks > 0 by re-running ``sys.argv``, which under ``-m`` is the whole sweep:
    the children would run every job again and make extra sweep folders. For the duration of ``fit`` the command
    line becomes this job's own overrides, and Hydra's run folder this job's folder, so each child joins exactly
    this job, in its folder; afterwards the process group is closed and the launch variables Lightning put into
    the environment are restored, so the next job (run by the same process) starts its own ranks and group. Runs
    that are not sweep jobs, and other strategies, are left alone.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
    from omegaconf import open_dict, read_write

    launcher = getattr(trainer.strategy, "launcher", None)
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
            and isinstance(launcher, _SubprocessScriptLauncher)):
        yield
        return
    hydra_cfg = HydraConfig.get()  # this job's own copy: the next job of the sweep gets a fresh one
    argv = list(sys.argv)
    env = {key: os.environ.get(key) for key in _LAUNCH_ENV}
    sys.argv[1:] = list(hydra_cfg.overrides.task)
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = str(cfg.paths.output_dir)
    try:
        yield
    finally:
        sys.argv[:] = argv
        for key, value in env.items():  # LOCAL_RANK left set would make the next job wait for ranks never started
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # the next job starts its own ranks and group


def _checkpoint_dir(cfg: DictConfig, callbacks: list) -> Path:
    """ModelCheckpoint's folder, or ``<run>/checkpoints`` without one (preemption still saves there)."""
    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            return Path(cb.dirpath)
    return Path(cfg.paths.output_dir) / "checkpoints"


def _saves_last(callbacks: list) -> bool:
    """Whether a ModelCheckpoint asks for ``last.ckpt`` (then it is also written at the final step)."""
    return any(isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath for cb in callbacks)


def _final_metrics(trainer: L.Trainer, callbacks: list) -> dict[str, Any]:
    """Scalars at the end of training: the Trainer's last logged values plus the toy metrics."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    metrics["global_step"] = trainer.global_step
    for cb in callbacks:
        toy = getattr(cb, "metrics", None)
        if toy:
            metrics.update({f"toy/{k}": v for k, v in toy.items() if isinstance(v, (int, float))})
    return metrics
