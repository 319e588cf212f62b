"""Pictures that teach (``sample.py task=teach``): the data behind each picture is right, the files are valid, and the
run's samples do not change."""
from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image

from scorelab.cli import sample
from scorelab.cli.errors import UserError
from scorelab.data.sample_files import ImageSet
from scorelab.data.toy import GaussianMixture, eight_gaussians
from scorelab.metrics.evaluation import to_uint8
from scorelab.sampling import (
    DDIMSampler,
    DPMSolverPP,
    EDMSampler,
    EulerMaruyama,
    Langevin,
    ODESampler,
    PCSampler,
    ReverseDiffusion,
)
from scorelab.sampling.seeded import seeded_batches
from scorelab.sde import VESDE, VPSDE
from scorelab.tasks import Teach
from scorelab.viz.teaching import (
    StateRecorder,
    denoising_progression,
    record_paths,
    score_field,
    strip_times,
    write_teaching_pictures,
)
from scorelab.viz.teaching_plots import epsilon_error, frame_indices, highlighted, strip_grid

from .platform_utils import make_cfg

PLAIN = ["model=oracle", "data=toy_eight_gaussians", "sampler=euler_maruyama", "sampler.steps=6", "n_samples=50",
       "batch_size=50"]
TOY = PLAIN + ["task=teach", "task.cloud=40", "task.paths=10", "task.frames=5", "task.grid=5", "task.times=[0.1,1.0]"]


def _sample_cfg(tmp_path, name: str, overrides: list[str]):
    cfg = make_cfg(tmp_path, overrides + ["progress=false"], config_name="sample")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / name)
    return cfg


def _valid(path, kind: str) -> Image.Image:
    with Image.open(path) as image:
        image.verify()
    image = Image.open(path)
    assert image.format == kind
    return image


# --- the data of the pictures -------------------------------------------------------------------------------------
def _isotropic_mixture_score(x: np.ndarray, weights, means, std: float, a: float, s: float) -> np.ndarray:
    """Closed form: p_t = sum_k w_k N(a mu_k, (a^2 std^2 + s^2) I), score = sum_k r_k (a mu_k - x) / var."""
    var = a**2 * std**2 + s**2
    diff = a * means[None] - x[:, None]  # [B, K, 2]
    logits = np.log(weights)[None] - (diff**2).sum(-1) / (2 * var)
    r = np.exp(logits - logits.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return (r[..., None] * diff / var).sum(1)


def test_the_score_field_of_the_oracle_is_the_mixtures_closed_form_at_each_grid_point():
    mixture, sde = eight_gaussians(radius=2.0, std=0.2), VPSDE()
    oracle = mixture.oracle(sde)
    field = score_field(oracle, sde, [0.05, 0.5], limit=3.0, n=5, exact_fn=oracle)
    assert field.model.shape == (2, 5, 5, 2) and torch.equal(field.model, field.exact)
    np.testing.assert_allclose(field.xs.numpy(), np.linspace(-3, 3, 5), atol=1e-6)
    means = mixture.means.numpy()
    for k, t in enumerate([0.05, 0.5]):
        tt = torch.tensor([t])
        a, s = float(sde.mean_coeff(tt)), float(sde.marginal_std(tt))
        assert float(field.std[k]) == pytest.approx(s, rel=1e-6)
        for i in range(5):
            for j in range(5):  # entry [k, i, j] is the point (xs[j], xs[i])
                point = np.array([[field.xs[j].item(), field.xs[i].item()]])
                expected = _isotropic_mixture_score(point, np.full(8, 1 / 8), means, 0.2, a, s)[0]
                np.testing.assert_allclose(field.model[k, i, j].numpy(), expected, rtol=1e-4, atol=1e-4)
    assert float(epsilon_error(field).abs().max()) == 0.0


def test_the_error_map_is_the_models_noise_prediction_error():
    mixture, sde = eight_gaussians(), VPSDE()
    oracle = mixture.oracle(sde)
    field = score_field(lambda x, t: 1.5 * oracle(x, t), sde, [0.2, 1.0], 3.0, 4, exact_fn=oracle)
    expected = 0.5 * field.std.view(-1, 1, 1) * field.exact.norm(dim=-1)
    torch.testing.assert_close(epsilon_error(field), expected)


def test_the_tweedie_estimate_of_a_gaussian_is_its_posterior_mean():
    """Data N(mu, v I): E[x0 | x_t] = mu + a v / (a^2 v + s^2) (x_t - a mu) (Efron 2011)."""
    mu, v, sde = torch.tensor([1.0, -2.0]), 0.3, VESDE(sigma_min=0.01, sigma_max=5.0)
    oracle = GaussianMixture([1.0], [mu.tolist()], stds=v**0.5).oracle(sde)
    recording = record_paths(ODESampler("euler", steps=5), oracle, sde, (2,), [0, 1, 2])
    progression = denoising_progression(recording, oracle, sde)
    assert progression.states.shape == progression.denoised.shape == (3, len(recording.times), 2)
    for c, t in enumerate(recording.times.tolist()):
        tt = torch.tensor([t])
        a, s = float(sde.mean_coeff(tt)), float(sde.marginal_std(tt))
        x = progression.states[:, c]
        torch.testing.assert_close(progression.denoised[:, c], mu + a * v / (a**2 * v + s**2) * (x - a * mu),
                                   rtol=1e-4, atol=1e-4)


def test_the_recorder_keeps_one_state_per_target_time_and_copies_it():
    recorder = StateRecorder(times=[0.75, 0.5, 0.25])
    x = torch.zeros(2, 3)
    for t in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.1, 0.05):
        x += 1
        recorder({"i": 0, "t": t, "x": x, "x_mean": x})
    assert recorder.times == [0.7, 0.5, 0.1]
    assert [float(s[0, 0]) for s in recorder.states] == [3.0, 5.0, 7.0]  # copies, not the live tensor


def test_bold_paths_reach_every_component_first():
    assert highlighted(np.array([0, 0, 1, 2, 1, 2]), 4).tolist() == [0, 1, 2, 3]
    assert highlighted(np.array([3, 3, 3, 1]), 2).tolist() == [0, 3]


def test_frames_are_thinned_evenly_keeping_both_ends():
    assert frame_indices(41, 5) == [0, 10, 20, 30, 40]
    assert frame_indices(3, 60) == [0, 1, 2]


SAMPLERS = {
    "pc": PCSampler(ReverseDiffusion(), Langevin(snr=0.16), steps=4),
    "euler_maruyama": PCSampler(EulerMaruyama(), steps=4, denoise=False),
    "ode": ODESampler("heun", steps=4),
    "ode_adaptive": ODESampler("dopri5", rtol=1e-3, atol=1e-3),
    "dpmpp_2m_sde": DPMSolverPP(steps=4, variant="2m_sde"),
    "ddim": DDIMSampler(steps=4),
    "edm": EDMSampler(steps=3),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_recorded_paths_start_at_the_prior_and_end_at_the_samples_of_any_sampler(name):
    sampler, mixture, sde = SAMPLERS[name], eight_gaussians(), VPSDE()
    oracle, seeds = mixture.oracle(sde), [5, 6, 7]
    recording = record_paths(sampler, oracle, sde, (2,), seeds)
    direct = next(seeded_batches(sampler, oracle, sde, (2,), seeds, len(seeds)))
    assert torch.equal(recording.samples, direct.x) and recording.nfe == direct.nfe
    assert torch.equal(recording.states[-1], recording.samples)
    assert recording.states.shape[1:] == (3, 2) and len(recording.times) == len(recording.states)
    assert recording.times[0] == sde.T and bool((recording.times[1:] < recording.times[:-1]).all())
    if name in ("ode", "ddim"):  # deterministic: starting from the recorded x(T) gives the samples again
        again, _ = sampler(oracle, sde, x_init=recording.states[0].clone())
        torch.testing.assert_close(again, recording.samples)


# --- sample.py ----------------------------------------------------------------------------------------------------
def test_teach_writes_valid_pictures_and_leaves_the_samples_unchanged(tmp_path):
    plain = np.load(sample(_sample_cfg(tmp_path, "plain", PLAIN)))["x"]
    taught = np.load(sample(_sample_cfg(tmp_path, "taught", TOY)))["x"]
    assert np.array_equal(plain, taught)
    out = tmp_path / "taught"
    assert not (tmp_path / "plain" / "score_field.png").exists()
    _valid(out / "score_field.png", "PNG")
    _valid(out / "trajectories.png", "PNG")
    gif = _valid(out / "marginals.gif", "GIF")
    # 6 Euler-Maruyama steps after the prior, the denoised mean at the end: 8 states, thinned to 5 frames
    assert gif.n_frames == 5
    # the recorded paths are the run's own first samples (drawn again on the same seeds, in a smaller batch)
    cfg = _sample_cfg(tmp_path, "again", PLAIN)
    from hydra.utils import instantiate

    sde = instantiate(cfg.sde)
    recording = record_paths(instantiate(cfg.sampler), instantiate(cfg.data).mixture.oracle(sde), sde, (2,),
                             range(40))
    assert len(recording.times) == 8
    np.testing.assert_allclose(recording.states[-1].numpy(), plain[:40], atol=1e-5)


def test_2d_data_without_an_exact_score_get_the_model_row_and_paths_over_the_samples(tmp_path):
    """A 2-D data module without a mixture (e.g. points from a file): no exact row, paths coloured by angle."""
    sde = VPSDE()
    oracle = eight_gaussians().oracle(sde)
    from scorelab.domains import Points

    trained = SimpleNamespace(sde=sde, datamodule=SimpleNamespace(sample_shape=(2,), domain=Points(2)))
    settings = Teach(cloud=30, paths=5, frames=3, grid=4, times=[0.5]).teaching(sde.T)
    paths = write_teaching_pictures(settings, 3, trained, ODESampler("euler", steps=4), oracle, (2,), "cpu", tmp_path)
    assert [p.name for p in paths] == ["score_field.png", "trajectories.png", "marginals.gif"]
    assert _valid(tmp_path / "marginals.gif", "GIF").n_frames == 3
    _valid(tmp_path / "score_field.png", "PNG")


@pytest.fixture(scope="module")
def image_ckpt(tiny_image_run):
    """The suite's tiny image checkpoint (``tests/conftest.py``): a model trained for two steps on random 16x16
    images."""
    return tiny_image_run.ckpt


def test_teach_writes_a_denoising_strip_of_the_first_images(tmp_path, image_ckpt):
    over = [f"ckpt_path={image_ckpt}", "n_samples=3", "sampler=euler_maruyama", "sampler.steps=5", "task=teach",
            "task.images=2", "task.columns=4"]
    cfg = _sample_cfg(tmp_path, "images", over)
    folder = sample(cfg)
    strip = _valid(tmp_path / "images" / "denoising_strip.png", "PNG")
    assert strip.size[0] > 4 * 16 and strip.size[1] > 4 * 16
    from scorelab.cli.sample import load_trained

    trained = load_trained(str(image_ckpt))
    from hydra.utils import instantiate

    sampler = instantiate(cfg.sampler)
    score = trained.score.eval()
    recording = record_paths(sampler, score, trained.sde, (3, 16, 16), [0, 1], times=strip_times(1.0, 4))
    progression = denoising_progression(recording, score, trained.sde)
    # T, the first states at or below t = 2/3 and 1/3 (of a 5-step uniform grid: 0.6, 0.2), the sample
    assert len(progression.times) == 4 and progression.states.shape == (2, 4, 3, 16, 16)
    np.testing.assert_allclose(progression.times[1:3].numpy(), [0.6, 0.2], atol=1e-3)
    grid = strip_grid(progression, tuple(trained.datamodule.data_range))
    assert grid.shape == (3, 2 * 2 * (16 + 2) + 2, 4 * (16 + 2) + 2)
    images = ImageSet(folder).read(0, 2)  # [2, H, W, C] uint8 of the run itself
    assert torch.equal(to_uint8(progression.states[:, -1], tuple(trained.datamodule.data_range)).cpu(), images)


@pytest.mark.parametrize("override, message", [
    ("task.times=[0.0,0.5]", "task.times must be a non-empty list of fractions of T in (0, 1]"),
    ("task.times=[a,b]", "task.times must be a list"),
    ("task.grid=1", "task.grid must be an integer >= 2"),
    ("task.frames=many", "task.frames must be an integer >= 2"),
    ("task.paths=100", "task.paths (100) cannot exceed task.cloud (40)"),
    ("+task.colour=red", "task.colour is not a setting"),
])
def test_bad_teaching_values_give_one_clear_message(tmp_path, override, message):
    cfg = _sample_cfg(tmp_path, "bad", TOY + [override])
    with pytest.raises(UserError, match="^" + re.escape(message)):
        sample(cfg)
    assert not (tmp_path / "bad" / "samples.npz").exists()


def test_teach_refuses_points_that_are_not_2d(tmp_path):
    cfg = _sample_cfg(tmp_path, "one_d", ["model=oracle", "data=toy_custom", "data.mixture.weights=[1.0]",
                                          "data.mixture.means=[[0.0]]", "data.mixture.covs=[[[1.0]]]",
                                          "n_samples=4", "task=teach"])
    with pytest.raises(UserError, match=r"task=teach draws 2-D points and images; these samples have shape \(1,\)"):
        sample(cfg)
