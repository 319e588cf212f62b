"""The image tasks of ``sample.py``: ``task=inpaint | colorize | interpolate`` (Song et al. 2021, App. I.2, I.3,
Sec. 4.3) on any trained image model (docs/conditional_tasks.md).

Each task writes ``<task>.png`` (a labelled grid, :mod:`scorelab.viz.image_tasks`: one row per observed image),
``<task>.npz`` (the tensors, in the model's
units) and ``<task>.json`` (a summary) into the run folder, atomically. The mathematics is
:mod:`scorelab.tasks.conditional`.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate

from ..core.errors import UserError
from ..core.io import save_npz_atomic, write_text_atomic
from ..core.rng import PerSampleGenerator
from ..ops.flow import FIXED
from ..sampling.base import describe_sampler
from ..viz import image_tasks as pictures
from .base import Task, positive_int
from .conditional import FLOW_METHODS, colorize, decode, encode, grey_level, inpaint, slerp


def _items(spec: Any) -> list:
    if isinstance(spec, Sequence) and not isinstance(spec, str):
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
    """The observed images named by ``task.image=``: PNG paths and test-set indices, as uint8 ``[N, C, H, W]``."""
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
            raise UserError(f"task.image={index}: the test set has {len(test)} images (indices 0..{len(test) - 1})")
        image = torch.as_tensor(test[index])
        images.append(image.expand(channels, -1, -1).clone() if image.shape[0] != channels else image)
        names.append(f"test[{index}]")
    return torch.stack(images), names


def to_model_units(images: torch.Tensor, data_range: Sequence[float]) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` to floats in ``data_range`` (``x / 255`` mapped linearly, as the data modules do)."""
    lo, hi = data_range
    return lo + (hi - lo) * images.float() / 255.0


def hole_mask(mask: str | None, box: Any, size: tuple[int, int]) -> torch.Tensor:
    """``[1, 1, H, W]`` bool, True on the pixels to fill in: white pixels of the PNG ``mask``, or the ``box``
    rectangle ``[x0, y0, x1, y1]``."""
    h, w = size
    if mask is not None:
        hole = read_png(str(mask), 1, size, what="mask")[0] >= 128
    else:
        x0, y0, x1, y1 = box_corners(box)
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise UserError(f"task.box=[{x0},{y0},{x1},{y1}] must satisfy 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} "
                            "(x: column, y: row, the ends excluded)")
        hole = torch.zeros(h, w, dtype=torch.bool)
        hole[y0:y1, x0:x1] = True
    if not hole.any():
        raise UserError("the mask leaves no pixel to fill in (white marks the pixels to fill in)")
    return hole[None, None]


def _seeds(seed: int, rows: int, per_row: int) -> list[list[int]]:
    return [[seed + r * per_row + j for j in range(per_row)] for r in range(rows)]


def box_corners(box: Any) -> tuple[int, int, int, int]:
    """``[x0, y0, x1, y1]`` (a list, or a string ``"x0,y0,x1,y1"``) as four integers."""
    try:
        x0, y0, x1, y1 = (int(v) for v in _items(box))
    except (TypeError, ValueError):
        raise UserError(f"task.box must be four integers [x0,y0,x1,y1], got {box!r}") from None
    return x0, y0, x1, y1


class ImageTask(Task):
    """What the image tasks share: the observed images (``image``: PNG paths or test-set indices), one process,
    and the files they write. Subclasses implement :meth:`solve`.

    Args:
        image: a PNG of the model's size or a test-set index; a list ``[a.png, b.png]`` / ``[3, 17]`` for several.
    """

    images_only = True
    one_process = True
    needs = "task.image=<png> or a test-set index task.image=<i>"

    def __init__(self, image: Any = None):
        if image is None:
            raise UserError(f"task={self.name} needs {self.needs}")
        self.image = image

    def solve(self, score, sde, datamodule, sampler_cfg, shape, device, data_range, seed: int
              ) -> tuple[dict[str, np.ndarray], Any, dict[str, Any]]:
        """``(arrays for the .npz, the picture (a matplotlib figure, :mod:`scorelab.viz.image_tasks`), the
        summary)``."""
        raise NotImplementedError(f"{type(self).__name__} does not define solve(): every image task does")

    def run(self, score, sde, datamodule, sampler_cfg, device, out: Path, seed: int = 0,
            ckpt_path: str | None = None) -> Path:
        """Run the task on a loaded model and write its files into ``out``; returns the ``.npz`` written."""
        shape = tuple(datamodule.sample_shape)
        self.check_model(shape, datamodule.domain.kind)
        score = score.to(device).eval()
        data_range = tuple(datamodule.data_range)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        arrays, figure, summary = self.solve(score, sde, datamodule, sampler_cfg, shape, device, data_range, seed)
        npz = save_npz_atomic(out / f"{self.name}.npz", data_range=np.asarray(data_range, dtype=np.float32), **arrays)
        picture = pictures.save_figure(figure, out / f"{self.name}.png")
        summary.update(task=self.name, ckpt_path=ckpt_path, picture=str(picture), tensors=str(npz))
        write_text_atomic(out / f"{self.name}.json", json.dumps(summary, indent=2))
        print(json.dumps(summary))
        return npz


class _Completions(ImageTask):
    """Inpainting and colourisation: ``per_image`` completions of each observed image (seeds ``seed, seed + 1,
    ...``)."""

    def __init__(self, image: Any = None, per_image: int = 8):
        super().__init__(image)
        self.per_image = positive_int(per_image, "per_image")


class Inpaint(_Completions):
    """``task=inpaint``: fill in the pixels of a mask (Song et al. 2021, App. I.2).

    Args:
        image: the observed image(s): PNG paths or test-set indices.
        mask: a PNG of the same size, white (>= 128) on the pixels to fill in; or instead
        box: ``[x0, y0, x1, y1]``, the rectangle to fill in (columns ``x0..x1-1``, rows ``y0..y1-1``).
        per_image: completions per observed image.
    """

    name = "inpaint"

    def __init__(self, image: Any = None, mask: str | None = None, box: Any = None, per_image: int = 8):
        super().__init__(image, per_image)
        if (mask is None) == (box is None):
            raise UserError("task=inpaint needs exactly one of task.mask=<png> (white: the pixels to fill in) and "
                            "task.box=[x0,y0,x1,y1] (the rectangle to fill in)")
        if box is not None:
            box_corners(box)
        self.mask, self.box = mask, box

    def solve(self, score, sde, datamodule, sampler_cfg, shape, device, data_range, seed):
        sampler = instantiate(sampler_cfg)
        uint8, names = load_observed(self.image, datamodule, shape)
        observed = to_model_units(uint8, data_range).to(device)
        hole = hole_mask(self.mask, self.box, shape[1:]).to(device)
        k, seeds = self.per_image, _seeds(seed, len(observed), self.per_image)
        results, nfe = [], 0
        for row, y in enumerate(observed):
            batch = y[None].expand(k, *shape).contiguous()
            x, nfe = inpaint(sampler, score, sde, batch, ~hole, PerSampleGenerator(seeds[row], device))
            results.append(x.cpu())
        samples = torch.stack(results)  # [N, k, C, H, W]
        # the input is a whole image, so what lies under the hole is known: the truth column
        figure = pictures.inpaint_figure(observed.cpu(), hole.cpu(), samples, data_range, names,
                                         truth=observed.cpu(), sampler=f"{describe_sampler(sampler)}, NFE {nfe}")
        arrays = {"observed": observed.cpu().numpy(), "known": (~hole).cpu().numpy(), "samples": samples.numpy(),
                  "seeds": np.asarray(seeds), "nfe": np.array(nfe)}
        summary = {"images": names, "per_image": k, "sampler": repr(sampler), "nfe": nfe,
                   "hole_pixels": int(hole.sum())}
        return arrays, figure, summary


class Colorize(_Completions):
    """``task=colorize``: colour a grey-level image with a colour model (Song et al. 2021, App. I.3).

    Args:
        image: the image(s) to colour (their grey level is kept): PNG paths or test-set indices.
        per_image: colourings per image.
    """

    name = "colorize"

    def check_model(self, shape: Sequence[int], kind: str) -> None:
        super().check_model(shape, kind)
        if shape[0] != 3:
            raise UserError(f"task=colorize needs a colour (3-channel) model; this one makes {shape[0]}-channel "
                            "images")

    def solve(self, score, sde, datamodule, sampler_cfg, shape, device, data_range, seed):
        sampler = instantiate(sampler_cfg)
        uint8, names = load_observed(self.image, datamodule, shape)
        observed = to_model_units(uint8, data_range).to(device)
        grey = grey_level(observed)
        k, seeds = self.per_image, _seeds(seed, len(observed), self.per_image)
        results, nfe = [], 0
        for row, g in enumerate(grey):
            x, nfe = colorize(sampler, score, sde, g[None].expand(k, *g.shape).contiguous(),
                              PerSampleGenerator(seeds[row], device))
            results.append(x.cpu())
        samples = torch.stack(results)
        truth = observed.cpu()
        truth = truth[[r for r in range(len(truth)) if not bool((truth[r] == truth[r, :1]).all())]]
        # a grey input hides its colours: the truth column only when every input has colour
        figure = pictures.colorize_figure(grey.cpu(), samples, data_range, names,
                                          truth=observed.cpu() if len(truth) == len(observed) else None,
                                          sampler=f"{describe_sampler(sampler)}, NFE {nfe}")
        arrays = {"observed": observed.cpu().numpy(), "grey": grey.cpu().numpy(), "samples": samples.numpy(),
                  "seeds": np.asarray(seeds), "nfe": np.array(nfe)}
        summary = {"images": names, "per_image": k, "sampler": repr(sampler), "nfe": nfe}
        return arrays, figure, summary


class Interpolate(ImageTask):
    """``task=interpolate``: encode two images with the probability-flow ODE, interpolate the latents spherically
    and decode (Song et al. 2021, Sec. 4.3).

    Args:
        image: the two ends: ``[a.png, b.png]`` or test-set indices ``[3, 17]``.
        points: images on the path, both ends included (>= 2).
        method: the ODE solver: ``euler | heun | rk4`` (fixed steps) or ``dopri5 | bosh3 | adaptive_heun | dopri8``
            (``rtol`` / ``atol``).
        steps: fixed-step methods: steps each way.
        rtol, atol: adaptive methods' tolerances.
        eps: the data end of the ODE (``x(eps)`` is taken as the image).
    """

    name = "interpolate"
    needs = "two images, task.image=[a.png,b.png] or two test-set indices task.image=[3,17]"

    def __init__(self, image: Any = None, points: int = 8, method: str = "rk4", steps: int = 100,
                 rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-3):
        super().__init__(image)
        self.points = positive_int(points, "points", least=2)
        if method not in FLOW_METHODS:
            raise UserError(f"task.method must be one of {FLOW_METHODS}, got {method!r}")
        self.steps = positive_int(steps, "steps")
        for key, value in (("rtol", rtol), ("atol", atol), ("eps", eps)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise UserError(f"task.{key} must be a number in (0, 1), got {value!r}")
        self.method, self.rtol, self.atol, self.eps = method, float(rtol), float(atol), float(eps)

    def solve(self, score, sde, datamodule, sampler_cfg, shape, device, data_range, seed):
        uint8, names = load_observed(self.image, datamodule, shape)
        if len(uint8) != 2:
            raise UserError(f"task=interpolate needs exactly two images, got {len(uint8)}: "
                            "task.image=[a.png,b.png] or task.image=[3,17] (test-set indices)")
        solver = {"method": self.method, "steps": self.steps, "rtol": self.rtol, "atol": self.atol}
        x = to_model_units(uint8, data_range).to(device)
        z, nfe_encode = encode(score, sde, x, eps=self.eps, **solver)
        alphas = torch.linspace(0.0, 1.0, self.points, dtype=torch.float64)
        path = slerp(z[:1], z[1:], alphas)[0]  # [K, C, H, W]
        decoded, nfe_decode = decode(score, sde, path, eps=self.eps, **solver)
        decoded = decoded.cpu()
        lerp = torch.stack([(1 - a) * x[0].cpu() + a * x[1].cpu() for a in alphas.float()])
        x = x.cpu()
        how = (f"{self.method}, {self.steps} steps each way" if self.method in FIXED
               else f"{self.method}, rtol {self.rtol:g}, atol {self.atol:g}")
        figure = pictures.interpolate_figure(x, decoded, lerp, alphas.tolist(), data_range, names, how)
        errors = [float((decoded[0] - x[0]).abs().max()), float((decoded[-1] - x[1]).abs().max())]
        arrays = {"observed": x.numpy(), "latents": z.cpu().numpy(), "alphas": alphas.numpy(),
                  "path_latents": path.cpu().numpy(), "decoded": decoded.numpy(), "pixel_lerp": lerp.numpy(),
                  "nfe_encode": np.array(nfe_encode), "nfe_decode": np.array(nfe_decode)}
        summary = {"images": names, "points": self.points, "solver": solver, "eps": self.eps,
                   "nfe_encode": nfe_encode, "nfe_decode": nfe_decode, "reconstruction_max_abs_error": errors,
                   "latent_norms": [float(v) for v in z.flatten(1).norm(dim=1)]}
        return arrays, figure, summary
