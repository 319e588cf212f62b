"""``sample(cfg)``: draw samples from a checkpoint (or the exact toy oracle) and write them to the run folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..lit.module import ScoreModule
from ..lit.plotting import save_samples_picture
from ..metrics.toy import toy_metrics
from .common import build_core, check_state_dict, check_stored_targets, load_checkpoint
from .errors import UserError


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r} is not a device name: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is available here: use device=cpu or device=auto")
    return device


def _check_counts(cfg: DictConfig) -> None:
    for key in ("n_samples", "batch_size"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise UserError(f"{key} must be a positive integer, got {cfg[key]!r}")


def load_score_model(ckpt_path: str, use_ema: bool = True, data_dir: str | None = None):
    """Rebuild data module, SDE and score model from the config stored in a ``train.py`` checkpoint.

    ``data_dir``, if given, replaces the stored data config's ``data_dir`` (the training machine's folder), so the
    data module reads this machine's files. Returns ``(score_fn, sde, datamodule, sampler_cfg)``.
    """
    path, ckpt = load_checkpoint(ckpt_path)
    if "scorelab_config" not in ckpt:
        raise UserError(f"{path} has no stored scorelab config; it was not written by scorelab's train.py")
    check_stored_targets(ckpt["scorelab_config"], path)  # before anything from the file is instantiated
    train_cfg = OmegaConf.create(ckpt["scorelab_config"])
    if data_dir is not None and "data_dir" in train_cfg.data:
        train_cfg.data.data_dir = str(data_dir)
    parts = build_core(train_cfg)
    module = ScoreModule(parts["score_model"], parts["sde"], **OmegaConf.to_container(train_cfg.module))
    check_state_dict(module, ckpt["state_dict"], path)
    module.load_state_dict(ckpt["state_dict"])
    return module.score_fn(use_ema), parts["sde"], parts["datamodule"], train_cfg.get("sampler")


def sample(cfg: DictConfig) -> Path:
    """Sample ``cfg.n_samples`` points/images with ``cfg.sampler``; write ``samples.npz`` (``x``, ``nfe``), a picture
    and, for toy data, ``metrics.json`` into ``cfg.paths.output_dir``. Returns the ``.npz`` path."""
    _check_counts(cfg)
    device = _device(cfg.device)
    sampler_cfg = cfg.get("sampler")
    if cfg.get("ckpt_path"):
        score, sde, datamodule, trained_sampler = load_score_model(cfg.ckpt_path, cfg.use_ema)
        sampler_cfg = sampler_cfg or trained_sampler  # default: the sampler the model was trained with
    elif cfg.model.get("oracle", False):
        datamodule, sde = instantiate(cfg.data), instantiate(cfg.sde)
        if getattr(datamodule, "mixture", None) is None:
            raise UserError("model=oracle needs toy data (data=toy_*): images have no exact score")
        score = datamodule.mixture.oracle(sde)
    else:
        raise UserError("nothing to sample from: pass ckpt_path=<run dir>/checkpoints/last.ckpt, or model=oracle "
                        "for the exact score of toy data")
    if not sampler_cfg:
        raise UserError("no sampler: pass sampler=<name> (euler_maruyama, pc, ode, ...)")
    sampler = instantiate(sampler_cfg)
    score = score.to(device).eval()
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    shape = tuple(datamodule.sample_shape)
    chunks, nfe = [], 0
    for start in range(0, cfg.n_samples, cfg.batch_size):
        n = min(cfg.batch_size, cfg.n_samples - start)
        x, nfe = sampler(score, sde, (n, *shape), generator=gen, device=device)
        chunks.append(x.cpu())
    x = torch.cat(chunks)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "samples.npz", x=x.numpy(), nfe=np.array(nfe))
    mixture = getattr(datamodule, "mixture", None)
    reference = mixture.sample(min(len(x), 5000), generator=torch.Generator().manual_seed(0)) if mixture else None
    save_samples_picture(x, out / "samples.png", data_range=getattr(datamodule, "data_range", None),
                         reference=reference, title=f"{type(sampler).__name__}, NFE {nfe}")
    if mixture is not None:
        metrics = toy_metrics(mixture, x, generator=torch.Generator().manual_seed(cfg.seed))
        metrics.update(nfe=nfe, sampler=repr(sampler))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(json.dumps({k: metrics[k] for k in ("mode_weights", "exact_nll", "entropy", "energy_distance")}))
    print(f"wrote {len(x)} samples (NFE {nfe}) to {out / 'samples.npz'}")
    return out / "samples.npz"
