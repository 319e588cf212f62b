"""``posthoc_ema(cfg)``: rebuild the weights of any EMA length from a run's post-hoc EMA snapshots (``ema.py``)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ..core.io import atomic_path, load_torch_file
from ..lit.posthoc_ema import list_snapshots, reconstruct
from .errors import UserError
from .restore import read_stored_run


def output_path(ckpt: Path, sigma_rel: float, step: int | None) -> Path:
    """``<run>/checkpoints/ema_sigma0.080[_step000001000].ckpt`` next to the checkpoint read."""
    suffix = "" if step is None else f"_step{int(step):09d}"
    return ckpt.parent / f"ema_sigma{float(sigma_rel):.3f}{suffix}.ckpt"


def posthoc_ema(cfg: DictConfig) -> dict[str, Any]:
    """Run ``ema.py``: write a checkpoint whose EMA weights are the power EMA of width ``cfg.sigma_rel`` at
    ``cfg.step`` (default: the last snapshot), rebuilt from the run's snapshots. ``sample.py`` reads it as any other.

    Returns:
        ``{"out", "sigma_rel", "step", "snapshots", "residual", "coefficients"}``.
    """
    stored = read_stored_run(cfg.ckpt_path, cfg, "ckpt_path")
    ckpt = Path(stored.path)
    folder = Path(cfg.snapshots).expanduser() if cfg.snapshots else ckpt.parent.parent / "ema_snapshots"
    files = list_snapshots(folder)
    if not files:
        raise UserError(f"no post-hoc EMA snapshots (ema-*.pt) in {folder}: train with callbacks/posthoc_ema=default "
                        "(or point snapshots= at the folder that holds them)")
    snapshots = [load_torch_file(f, "post-hoc EMA snapshot") for f in files]
    try:
        state, info = reconstruct(snapshots, float(cfg.sigma_rel), cfg.step)
    except (ValueError, KeyError) as exc:
        raise UserError(f"post-hoc EMA: {exc}") from None
    checkpoint = copy.copy(stored.checkpoint)
    weights = dict(checkpoint["state_dict"])
    missing = [n for n in state if f"ema.module.{n}" not in weights]
    if missing:
        raise UserError(f"the snapshots in {folder} do not belong to {ckpt}: the checkpoint has no EMA weight "
                        f"{missing[0]!r}")
    for name, value in state.items():
        weights[f"ema.module.{name}"] = value.to(weights[f"ema.module.{name}"].dtype)
    checkpoint["state_dict"] = weights
    checkpoint["scorelab_posthoc_ema"] = {"sigma_rel": float(cfg.sigma_rel), **info, "snapshots": len(files)}
    out = Path(cfg.out).expanduser() if cfg.out else output_path(ckpt, cfg.sigma_rel, cfg.step)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save(checkpoint, tmp)
    print(f"post-hoc EMA sigma_rel {float(cfg.sigma_rel):.3f} at step {info['step']} from {len(files)} snapshots "
          f"(kernel residual {info['residual']:.2e}): {out}", flush=True)
    return {"out": str(out), "sigma_rel": float(cfg.sigma_rel), "step": info["step"], "snapshots": len(files),
            "residual": info["residual"], "coefficients": info["coefficients"]}
