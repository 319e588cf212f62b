"""Helpers the train and sample commands share: building objects from config, checkpoints, resolvers."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from .errors import UserError


def register_resolvers() -> None:
    """OmegaConf resolvers used in ``conf/`` (registered at import time, once; DDP children re-import)."""
    if not OmegaConf.has_resolver("eval_int"):
        OmegaConf.register_new_resolver("eval_int", lambda expr: int(eval(str(expr), {"math": math})))


register_resolvers()


def fill_from_data(net_cfg: DictConfig, sample_shape: tuple[int, ...]) -> None:
    """Set the network's shape arguments left ``null`` in config from the data module's ``sample_shape``."""
    fill = {"dim": sample_shape[0] if len(sample_shape) == 1 else None,
            "in_channels": sample_shape[0] if len(sample_shape) == 3 else None,
            "image_size": sample_shape[-1] if len(sample_shape) == 3 else None}
    with open_dict(net_cfg):
        for key, value in fill.items():
            if key in net_cfg and net_cfg[key] is None:
                if value is None:
                    raise UserError(f"model.net.{key} cannot be inferred from data of shape {sample_shape}; "
                                    f"pick a model made for this data (e.g. model=mlp for points)")
                net_cfg[key] = value


def build_core(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate the data module, SDE, score model, loss and sampler from a composed config."""
    datamodule = instantiate(cfg.data)
    sde = instantiate(cfg.sde)
    model_cfg = cfg.model.copy()
    fill_from_data(model_cfg.net, tuple(datamodule.sample_shape))
    score_model = instantiate(model_cfg, sde=sde)
    loss = instantiate(cfg.loss, sde=sde)
    sampler = instantiate(cfg.sampler)
    return {"datamodule": datamodule, "sde": sde, "score_model": score_model, "loss": loss, "sampler": sampler}


def check_checkpoint(path: str | None) -> str | None:
    """Fail early, with what to do, on a missing or unreadable checkpoint; return its absolute path."""
    if path is None:
        return None
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}. Pass ckpt_path=<run dir>/checkpoints/last.ckpt of an earlier run")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # any unpickling/zip error means the file is not a usable checkpoint
        raise UserError(f"checkpoint {p} cannot be read ({type(exc).__name__}: {exc}); it may be truncated or not "
                        "a Lightning checkpoint: pick another file, e.g. an epoch_*.ckpt next to it") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{p} is not a Lightning checkpoint (no state_dict); pass a .ckpt written by train.py")
    return str(p.resolve())
