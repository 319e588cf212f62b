"""Helpers the train and sample commands share: building objects from config, checkpoints, resolvers."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from .errors import UserError


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


def load_checkpoint(path: str) -> tuple[str, dict]:
    """Fail early, with what to do, on a missing or unreadable checkpoint; return its absolute path and contents."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}. Pass ckpt_path=<run dir>/checkpoints/last.ckpt of an earlier run")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # any unpickling/zip error means the file is not a usable checkpoint
        raise UserError(f"checkpoint {p} cannot be read ({type(exc).__name__}: {exc}); it may be truncated or not "
                        "a Lightning checkpoint: pick another file, e.g. an epoch_*.ckpt next to it") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{p} is not a Lightning checkpoint (no state_dict); pass a .ckpt written by train.py")
    return str(p.resolve()), ckpt


def check_state_dict(module: torch.nn.Module, state_dict: dict, path: str) -> None:
    """Raise a one-line error if a checkpoint's weights do not fit ``module`` (config changed since training)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    wrong = [k for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or wrong:
        key = (wrong or missing)[0]
        what = (f"{key} has shape {tuple(state_dict[key].shape)} there but {tuple(own[key].shape)} here"
                if wrong else f"{key} is missing from it")
        raise UserError(f"checkpoint {path} does not fit the configured model ({what}); use the model/data/sde "
                        "settings it was trained with")
