"""``train(cfg)``: the whole training job, callable from ``train.py`` and from tests with a composed config."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from ..io import write_text_atomic
from ..lit.checkpointing import AtomicCheckpointIO, PreemptionCallback
from ..lit.fid_callback import domain_mismatch
from ..lit.module import ScoreModule
from .common import build_core, check_state_dict, load_checkpoint
from .resume import resolve_ckpt_path


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
    resume_from = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir)
    ckpt_path, ckpt = load_checkpoint(resume_from) if resume_from else (None, None)
    L.seed_everything(cfg.seed, workers=True)
    parts = build_core(cfg)
    module = ScoreModule(parts["score_model"], parts["sde"], loss=parts["loss"],
                         optimizer=instantiate(cfg.optimizer),
                         scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
                         **OmegaConf.to_container(cfg.module, resolve=True))
    if ckpt is not None:
        check_state_dict(module, ckpt["state_dict"], ckpt_path)
        del ckpt
    loggers = _instantiate_group(cfg.get("logger"))
    callbacks = _instantiate_group(cfg.get("callbacks"), skip=_unfitting_callbacks(cfg.get("callbacks"),
                                                                                   parts["datamodule"]))
    if not loggers:  # the LR monitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    module.run_config = OmegaConf.to_container(cfg, resolve=True)  # saved in checkpoints for sample.py
    # First in line, so last.ckpt of the final step is written before the end-of-training evaluations run.
    callbacks.insert(0, PreemptionCallback(_checkpoint_dir(cfg, callbacks), save_at_end=_saves_last(callbacks)))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                     plugins=[AtomicCheckpointIO()])
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    rank_zero_info(f"run folder: {cfg.paths.output_dir}")
    try:
        trainer.fit(module, datamodule=parts["datamodule"], ckpt_path=ckpt_path, weights_only=True)
        metrics = _final_metrics(trainer, callbacks)
        if trainer.is_global_zero:
            write_text_atomic(Path(cfg.paths.output_dir) / "final_metrics.json", json.dumps(metrics, indent=2))
    finally:
        if any(isinstance(lg, WandbLogger) for lg in loggers):
            import wandb

            wandb.finish()  # one W&B run per job: Lightning never finishes it, so each job must
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


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
