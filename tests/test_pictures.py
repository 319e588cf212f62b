"""Pictures that say what they show (issue 22, item 5): labelled image-task grids, sampler titles that name the
method, benchmark plots with the default sampler and the legend outside the data, and no empty teaching panels.

The figures are checked through the functions that build them (axes, titles, image data), not through pixels."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from scorelab.data.toy import eight_gaussians
from scorelab.sampling import (
    Ancestral,
    AnnealedLangevin,
    DPMSolverPP,
    EulerMaruyama,
    Langevin,
    NoPredictor,
    ODESampler,
    PCSampler,
    ReverseDiffusion,
)
from scorelab.sampling.base import describe_sampler
from scorelab.sde import VPSDE
from scorelab.tasks import Colorize, Inpaint, Interpolate
from scorelab.viz import image_tasks
from scorelab.viz.teaching import record_paths, score_field
from scorelab.viz.teaching_plots import model_is_exact, score_field_figure, trajectories_figure

from .platform_utils import ROOT, load_bench

RANGE = (-1.0, 1.0)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _header(fig) -> list[str]:
    """The column headers: the titles of the first row of image axes."""
    return [t for t in image_tasks.image_axes_titles(fig) if t]


def _images(ax) -> np.ndarray:
    return np.asarray(ax.get_images()[0].get_array())


# --- inpainting, colourisation, interpolation -------------------------------------------------------------------
def test_inpaint_figure_has_observed_mask_samples_and_truth_columns():
    gen = torch.Generator().manual_seed(0)
    observed = torch.rand(2, 1, 6, 6, generator=gen) * 2 - 1
    hole = torch.zeros(6, 6, dtype=torch.bool)
    hole[3:] = True
    samples = torch.rand(2, 3, 1, 6, 6, generator=gen) * 2 - 1
    fig = image_tasks.inpaint_figure(observed, hole, samples, RANGE, ["a.png", "test[3]"], truth=observed,
                                     sampler="DDIM (eta 0), 3 steps, NFE 4")
    assert _header(fig) == ["observed", "mask", "sample 1", "sample 2", "sample 3", "truth"]
    assert len(fig.axes) == 2 * 6  # rows x columns, nothing else
    assert "DDIM" in fig._suptitle.get_text() and "mask" in fig._suptitle.get_text()
    assert [fig.axes[6 * r].get_ylabel() for r in range(2)] == ["a.png", "test[3]"]
    shown, mask = _images(fig.axes[0]), _images(fig.axes[1])
    assert np.allclose(shown[3:], image_tasks.HOLE_RGB)  # the unknown pixels are drawn as unknown
    assert np.allclose(shown[:3], image_tasks.to_display(observed[0], RANGE)[:3])  # the known ones as they are
    assert (mask[3:] == 1).all() and (mask[:3] == 0).all()  # white: filled in
    assert np.allclose(_images(fig.axes[5]), image_tasks.to_display(observed[0], RANGE))  # the truth is the input
    # no truth known: no truth column
    fig = image_tasks.inpaint_figure(observed, hole, samples, RANGE)
    assert _header(fig) == ["observed", "mask", "sample 1", "sample 2", "sample 3"] and len(fig.axes) == 10


def test_colorize_figure_labels_the_grey_observation_and_shows_the_truth_only_when_known():
    grey = torch.zeros(1, 1, 4, 4)
    samples = torch.zeros(1, 2, 3, 4, 4)
    fig = image_tasks.colorize_figure(grey, samples, RANGE, truth=torch.zeros(1, 3, 4, 4))
    assert _header(fig) == ["observed: grey", "colouring 1", "colouring 2", "truth"]
    fig = image_tasks.colorize_figure(grey, samples, RANGE)
    assert _header(fig) == ["observed: grey", "colouring 1", "colouring 2"]


def test_interpolate_figure_labels_the_end_points_and_each_weight():
    ends = torch.stack([torch.full((1, 4, 4), -1.0), torch.full((1, 4, 4), 1.0)])
    alphas = torch.linspace(0, 1, 4)
    path = torch.stack([(1 - a) * ends[0] + a * ends[1] for a in alphas])
    fig = image_tasks.interpolate_figure(ends, path, path, alphas.tolist(), RANGE, ["test[0]", "b.png"], "rk4")
    assert _header(fig) == ["x_a", "α=0", "α=0.33", "α=0.67", "α=1", "x_b"]
    assert len(fig.axes) == 2 * 6
    assert fig.axes[6].get_xlabel() == "test[0]" and fig.axes[11].get_xlabel() == "b.png"
    assert fig.axes[0].get_ylabel().startswith("ODE latents") and fig.axes[6].get_ylabel().startswith("pixels")
    assert "x_a (α = 0)" in fig._suptitle.get_text() and "rk4" in fig._suptitle.get_text()


class _Data(SimpleNamespace):
    """The few datamodule attributes an image task reads: a 3-image test split."""

    def images(self, split):
        assert split == "test"
        return (torch.arange(3 * 3 * 8 * 8, dtype=torch.int64).reshape(3, 3, 8, 8).remainder(256).to(torch.uint8),)


def _gaussian_score(x, t):
    return -x  # the exact score of N(0, I) data under the VP SDE at every t


DDIM = OmegaConf.create({"_target_": "scorelab.sampling.DDIMSampler", "steps": 2})


def test_inpaint_task_draws_the_labelled_figure_with_one_row_per_image(tmp_path):
    task = Inpaint(image=[0, 2], box=[0, 4, 8, 8], per_image=3)
    arrays, fig, summary = task.solve(_gaussian_score, VPSDE(), _Data(), DDIM, (3, 8, 8), "cpu", RANGE, seed=0)
    assert arrays["samples"].shape == (2, 3, 3, 8, 8)
    header = _header(fig)
    assert header == ["observed", "mask", "sample 1", "sample 2", "sample 3", "truth"]
    assert len(fig.axes) == 2 * (3 + 3)
    assert "DDIM" in fig._suptitle.get_text()
    assert [fig.axes[6 * r].get_ylabel() for r in range(2)] == ["test[0]", "test[2]"]
    # the truth column is the input image itself
    truth = image_tasks.to_display(torch.as_tensor(arrays["observed"][1]), RANGE)
    assert np.allclose(_images(fig.axes[11]), truth)
    path = image_tasks.save_figure(fig, tmp_path / "inpaint.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_colorize_task_leaves_out_the_truth_of_a_grey_input(tmp_path):
    from PIL import Image

    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((8, 8), 100, dtype=np.uint8)).save(grey)
    _, fig, _ = Colorize(image=str(grey), per_image=2).solve(_gaussian_score, VPSDE(), _Data(), DDIM, (3, 8, 8),
                                                               "cpu", RANGE, seed=0)
    assert _header(fig) == ["observed: grey", "colouring 1", "colouring 2"]
    _, fig, _ = Colorize(image=[1], per_image=2).solve(_gaussian_score, VPSDE(), _Data(), DDIM, (3, 8, 8), "cpu",
                                                        RANGE, seed=0)
    assert _header(fig)[-1] == "truth"


def test_interpolate_task_labels_its_end_points():
    task = Interpolate(image=[0, 1], points=3, method="euler", steps=2)
    _, fig, _ = task.solve(_gaussian_score, VPSDE(), _Data(), None, (3, 8, 8), "cpu", RANGE, seed=0)
    assert _header(fig) == ["x_a", "α=0", "α=0.5", "α=1", "x_b"]
    assert "euler, 2 steps each way" in fig._suptitle.get_text()


# --- sampler descriptions ---------------------------------------------------------------------------------------
def test_a_pc_sampler_is_described_by_its_predictor_and_corrector():
    text = PCSampler(ReverseDiffusion(), Langevin(snr=0.16), steps=1000).describe()
    assert text == "PC: reverse diffusion + Langevin (snr 0.16), 1000 steps"
    assert PCSampler(EulerMaruyama(), steps=30).describe() == "Euler–Maruyama, no corrector, 30 steps"
    assert PCSampler(Ancestral(), steps=5).describe().startswith("ancestral")
    assert PCSampler(NoPredictor(), AnnealedLangevin(0.2, n_steps=5), steps=9).describe() == \
        "annealed Langevin x5 (snr 0.2), no predictor, 9 steps"
    assert ODESampler("rk4", steps=50).describe() == "probability-flow ODE, rk4, 50 steps"
    assert DPMSolverPP(39, "2m_sde").describe() == "SDE-DPM-Solver++(2M), 39 steps"
    assert describe_sampler(lambda *a: None) == "function"  # not a scorelab sampler: its class name


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "conf" / "sampler").glob("*.yaml")))
def test_every_configured_sampler_has_a_description_that_is_not_its_class_name(name):
    sampler = instantiate(OmegaConf.load(ROOT / "conf" / "sampler" / f"{name}.yaml"))
    text = sampler.describe()
    assert type(sampler).__name__ not in text and ("steps" in text or "rtol" in text), text


def test_the_toy_sample_picture_is_titled_by_the_sampler(tmp_path, monkeypatch):
    from omegaconf import open_dict

    from scorelab.cli import sample
    from scorelab.domains import Points

    from .platform_utils import make_cfg

    titles = []
    monkeypatch.setattr(Points, "preview", lambda self, x, path, title=None: titles.append(title) or Path(path))
    cfg = make_cfg(tmp_path, ["model=oracle", "data=toy_two_modes", "sampler=pc", "sampler.steps=3", "n_samples=20",
                              "batch_size=20", "progress=false"], config_name="sample")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
    sample(cfg)
    assert titles == ["PC: reverse diffusion + Langevin (snr 0.16), 3 steps, NFE 5"]


# --- teaching pictures --------------------------------------------------------------------------------------------
def _field(scale: float = 1.0):
    sde, oracle = VPSDE(), eight_gaussians().oracle(VPSDE())
    model = oracle if scale == 1.0 else (lambda x, t: scale * oracle(x, t))
    return score_field(model, sde, [0.1, 1.0], limit=3.0, n=5, exact_fn=oracle), oracle


def test_the_oracles_score_field_has_no_empty_error_panels():
    field, oracle = _field()
    assert model_is_exact(field)
    fig = score_field_figure(field, oracle)
    assert len(fig.axes) == 2  # one row (the exact score), no duplicate row, no error row or colour bars
    for ax in fig.axes:
        assert ax.get_images() == [] or float(np.abs(_images(ax)).max()) > 0  # no all-zero panel
        assert "exact" in ax.get_title()
    assert "the model is the exact score" in fig._suptitle.get_text()


def test_a_model_with_errors_keeps_its_exact_row_and_error_panels():
    field, oracle = _field(scale=1.3)
    assert not model_is_exact(field)
    fig = score_field_figure(field, oracle)
    titles = [ax.get_title() for ax in fig.axes]
    assert sum(t.startswith("noise-prediction error") for t in titles) == 2
    assert sum(t.startswith("exact score") for t in titles) == 2
    errors = [ax for ax in fig.axes if ax.get_title().startswith("noise-prediction error")]
    assert all(float(_images(ax).max()) > 0 for ax in errors)


def test_the_trajectories_title_names_the_sampler():
    sde, oracle = VPSDE(), eight_gaussians().oracle(VPSDE())
    sampler = PCSampler(EulerMaruyama(), steps=4)
    recording = record_paths(sampler, oracle, sde, (2,), range(6))
    fig = trajectories_figure(recording, 3.0, 6, sampler=sampler.describe())
    assert fig.axes[0].get_title().startswith("Euler–Maruyama, no corrector, 4 steps\n6 reverse paths")


# --- the few-step benchmark's plot ---------------------------------------------------------------------------------
def test_the_fast_sampler_plot_shows_the_default_sampler_boldly_with_the_legend_outside_the_axes():
    bench = load_bench("fast_samplers")
    bar = {"mode": 0.003, "ed": 1e-4, "gap": 0.02}
    curves = {name: [{"nfe": n, "mode": 0.1 / n, "ed": 1.0 / n, "gap": 1.0 / n} for n in (4, 10, 40)]
              for name in bench.LINEUP}
    data = {"vp / two_modes": {"pc": bar, "floor": bar, "curves": curves}}
    fig = bench.plot_figure(data)
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1  # no legend over the data
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[0] == bench.DEFAULT and "(default)" in bench.DEFAULT
    assert len(labels) <= 9  # a few highlighted samplers, one entry for the rest, the two bars
    widths = {line.get_color(): line.get_linewidth() for line in fig.axes[0].get_lines()}
    assert widths[bench.HIGHLIGHT[bench.DEFAULT]] == max(widths.values())
    assert min(t.get_fontsize() for t in fig.legends[0].get_texts()) >= 11
    assert min(ax.title.get_fontsize() for ax in fig.axes) >= 12


def test_the_recipe_plot_names_each_line_at_its_end_and_draws_the_default_boldly():
    bench = load_bench("recipes")
    best = {recipe: [{"nfe": n, "fd_mnist": fd + n / 100, "solver": "dpmpp_2m_edm"} for n in (10, 20, 40)]
            for recipe, fd in (("vp_dsm", 300.0), ("edm", 80.0), ("flow", 40.0), ("vp_v_minsnr", 41.0))}
    fig = bench.plot_figure(best, 9.0, 2000)
    ax = fig.axes[0]
    assert ax.get_legend() is None and not fig.legends
    names = [t.get_text() for t in ax.texts]
    assert {"vp_dsm", "edm", "flow (default)", "vp_v_minsnr", "real test digits"} == set(names)
    widths = [line.get_linewidth() for line in ax.get_lines()[:4]]
    assert widths[2] == max(widths) > widths[0]  # flow, the default
    fig.canvas.draw()  # the names of close lines (40 and 41) do not overlap
    boxes = {t.get_text(): t.get_window_extent() for t in ax.texts}
    assert not boxes["flow (default)"].overlaps(boxes["vp_v_minsnr"])
