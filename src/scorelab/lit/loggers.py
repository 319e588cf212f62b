"""Logger factories: W&B online when logged in, offline otherwise, one run per Hydra job, grouped by sweep."""
from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info


def wandb_logged_in() -> bool:
    """Whether W&B credentials exist locally (``WANDB_API_KEY`` or a netrc entry); asks no server."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def hydra_job_info() -> tuple[str | None, str | None]:
    """``(group, name)`` for the current Hydra job: multirun jobs are grouped by their sweep folder."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None, None
    if hc.mode == RunMode.MULTIRUN:
        sweep = Path(hc.sweep.dir).name
        return f"{hc.job.name}-{sweep}", f"{sweep}-job{hc.job.num}"
    return None, Path(hc.runtime.output_dir).name


def wandb_logger(project: str = "scorelab", save_dir: str = ".", mode: str = "auto", name: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, entity: str | None = None,
                 log_model: bool = False) -> WandbLogger:
    """A ``WandbLogger`` for this job.

    Args:
        project, entity, tags: W&B run metadata.
        save_dir: where the ``wandb/`` folder goes (the run folder).
        mode: ``"auto"`` (online when credentials exist, else offline), ``"online"``, ``"offline"`` or
            ``"disabled"``. ``WANDB_MODE`` in the environment wins over ``"auto"``.
        name, group: run name and group; default to the Hydra job and, in a multirun, its sweep.
        log_model: upload checkpoints as artifacts.
    """
    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger mode must be auto, online, offline or disabled, got {mode!r}")
    reason = f"logger.wandb.mode={mode}"
    if mode == "auto":
        if os.environ.get("WANDB_MODE"):
            mode, reason = os.environ["WANDB_MODE"], "WANDB_MODE is set"
        else:
            mode, reason = ("online", "") if wandb_logged_in() else ("offline", "no W&B credentials found")
    job_group, job_name = hydra_job_info()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if mode == "offline":
        rank_zero_info(f"W&B: offline ({reason}). Upload later with: "
                       f"wandb sync {save_dir}/wandb/offline-run-*")
    logger = WandbLogger(project=project, save_dir=save_dir, name=name or job_name, group=group or job_group,
                         tags=tags, entity=entity, log_model=log_model, mode=mode)
    if logger._wandb_init.get("anonymous") is None:  # Lightning passes anonymous=None, which W&B warns is ignored
        logger._wandb_init.pop("anonymous", None)
    return logger
