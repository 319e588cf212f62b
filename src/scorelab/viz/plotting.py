"""Pictures of samples: a scatter plot for 2-D points, an image grid for images."""
from __future__ import annotations

from pathlib import Path

import torch


def save_class_grid(images: torch.Tensor, path: str | Path, per_row: int) -> Path:
    """Write uint8 images ``[K * per_row, C, H, W]`` as a grid of ``per_row`` columns: one row per class when the
    images are ordered class by class (``sample.py task=labels task.labels=all``)."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.detach().float().cpu() / 255.0, path, nrow=per_row, padding=2)
    return path


def save_image_grid(x: torch.Tensor, path: str | Path, data_range: tuple[float, float] = (-1.0, 1.0)) -> Path:
    """Write images ``[N, C, H, W]`` in ``data_range`` as a grid of at most 64, 8 per row; returns the path."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lo, hi = data_range
    images = ((x.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    save_image(images[:64], path, nrow=min(8, len(images)), padding=2)
    return path


def save_points_picture(x: torch.Tensor, path: str | Path, reference: torch.Tensor | None = None,
                        title: str | None = None) -> Path:
    """Write points ``[N, D]`` as a PNG: histograms for ``D = 1``, else a scatter plot of the first two coordinates
    (over ``reference`` points in grey if given); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = x.detach().float().cpu()
    if x.ndim != 2:
        raise ValueError(f"can only picture [N, D] points here, got shape {tuple(x.shape)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if x.shape[1] == 1:  # 1-D data: histograms
        if reference is not None:
            ax.hist(reference.detach().float().cpu()[:, 0], bins=100, density=True, color="0.75", label="data")
        ax.hist(x[:, 0], bins=100, density=True, alpha=0.6, color="tab:blue", label="samples")
        ax.legend(fontsize=8)
        ax.set_title(title or "", fontsize=9)
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        return path
    if reference is not None:
        ref = reference.detach().float().cpu()
        ax.scatter(ref[:, 0], ref[:, 1], s=1, c="0.75", alpha=0.5, label="data", rasterized=True)
    ax.scatter(x[:, 0], x[:, 1], s=1, c="tab:blue", alpha=0.5, label="samples", rasterized=True)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title, fontsize=9)
    if reference is not None:
        ax.legend(loc="upper right", markerscale=8, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
