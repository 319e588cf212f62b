"""Drawing the pictures that teach (:mod:`scorelab.viz.teaching`): matplotlib for the figures, Pillow for the GIF."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    """Lay out, write and close ``fig``; return ``path``."""
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)
    return Path(path)


def _short(t: float) -> str:
    return f"{t:.3g}"


def epsilon_error(field) -> torch.Tensor:
    """``||s(t) (s_model - s_exact)||`` per grid point ``[K, n, n]``: the model's error as a noise prediction
    (``eps = -s(t) score``, Ho et al. 2020), comparable across ``t`` where the score itself is not."""
    return (field.std.view(-1, 1, 1, 1) * (field.model - field.exact)).norm(dim=-1)


EXACT_TOLERANCE = 1e-5  # a noise-prediction error below this everywhere: the model is the exact score


def model_is_exact(field) -> bool:
    """Whether the model's score equals the exact one on the whole grid (``model=oracle``): its error panels would
    be empty, so they are left out."""
    return field.exact is not None and float(epsilon_error(field).max()) <= EXACT_TOLERANCE


def draw_score_field(field, path: Path, exact_fn=None) -> Path:
    """Write :func:`score_field_figure` to ``path``."""
    return _save(score_field_figure(field, exact_fn), path)


def score_field_figure(field, exact_fn=None):
    """Arrows of ``s(t) * score`` (minus the predicted noise: it points to the data, and is of order one at every
    ``t``) for the model, and for the exact score with the model's error beneath when there is one. Arrows longer
    than the exact field's 75th percentile are shortened to it (the direction is kept), so the small arrows near the
    data stay visible. The grey background is the exact ``log p_t`` when known. When the model is the exact score
    (:func:`model_is_exact`) only its row is drawn, and the title says so: no duplicate row, no empty error panels."""
    plt = _pyplot()
    times = field.times.tolist()
    exact_model = model_is_exact(field)
    compare = field.exact is not None and not exact_model
    rows = [("exact" if exact_model else "model", field.model)] + ([("exact", field.exact)] if compare else [])
    n_rows = len(rows) + (1 if compare else 0)
    xs = field.xs.numpy()
    limit = float(xs[-1])
    fig, axes = plt.subplots(n_rows, len(times), figsize=(2.6 * len(times), 2.6 * n_rows + (0.3 if exact_model
                                                                                              else 0.0)),
                             dpi=80, squeeze=False)
    error = epsilon_error(field) if compare else None
    for k, t in enumerate(times):
        background = None
        if exact_fn is not None:
            fine = torch.linspace(-limit, limit, 120)
            yy, xx = torch.meshgrid(fine, fine, indexing="ij")
            pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
            with torch.no_grad():
                logp = exact_fn.log_prob(pts, torch.full((len(pts),), float(t))).reshape(120, 120)
            background = logp.clamp(min=float(logp.max()) - 12).numpy()
        scaled = [field.std[k] * s[k] for _, s in rows]
        cap = float(scaled[-1].norm(dim=-1).quantile(0.75)) or 1.0  # arrows longer than this are drawn this long
        scaled = [v * (cap / v.norm(dim=-1, keepdim=True).clamp(min=cap)) for v in scaled]
        cell = 2 * limit / (len(xs) - 1)
        for r, ((name, _), v) in enumerate(zip(rows, scaled, strict=True)):
            ax = axes[r, k]
            if background is not None:
                ax.imshow(background, extent=(-limit, limit, -limit, limit), origin="lower", cmap="Greys",
                          alpha=0.35)
            ax.quiver(xs, xs, v[..., 0].numpy(), v[..., 1].numpy(), angles="xy", scale_units="xy",
                      scale=cap / (0.9 * cell), width=0.008, color="tab:blue" if name == "model" else "tab:red")
            ax.set_title(f"{'model = exact' if exact_model else name} score, t = {_short(t)}", fontsize=9)
        if error is not None:
            ax = axes[len(rows), k]
            im = ax.imshow(error[k].numpy(), extent=(-limit, limit, -limit, limit), origin="lower", cmap="magma",
                           vmin=0.0, vmax=float(error.max()))
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            ax.set_title(f"noise-prediction error, mean {float(error[k].mean()):.3g}", fontsize=8)
        for ax in axes[:, k]:
            ax.set_xlim(-limit, limit)
            ax.set_ylim(-limit, limit)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7)
    note = ("\nthe model is the exact score (error below 1e-5 everywhere): no exact row or error panels to show"
            if exact_model else "")
    fig.suptitle("s(t) x score: arrows point to where p_t has more mass" + note, fontsize=10)
    return fig


def draw_trajectories(recording, path: Path, limit: float, points: int, reference: torch.Tensor | None = None,
                      classify=None, sampler: str | None = None) -> Path:
    """Write :func:`trajectories_figure` to ``path``."""
    return _save(trajectories_figure(recording, limit, points, reference, classify, sampler), path)


def trajectories_figure(recording, limit: float, points: int, reference: torch.Tensor | None = None, classify=None,
                        sampler: str | None = None):
    """The reverse paths of the first ``points`` recorded samples, from a dot at ``x(T)`` to a cross at the sample,
    coloured by the class ``classify(samples) -> [N]`` sees (the mixture component a sample lands in; without one,
    by the sample's angle), over the
    data in grey; a few paths, one per component first, are drawn boldly so single paths can be followed. The title
    names the ``sampler`` (its :meth:`~scorelab.sampling.Sampler.describe`) when given."""
    plt = _pyplot()
    from matplotlib.collections import LineCollection

    paths = recording.states[:, :points].transpose(0, 1).numpy()  # [N, S, 2]
    final = recording.samples[:points]
    if classify is not None:
        labels = classify(final.double()).numpy()
        colours = plt.get_cmap("tab10")(labels % 10)
    else:
        angle = np.arctan2(final[:, 1].numpy(), final[:, 0].numpy())
        colours = plt.get_cmap("hsv")((angle + np.pi) / (2 * np.pi))
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=80)
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=1, c="0.8", rasterized=True)
    ax.add_collection(LineCollection(paths, colors=colours, linewidths=0.5, alpha=0.3))
    bold = highlighted(labels if classify is not None else np.zeros(len(paths), dtype=int), 8)
    ax.add_collection(LineCollection(paths[bold], colors=colours[bold], linewidths=1.4, alpha=0.95))
    ax.scatter(paths[:, 0, 0], paths[:, 0, 1], s=4, c="0.4", label="x(T), from the prior")
    ax.scatter(paths[:, -1, 0], paths[:, -1, 1], s=12, c=colours, marker="x", linewidths=0.8, label="sample")
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    head = f"{sampler}\n" if sampler else ""
    ax.set_title(f"{head}{len(paths)} reverse paths, {len(recording.times)} recorded states, NFE {recording.nfe}",
                 fontsize=9)
    return fig


def highlighted(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` paths to draw boldly: one ending in each label first, then the next ones in order."""
    first = [int(np.flatnonzero(labels == label)[0]) for label in np.unique(labels)]
    rest = [i for i in range(len(labels)) if i not in set(first)]
    return np.array(sorted((first + rest)[:count]), dtype=int)


def frame_indices(n_states: int, frames: int) -> list[int]:
    """At most ``frames`` state indices, evenly spread, the first and the last included."""
    return sorted({int(round(v)) for v in np.linspace(0, n_states - 1, min(frames, n_states))})


def write_marginals_gif(recording, path: Path, limit: float, frames: int, reference: torch.Tensor | None = None,
                        size: int = 320) -> Path:
    """An animated GIF of the sample cloud from ``t = T`` to the data: one frame per recorded state (thinned to
    ``frames``), the same axes in every frame, the data in grey, the last frame held."""
    from PIL import Image, ImageDraw

    def pixels(x: torch.Tensor) -> np.ndarray:
        p = ((x.numpy() + limit) / (2 * limit) * (size - 1)).round().astype(int)
        p[:, 1] = size - 1 - p[:, 1]
        return p[((p >= 0) & (p < size)).all(axis=1)]

    base = Image.new("P", (size, size), 0)
    base.putpalette([255, 255, 255, 205, 205, 205, 31, 119, 180, 0, 0, 0] + [0] * (256 * 3 - 12))
    if reference is not None:
        ImageDraw.Draw(base).point([tuple(p) for p in pixels(reference)], fill=1)
    images = []
    indices = frame_indices(len(recording.times), frames)
    for idx in indices:
        frame = base.copy()
        draw = ImageDraw.Draw(frame)
        for u, v in pixels(recording.states[idx]):
            draw.rectangle((u - 1, v - 1, u, v), fill=2)
        t = float(recording.times[idx])
        draw.text((6, 4), "samples" if t <= 0 else f"t = {t:.3f}", fill=3)
        images.append(frame)
    durations = [80] * (len(images) - 1) + [1500]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=True)
    return Path(path)


def strip_grid(progression, data_range: tuple[float, float], padding: int = 2) -> torch.Tensor:
    """The strip as one image ``[C, H', W']`` in ``[0, 1]``: for each sample a row of states ``x_t`` and beneath it
    a row of Tweedie estimates, one column per time."""
    from torchvision.utils import make_grid

    lo, hi = data_range
    n, columns = progression.states.shape[:2]
    rows = torch.stack([progression.states, progression.denoised], dim=1).reshape(2 * n * columns,
                                                                                  *progression.states.shape[2:])
    return make_grid(((rows - lo) / (hi - lo)).clamp(0, 1), nrow=columns, padding=padding, pad_value=1.0)


def draw_denoising_strip(progression, path: Path, data_range: tuple[float, float], sampler: str | None = None
                         ) -> Path:
    """``denoising_strip.png``: :func:`strip_grid` with the time of each column and the kind of each row (and the
    ``sampler``'s description in the title when given)."""
    plt = _pyplot()
    grid = strip_grid(progression, data_range)
    image = grid.permute(1, 2, 0).numpy()
    n, columns = progression.states.shape[:2]
    height, width = progression.states.shape[-2:]
    scale = max(1.0, 56 / height)
    fig, ax = plt.subplots(figsize=(image.shape[1] * scale / 80 + 1.4, image.shape[0] * scale / 80 + 0.6), dpi=80)
    ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([2 + (width + 2) * c + width / 2 for c in range(columns)])
    ax.set_xticklabels(["sample" if t <= 0 else f"t={t:.2f}" for t in progression.times.tolist()], fontsize=8)
    ax.set_yticks([2 + (height + 2) * r + height / 2 for r in range(2 * n)])
    ax.set_yticklabels(["x_t", "E[x0|x_t]"] * n, fontsize=8)
    ax.tick_params(length=0)
    ax.set_title("denoising: the state x_t and the network's estimate of the clean image"
                 + (f"\n{sampler}" if sampler else ""), fontsize=9)
    return _save(fig, path)
