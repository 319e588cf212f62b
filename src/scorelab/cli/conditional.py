"""``sample.py task=inpaint | colorize | interpolate``: the conditional tasks of Song et al. 2021 (App. I.2, I.3,
Sec. 4.3) on any trained image model (docs/conditional_tasks.md).

Each task writes ``<task>.png`` (a grid: one row per observed image) and ``<task>.npz`` (the tensors, in the model's
units) into the run folder, atomically.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from ..core.distributed import env_world_size
from ..core.io import atomic_path, save_npz_atomic, write_text_atomic
from ..core.rng import PerSampleGenerator
from ..tasks.conditional import FLOW_METHODS, colorize, decode, encode, grey_level, inpaint, slerp
from .common import resolve_device
from .errors import UserError

TASKS = ("sample", "inpaint", "colorize", "interpolate")


def check_task(cfg: DictConfig) -> None:
    """Refuse an unknown task or task options that cannot work, before any model is loaded."""
    task = cfg.get("task", "sample")
    if task not in TASKS:
        raise UserError(f"task must be one of {TASKS}, got {task!r}")
    if task == "sample":
        return
    if env_world_size() > 1:
        raise UserError(f"task={task} runs in one process; launch it without torchrun")
    if cfg.get("image") is None:
        what = "two images, image=[a.png,b.png] or two test-set indices image=[3,17]" if task == "interpolate" else \
            "image=<png> or a test-set index image=<i>"
        raise UserError(f"task={task} needs {what}")
    per_image = cfg.get("per_image")
    if task in ("inpaint", "colorize") and (isinstance(per_image, bool) or not isinstance(per_image, int)
                                           or per_image < 1):
        raise UserError(f"per_image must be a positive integer, got {per_image!r}")
    if task == "inpaint" and (cfg.get("mask") is None) == (cfg.get("box") is None):
        raise UserError("task=inpaint needs exactly one of mask=<png> (white: the pixels to fill in) and "
                        "box=[x0,y0,x1,y1] (the rectangle to fill in)")
    if task == "interpolate":
        steps = cfg.interpolation.points
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise UserError(f"interpolation.points must be an integer >= 2, got {steps!r}")
        if cfg.interpolation.method not in FLOW_METHODS:
            raise UserError(f"interpolation.method must be one of {FLOW_METHODS}, got {cfg.interpolation.method!r}")


def _items(spec: Any) -> list:
    if isinstance(spec, (list, tuple, ListConfig)):
        return list(spec)
    if isinstance(spec, str) and "," in spec:
        return [s.strip() for s in spec.split(",")]
    return [spec]


def _as_index(item: Any) -> int | None:
    if isinstance(item, bool):
        return None
    if isinstance(item, int):
        return item
    if isinstance(item, str) and item.strip().isdigit():
        return int(item)
    return None


def read_png(path: str, channels: int, size: tuple[int, int], what: str = "image") -> torch.Tensor:
    """A PNG (or any image PIL reads) as uint8 ``[C, H, W]``, refusing a missing file or a wrong size."""
    from PIL import Image, UnidentifiedImageError

    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise UserError(f"{what} not found: {p}")
    try:
        with Image.open(p) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{what} {p} cannot be read as an image ({exc})") from None
    h, w = array.shape[:2]
    if (h, w) != tuple(size):
        raise UserError(f"{what} {p} is {w}x{h} pixels but the model makes {size[1]}x{size[0]} images: resize it "
                        "to that size first")
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())


def load_observed(spec: Any, datamodule, shape: Sequence[int], channels: int | None = None
                  ) -> tuple[torch.Tensor, list[str]]:
    """The observed images named by ``image=``: PNG paths and test-set indices, as uint8 ``[N, C, H, W]``."""
    c, h, w = shape
    channels = c if channels is None else channels
    images, names, test = [], [], None
    for item in _items(spec):
        index = _as_index(item)
        if index is None:
            images.append(read_png(str(item), channels, (h, w)))
            names.append(str(item))
            continue
        if test is None:
            test = datamodule.images("test")[0]
        if not 0 <= index < len(test):
            raise UserError(f"image={index}: the test set has {len(test)} images (indices 0..{len(test) - 1})")
        image = torch.as_tensor(test[index])
        images.append(image.expand(channels, -1, -1).clone() if image.shape[0] != channels else image)
        names.append(f"test[{index}]")
    return torch.stack(images), names


def to_model_units(images: torch.Tensor, data_range: Sequence[float]) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` to floats in ``data_range`` (``x / 255`` mapped linearly, as the data modules do)."""
    lo, hi = data_range
    return lo + (hi - lo) * images.float() / 255.0


def hole_mask(cfg: DictConfig, size: tuple[int, int]) -> torch.Tensor:
    """``[1, 1, H, W]`` bool, True on the pixels to fill in: white pixels of ``mask=``, or the ``box=`` rectangle."""
    h, w = size
    if cfg.get("mask") is not None:
        hole = read_png(str(cfg.mask), 1, size, what="mask")[0] >= 128
    else:
        box = _items(cfg.box)
        try:
            x0, y0, x1, y1 = (int(v) for v in box)
        except (TypeError, ValueError):
            raise UserError(f"box must be four integers [x0,y0,x1,y1], got {cfg.box!r}") from None
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise UserError(f"box=[{x0},{y0},{x1},{y1}] must satisfy 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} "
                            "(x: column, y: row, the ends excluded)")
        hole = torch.zeros(h, w, dtype=torch.bool)
        hole[y0:y1, x0:x1] = True
    if not hole.any():
        raise UserError("the mask leaves no pixel to fill in (white marks the pixels to fill in)")
    return hole[None, None]


def _save_grid(tiles: torch.Tensor, path: Path, columns: int, data_range: Sequence[float]) -> Path:
    """Write ``tiles [N, C, H, W]`` (model units) as a PNG grid of ``columns`` columns, atomically."""
    from torchvision.utils import save_image

    lo, hi = data_range
    with atomic_path(path) as tmp:
        save_image(((tiles.float().cpu() - lo) / (hi - lo)).clamp(0, 1), tmp, nrow=columns, padding=2, format="png")
    return path


def _seeds(cfg: DictConfig, rows: int, per_row: int) -> list[list[int]]:
    return [[cfg.seed + r * per_row + j for j in range(per_row)] for r in range(rows)]


def run_task(cfg: DictConfig, trained, sampler_cfg: DictConfig) -> Path:
    """Run ``cfg.task`` on a loaded model; returns the ``.npz`` written."""
    shape = tuple(trained.datamodule.sample_shape)
    if trained.datamodule.domain.kind != "images":
        raise UserError(f"task={cfg.task} is for image models; this one makes points of shape {shape} "
                        "(sample them with task=sample)")
    if cfg.task == "colorize" and shape[0] != 3:
        raise UserError(f"task=colorize needs a colour (3-channel) model; this one makes {shape[0]}-channel images")
    device = resolve_device(cfg.device)
    score = trained.score.to(device).eval()
    data_range = tuple(trained.datamodule.data_range)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = {"inpaint": _inpaint, "colorize": _colorize, "interpolate": _interpolate}[cfg.task]
    arrays, tiles, columns, summary = task(cfg, trained, sampler_cfg, score, shape, device, data_range)
    npz = save_npz_atomic(out / f"{cfg.task}.npz", data_range=np.asarray(data_range, dtype=np.float32), **arrays)
    picture = _save_grid(tiles, out / f"{cfg.task}.png", columns, data_range)
    summary.update(task=cfg.task, ckpt_path=cfg.get("ckpt_path"), picture=str(picture), tensors=str(npz))
    write_text_atomic(out / f"{cfg.task}.json", json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return npz


def _inpaint(cfg, trained, sampler_cfg, score, shape, device, data_range):
    sampler = instantiate(sampler_cfg)
    uint8, names = load_observed(cfg.image, trained.datamodule, shape)
    observed = to_model_units(uint8, data_range).to(device)
    hole = hole_mask(cfg, shape[1:]).to(device)
    k, seeds = cfg.per_image, _seeds(cfg, len(observed), cfg.per_image)
    results, nfe = [], 0
    for row, y in enumerate(observed):
        batch = y[None].expand(k, *shape).contiguous()
        x, nfe = inpaint(sampler, score, trained.sde, batch, ~hole, PerSampleGenerator(seeds[row], device))
        results.append(x.cpu())
    samples = torch.stack(results)  # [N, k, C, H, W]
    mid = 0.5 * (data_range[0] + data_range[1])
    shown = torch.where(hole, torch.full_like(observed, mid), observed).cpu()
    mask_tile = torch.where(hole, data_range[1], data_range[0]).float().expand(1, *shape).cpu()
    tiles = torch.cat([torch.cat([shown[r:r + 1], mask_tile, samples[r]]) for r in range(len(samples))])
    arrays = {"observed": observed.cpu().numpy(), "known": (~hole).cpu().numpy(), "samples": samples.numpy(),
              "seeds": np.asarray(seeds), "nfe": np.array(nfe)}
    summary = {"images": names, "per_image": k, "sampler": repr(sampler), "nfe": nfe,
               "hole_pixels": int(hole.sum())}
    return arrays, tiles, k + 2, summary


def _colorize(cfg, trained, sampler_cfg, score, shape, device, data_range):
    sampler = instantiate(sampler_cfg)
    uint8, names = load_observed(cfg.image, trained.datamodule, shape)
    observed = to_model_units(uint8, data_range).to(device)
    grey = grey_level(observed)
    k, seeds = cfg.per_image, _seeds(cfg, len(observed), cfg.per_image)
    results, nfe = [], 0
    for row, g in enumerate(grey):
        x, nfe = colorize(sampler, score, trained.sde, g[None].expand(k, *g.shape).contiguous(),
                          PerSampleGenerator(seeds[row], device))
        results.append(x.cpu())
    samples = torch.stack(results)
    grey_rgb = grey.expand(-1, 3, -1, -1).cpu()
    tiles = torch.cat([torch.cat([observed[r:r + 1].cpu(), grey_rgb[r:r + 1], samples[r]])
                       for r in range(len(samples))])
    arrays = {"observed": observed.cpu().numpy(), "grey": grey.cpu().numpy(), "samples": samples.numpy(),
              "seeds": np.asarray(seeds), "nfe": np.array(nfe)}
    summary = {"images": names, "per_image": k, "sampler": repr(sampler), "nfe": nfe}
    return arrays, tiles, k + 2, summary


def _interpolate(cfg, trained, sampler_cfg, score, shape, device, data_range):
    uint8, names = load_observed(cfg.image, trained.datamodule, shape)
    if len(uint8) != 2:
        raise UserError(f"task=interpolate needs exactly two images, got {len(uint8)}: image=[a.png,b.png] or "
                        "image=[3,17] (test-set indices)")
    opts = cfg.interpolation
    solver = {"method": opts.method, "steps": opts.steps, "rtol": opts.rtol, "atol": opts.atol}
    x = to_model_units(uint8, data_range).to(device)
    z, nfe_encode = encode(score, trained.sde, x, eps=opts.eps, **solver)
    alphas = torch.linspace(0.0, 1.0, opts.points, dtype=torch.float64)
    path = slerp(z[:1], z[1:], alphas)[0]  # [K, C, H, W]
    decoded, nfe_decode = decode(score, trained.sde, path, eps=opts.eps, **solver)
    decoded = decoded.cpu()
    lerp = torch.stack([(1 - a) * x[0].cpu() + a * x[1].cpu() for a in alphas.float()])
    x = x.cpu()
    tiles = torch.cat([x[:1], decoded, x[1:], x[:1], lerp, x[1:]])
    errors = [float((decoded[0] - x[0]).abs().max()), float((decoded[-1] - x[1]).abs().max())]
    arrays = {"observed": x.numpy(), "latents": z.cpu().numpy(), "alphas": alphas.numpy(),
              "path_latents": path.cpu().numpy(), "decoded": decoded.numpy(), "pixel_lerp": lerp.numpy(),
              "nfe_encode": np.array(nfe_encode), "nfe_decode": np.array(nfe_decode)}
    summary = {"images": names, "points": opts.points, "solver": solver, "eps": opts.eps,
               "nfe_encode": nfe_encode, "nfe_decode": nfe_decode, "reconstruction_max_abs_error": errors,
               "latent_norms": [float(v) for v in z.flatten(1).norm(dim=1)]}
    return arrays, tiles, opts.points + 2, summary
