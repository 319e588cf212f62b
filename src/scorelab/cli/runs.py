"""Runs built and restored in one place: the only code that assembles a LightningModule from a config.

:func:`build_run` turns a composed training config into its parts (data module, SDE, model, objective, sampler) and
the module that trains them: a :class:`~scorelab.lit.module.ScoreModule` (``module``), or the noisy classifier of
classifier guidance (``classifier_module``). :func:`restore_run` reads a checkpoint back through the one safe path
(:func:`~scorelab.cli.restore.read_stored_run`), builds the same run from the config stored in it and loads its
weights. ``train.py``, ``sample.py``, ``likelihood.py``, classifier guidance, the converter and the benchmarks all go
through these two functions.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import lightning as L
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from ..lit.module import ScoreModule
from ..sampling.fitted import TABLE_KEY, check_table
from .common import build_core, check_module_keys, check_state_dict
from .restore import read_stored_run, standalone_config
from .safety import SCORE_MODULE


class Run(NamedTuple):
    """A built (or restored) run: its config, its parts and its module."""

    config: DictConfig
    datamodule: Any
    sde: Any
    module: L.LightningModule
    parts: dict[str, Any]
    path: str | None = None  # the checkpoint it was restored from
    fitted_grids: dict | None = None  # time grids fit_grid.py stored in that checkpoint (checked on load)

    @property
    def sampler_cfg(self) -> DictConfig | None:
        """The sampler the run was configured with (None when the config names none)."""
        return self.config.get("sampler")


def build_module(cfg: DictConfig, parts: dict[str, Any]) -> L.LightningModule:
    """The LightningModule of ``cfg``: a :class:`ScoreModule` (``cfg.module``, a ``_target_`` with its arguments),
    or, when ``cfg.classifier_module`` is set, the noisy classifier of classifier guidance."""
    from .classifier import build_classifier_module, refuse_classifier_model

    if cfg.get("classifier_module"):
        return build_classifier_module(cfg, parts)
    refuse_classifier_model(parts)
    settings = OmegaConf.to_container(cfg.module, resolve=True)
    cls = get_class(settings.pop("_target_", SCORE_MODULE))  # its own errors name the setting (ema decay ...)
    return cls(parts["score_model"], parts["sde"], loss=parts["loss"],
               optimizer=instantiate(cfg.optimizer) if cfg.get("optimizer") else None,
               scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None, **settings)


def build_run(cfg: DictConfig) -> Run:
    """Build every part of a run and its module from a composed config (nothing is trained or loaded)."""
    parts = build_core(cfg)
    return Run(cfg, parts["datamodule"], parts["sde"], build_module(cfg, parts), parts)


def restore_run(value: Any, cfg: DictConfig | None = None, key: str = "ckpt_path", data_dir: str | None = None,
                check: Callable[[str, DictConfig], None] | None = None) -> Run:
    """The run a checkpoint holds, with its weights loaded.

    Args:
        value: the checkpoint setting's value: a ``.ckpt`` file, a run folder, ``last`` or ``auto``.
        cfg: the running command's config (its run folder and data folder); None outside a command.
        key: the setting's name, for messages (``ckpt_path``, ``classifier``).
        data_dir: outside a command, the data folder (None: the stored run's own).
        check: ``(path, stored config)``, called before anything is built: refuse the wrong kind of run there.

    Raises:
        UserError: an unreadable or foreign checkpoint, weights that do not fit, settings this scorelab does not take.
        UnsafeFileError: a stored config that would build anything the shipped ``conf/`` does not.
    """
    stored = read_stored_run(value, cfg if cfg is not None else standalone_config(data_dir), key)
    if check is not None:
        check(stored.path, stored.config)
    if not stored.config.get("classifier_module"):
        check_module_keys({k: v for k, v in stored.config.get("module", {}).items() if k != "_target_"},
                          ScoreModule, stored.path, given=("score_model", "sde", "loss", "optimizer", "scheduler"))
    fitted = check_table(stored.checkpoint.get(TABLE_KEY), stored.path)  # a hostile grid: one line, nothing built
    run = build_run(stored.config)
    check_state_dict(run.module, stored.checkpoint["state_dict"], stored.path)
    run.module.load_state_dict(stored.checkpoint["state_dict"])
    return run._replace(path=stored.path, fitted_grids=fitted)
