"""The pictures of the image tasks (``sample.py task=inpaint | colorize | interpolate``, docs/conditional_tasks.md):
labelled grids that say what each column is.

* inpainting: ``observed`` (the hole drawn in colour: those pixels are unknown) | ``mask`` (white: filled in) |
  ``sample 1..k`` | ``truth`` (the input image, whose hole the samples fill in);
* colourisation: ``observed: grey level`` | ``colouring 1..k`` | ``truth`` (the colour input);
* interpolation: ``x_a`` | the decoded path at each ``alpha`` | ``x_b``, over the straight line in pixel space.

Each builder returns a matplotlib figure (tests read its axes' titles); :func:`save_figure` writes it atomically.
Tensors are in the model's units (``data_range``), ``[C, H, W]`` per image.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..core.io import atomic_path

HOLE_RGB = (0.20, 0.45, 0.85)  # the colour of the unknown pixels in the "observed" column
TILE = 1.15  # inches per image
TITLE_SIZE = 11


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_display(x: torch.Tensor, data_range: Sequence[float]) -> np.ndarray:
    """``[C, H, W]`` in ``data_range`` to an ``[H, W, 3]`` RGB array in ``[0, 1]`` (grey images repeated)."""
    lo, hi = data_range
    x = ((x.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.permute(1, 2, 0).numpy()


def masked_display(observed: torch.Tensor, hole: torch.Tensor, data_range: Sequence[float]) -> np.ndarray:
    """The observed image with the pixels of ``hole`` (``[H, W]`` or broadcastable, True = unknown) in
    :data:`HOLE_RGB`: what the sampler is given."""
    image = to_display(observed, data_range).copy()
    image[hole.reshape(hole.shape[-2:]).cpu().numpy()] = HOLE_RGB
    return image


def _grid(rows: int, columns: Sequence[str], gaps: Sequence[int] = (), height: float = TILE):
    """A figure of ``rows x len(columns)`` image axes, a narrow gap before each column index in ``gaps``, the
    column titles on the first row; returns ``(fig, axes [rows][columns])``."""
    plt = _pyplot()
    widths, where = [], []
    for c in range(len(columns)):
        if c in gaps:
            widths.append(0.18)
        where.append(len(widths))
        widths.append(1.0)
    left, right, top, bottom = 0.6, 0.1, 1.05, 0.35  # inches: row labels; margin; title and headers; end names
    width = TILE * sum(widths) * 1.06 + left + right
    tall = height * rows * 1.1 + top + bottom
    fig = plt.figure(figsize=(width, tall))
    spec = fig.add_gridspec(rows, len(widths), width_ratios=widths, wspace=0.06, hspace=0.1, left=left / width,
                            right=1 - right / width, top=1 - top / tall, bottom=bottom / tall)
    axes = [[fig.add_subplot(spec[r, where[c]]) for c in range(len(columns))] for r in range(rows)]
    for c, title in enumerate(columns):
        axes[0][c].set_title(title, fontsize=TITLE_SIZE if len(title) < 10 else TITLE_SIZE - 1)
    return fig, axes


def _show(ax, image: np.ndarray, label: str | None = None) -> None:
    ax.imshow(image, interpolation="nearest", vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    if label is not None:
        ax.set_ylabel(label, fontsize=TITLE_SIZE - 1)


def inpaint_figure(observed: torch.Tensor, hole: torch.Tensor, samples: torch.Tensor, data_range: Sequence[float],
                   names: Sequence[str] | None = None, truth: torch.Tensor | None = None, sampler: str | None = None):
    """One row per observed image: ``observed`` (hole in colour) | ``mask`` (white: filled in) | ``sample 1..k`` |
    ``truth`` (when given: the full image the observation was cut from).

    Args:
        observed: ``[N, C, H, W]`` the observed images (their hole pixels are not shown).
        hole: ``[H, W]`` (or ``[1, 1, H, W]``) bool, True on the pixels filled in.
        samples: ``[N, k, C, H, W]`` the completions.
        data_range: the model's pixel range.
        names: a label per row (the image's file or test index).
        truth: ``[N, C, H, W]`` the true images, or None when unknown.
        sampler: the sampler's description, for the title.
    """
    n, k = samples.shape[:2]
    hole = hole.reshape(hole.shape[-2:]).bool()
    columns = ["observed", "mask"] + [f"sample {j + 1}" for j in range(k)] + (["truth"] if truth is not None else [])
    fig, axes = _grid(n, columns, gaps=(2, 2 + k))
    mask_image = np.repeat(hole.cpu().numpy()[..., None].astype(float), 3, axis=-1)
    for r in range(n):
        _show(axes[r][0], masked_display(observed[r], hole, data_range), names[r] if names else None)
        _show(axes[r][1], mask_image)
        for j in range(k):
            _show(axes[r][2 + j], to_display(samples[r, j], data_range))
        if truth is not None:
            _show(axes[r][2 + k], to_display(truth[r], data_range))
    what = "inpainting: the sampler sees the observed pixels (blue: unknown) and fills in the mask's white pixels"
    fig.suptitle(what + (f"\n{sampler}" if sampler else ""), fontsize=TITLE_SIZE)
    return fig


def colorize_figure(grey: torch.Tensor, samples: torch.Tensor, data_range: Sequence[float],
                    names: Sequence[str] | None = None, truth: torch.Tensor | None = None,
                    sampler: str | None = None):
    """One row per image: ``observed: grey level`` | ``colouring 1..k`` | ``truth`` (the colour input, when
    given). ``grey`` ``[N, 1 or 3, H, W]``, ``samples`` ``[N, k, 3, H, W]``, ``truth`` ``[N, 3, H, W]``."""
    n, k = samples.shape[:2]
    columns = ["observed: grey"] + [f"colouring {j + 1}" for j in range(k)] + (["truth"] if truth is not None
                                                                                 else [])
    fig, axes = _grid(n, columns, gaps=(1, 1 + k))
    for r in range(n):
        _show(axes[r][0], to_display(grey[r], data_range), names[r] if names else None)
        for j in range(k):
            _show(axes[r][1 + j], to_display(samples[r, j], data_range))
        if truth is not None:
            _show(axes[r][1 + k], to_display(truth[r], data_range))
    what = "colourisation: the sampler sees the grey level and draws the colour"
    fig.suptitle(what + (f"\n{sampler}" if sampler else ""), fontsize=TITLE_SIZE)
    return fig


def interpolate_figure(ends: torch.Tensor, decoded: torch.Tensor, lerp: torch.Tensor, alphas: Sequence[float],
                       data_range: Sequence[float], names: Sequence[str] | None = None, solver: str | None = None):
    """Two rows between the end points ``x_a`` and ``x_b`` (``ends [2, C, H, W]``): the decoded spherical path of the
    probability-flow latents (``decoded [K, C, H, W]``) and the straight line in pixel space (``lerp``), one column
    per ``alpha`` (its weight on ``x_b``)."""
    alphas = [float(a) for a in alphas]
    columns = ["x_a"] + [f"α={a:.2g}" for a in alphas] + ["x_b"]
    fig, axes = _grid(2, columns, gaps=(1, 1 + len(alphas)))
    labels = ("ODE latents,\nslerp", "pixels,\nstraight line")
    for r, row in enumerate((decoded, lerp)):
        _show(axes[r][0], to_display(ends[0], data_range), labels[r])
        for j in range(len(alphas)):
            _show(axes[r][1 + j], to_display(row[j], data_range))
        _show(axes[r][-1], to_display(ends[1], data_range))
    if names:
        axes[1][0].set_xlabel(names[0], fontsize=TITLE_SIZE - 2)
        axes[1][-1].set_xlabel(names[-1], fontsize=TITLE_SIZE - 2)
    top = "decode(slerp(encode(x_a), encode(x_b), α))" + (f" ({solver})" if solver else "")
    fig.suptitle(f"interpolation from x_a (α = 0) to x_b (α = 1)\ntop: {top}; bottom: (1 - α) x_a + α x_b",
                 fontsize=TITLE_SIZE)
    return fig


def image_axes_titles(fig) -> list[str]:
    """The titles of the figure's axes, in order (the column headers; empty for the rows below the first)."""
    return [ax.get_title() for ax in fig.axes]


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically and close it; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    return path
