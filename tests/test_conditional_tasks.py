"""Inpainting, colourisation and ODE interpolation (Song et al. 2021, App. I.2, I.3, Sec. 4.3) against exact answers:
a Gaussian "image" whose conditionals, probability-flow map and colour-space score are known in closed form."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from scorelab.cli import sample
from scorelab.cli.errors import run_or_exit
from scorelab.core.errors import UserError
from scorelab.core.rng import PerSampleGenerator
from scorelab.data import GaussianMixture
from scorelab.sampling import (
    DDIMSampler,
    DEISSampler,
    DPMSolverPP,
    EDMSampler,
    EulerMaruyama,
    Langevin,
    ODESampler,
    PCSampler,
    ReverseDiffusion,
    UniPCSampler,
)
from scorelab.sde import VESDE, VPSDE
from scorelab.tasks import Colorize
from scorelab.tasks.conditional import (
    KnownValues,
    color_matrix,
    color_space_score,
    colorize,
    decode,
    encode,
    from_color_space,
    inpaint,
    slerp,
    to_color_space,
)

from .platform_utils import make_cfg

SHAPE = (1, 4, 4)  # a Gaussian "image" of 16 pixels
KNOWN = torch.zeros(SHAPE, dtype=torch.bool)
KNOWN[..., :2] = True  # the left two columns are observed, the right two filled in


def image_gaussian(lengthscale: float = 1.0, nugget: float = 0.05) -> GaussianMixture:
    """One Gaussian over 4 x 4 pixels with a smooth (squared-exponential) covariance: neighbours correlate."""
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], 1).double()
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    cov = 0.5 * torch.exp(-d2 / (2 * lengthscale**2)) + nugget * torch.eye(16, dtype=torch.float64)
    mean = torch.linspace(-0.4, 0.4, 16, dtype=torch.float64)
    return GaussianMixture([1.0], mean[None], covs=cov[None])


def image_score(mixture: GaussianMixture, sde):
    """The oracle score on images ``[B, *SHAPE]`` (the mixture works on flat vectors)."""
    oracle = mixture.oracle(sde)
    return lambda x, t: oracle(x.flatten(1), t).reshape(x.shape)


def exact_conditional(mixture: GaussianMixture, y: torch.Tensor, known: torch.Tensor):
    """Mean and covariance of the unknown pixels given the known ones (Schur complement)."""
    k, u = known.flatten(), ~known.flatten()
    mu, cov = mixture.means[0], mixture.covs[0]
    gain = cov[u][:, k] @ torch.linalg.inv(cov[k][:, k])
    return mu[u] + gain @ (y.flatten()[k] - mu[k]), cov[u][:, u] - gain @ cov[k][:, u]


def replacement_law(mixture: GaussianMixture, sde, y: torch.Tensor, known: torch.Tensor, steps: int, eps: float):
    """The exact law of the unknown pixels after Euler-Maruyama with replacement (``PCSampler(EulerMaruyama())``,
    uniform grid, denoised last step), by propagating mean and covariance through the linear Gaussian steps:
    ``x' = x - (f x - g^2 C_t^{-1} (x - a mu)) dt + g sqrt(dt) z`` and then the known part ``~ N(a' y, s'^2)``."""
    k, u = known.flatten(), ~known.flatten()
    mu, cov, eye = mixture.means[0], mixture.covs[0], torch.eye(16, dtype=torch.float64)
    ts = sde.T + (eps - sde.T) * torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)

    def project(m, p, t):
        a, s = float(sde.mean_coeff(t[None])), float(sde.marginal_std(t[None]))
        m, p = m.clone(), p.clone()
        m[k], p[k, :], p[:, k] = a * y.flatten()[k], 0.0, 0.0
        p[k, k] = s**2
        return m, p

    m, p = project(torch.zeros(16, dtype=torch.float64), sde.prior_std**2 * eye, ts[0])
    for i in range(steps):
        t, dt = ts[i:i + 1], float(ts[i] - ts[i + 1])
        a, s = float(sde.mean_coeff(t)), float(sde.marginal_std(t))
        f = float(sde.sde(torch.ones(1, 1, dtype=torch.float64), t)[0])  # the drift is f(t) x
        g2 = float(sde.sde(torch.zeros(1, 1, dtype=torch.float64), t)[1]) ** 2
        precision = torch.linalg.inv(a**2 * cov + s**2 * eye)
        step = eye - (f * eye + g2 * precision) * dt
        m, p = step @ m + g2 * dt * precision @ (a * mu), step @ p @ step.T
        if i < steps - 1:  # the last step returns its noise-free mean
            m, p = project(m, p + g2 * dt * eye, ts[i + 1])
    return m[u], p[u][:, u]


SAMPLERS = {
    "euler_maruyama": PCSampler(EulerMaruyama(), steps=30),
    "pc_langevin": PCSampler(ReverseDiffusion(), Langevin(snr=0.16), steps=15),
    "ode_rk4": ODESampler("rk4", steps=8),
    "ddim_eta1": DDIMSampler(steps=10, eta=1.0),
    "dpmpp_2m_sde": DPMSolverPP(steps=10, variant="2m_sde"),
    "dpmpp_3m": DPMSolverPP(steps=10, variant="3m"),
    "dpmpp_2s": DPMSolverPP(steps=5, variant="2s"),
    "unipc": UniPCSampler(steps=10),
    "deis": DEISSampler(steps=10),
    "edm_churn": EDMSampler(steps=5, s_churn=10.0),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_known_pixels_are_the_observed_ones_and_steer_the_rest(name):
    sampler, sde, mixture = SAMPLERS[name], VPSDE(), image_gaussian()
    score = image_score(mixture, sde)
    n, delta = 256, torch.where(KNOWN, 0.3, 0.0).double()
    mean = mixture.means[0].reshape(SHAPE)
    means = {}
    for sign in (1, -1):
        y = (mean + sign * delta).expand(n, *SHAPE).contiguous()
        x, nfe = inpaint(sampler, score, sde, y, KNOWN, generator=torch.Generator().manual_seed(0))
        assert torch.equal(x[:, KNOWN], y[:, KNOWN])  # exactly the observed values
        assert torch.isfinite(x).all() and not torch.equal(x[:, ~KNOWN], y[:, ~KNOWN])
        means[sign] = x[:, ~KNOWN].mean(0)
    # The replacement adds no score evaluations.
    _, plain_nfe = sampler(score, sde, (2, *SHAPE), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert nfe == plain_nfe
    # The known pixels steer the unknown ones: observing +delta rather than -delta moves them along the exact
    # conditional's regression 2 Sigma_uk Sigma_kk^-1 delta_k. With the same seeds the noise cancels, so without the
    # replacement during the steps (unknown pixels sampled unconditionally) the shift would be exactly 0. The method
    # shrinks the regression (to 0.63 of it for Euler-Maruyama as N -> oo, by the exact law below; the ODE solvers
    # shrink it more, docs/conditional_tasks.md), so only its direction and that it is far from 0 are asserted here.
    exact = exact_conditional(mixture, mean + delta, KNOWN)[0] - exact_conditional(mixture, mean - delta, KNOWN)[0]
    shift = means[1] - means[-1]
    assert torch.nn.functional.cosine_similarity(shift, exact, dim=0) > 0.9
    assert 0.1 < float(shift.norm() / exact.norm()) < 1.2


def test_inpainting_follows_the_exact_law_of_the_replacement_sampler_which_is_not_the_exact_conditional():
    """With the exact score on a Gaussian, Euler-Maruyama with replacement has a Gaussian output law computable in
    closed form (mean and covariance pushed through its linear steps). The samples follow it within standard error.
    That law is not the exact conditional (Schur complement): the paper's replacement conditions each step on a fresh
    draw of the noisy known pixels, x_known(t), instead of on y, and the gap does not close with more steps."""
    sde, mixture, steps, n = VPSDE(), image_gaussian(), 100, 3000
    y = mixture.sample(1, generator=torch.Generator().manual_seed(5), dtype=torch.float64).reshape(SHAPE)
    sampler = PCSampler(EulerMaruyama(), steps=steps)
    x, _ = inpaint(sampler, image_score(mixture, sde), sde, y.expand(n, *SHAPE).contiguous(), KNOWN,
                   generator=torch.Generator().manual_seed(1))
    got = x[:, ~KNOWN]
    mean, cov = replacement_law(mixture, sde, y, KNOWN, steps, sampler.eps)
    se = (cov.diagonal() / n).sqrt()
    assert ((got.mean(0) - mean).abs() / se).max() < 4.5
    whiten = torch.linalg.inv(torch.linalg.cholesky(cov))
    w = (got - got.mean(0)) @ whiten.T
    white_cov = w.T @ w / (n - 1)  # ~ I: SE 1/sqrt(n) off the diagonal, sqrt(2/n) on it
    assert (white_cov - torch.eye(8, dtype=torch.float64)).abs().max() < 5 * math.sqrt(2 / n)
    # The gap to the exact conditional, in the exact law itself (no sampling error): more than twice the tolerance
    # above (4.5 SE), so samples that pass that check would fail the same check against the exact conditional; and
    # the same with 10x more steps (a property of the method, not of the discretisation).
    exact_mean, exact_cov = exact_conditional(mixture, y, KNOWN)
    sd = exact_cov.diagonal().sqrt()
    gap = ((mean - exact_mean) / sd).abs().max()
    assert gap > 2 * 4.5 / math.sqrt(n)
    finer_mean, _ = replacement_law(mixture, sde, y, KNOWN, 10 * steps, sampler.eps)
    assert ((finer_mean - exact_mean) / sd).abs().max() > 0.8 * gap


def test_replacement_is_exact_when_the_unknown_pixels_are_independent_of_the_known():
    sde, steps, n = VPSDE(), 100, 2000
    base = image_gaussian()
    cov = base.covs[0].clone()
    k, u = KNOWN.flatten(), ~KNOWN.flatten()
    cov[k.nonzero(), u.nonzero().T] = 0.0
    cov[u.nonzero(), k.nonzero().T] = 0.0
    mixture = GaussianMixture([1.0], base.means, covs=cov[None])
    y = torch.full(SHAPE, 2.0, dtype=torch.float64)  # far from the mean: would pull correlated pixels
    x, _ = inpaint(PCSampler(EulerMaruyama(), steps=steps), image_score(mixture, sde), sde,
                   y.expand(n, *SHAPE).contiguous(), KNOWN, generator=torch.Generator().manual_seed(2))
    mean, cond_cov = exact_conditional(mixture, y, KNOWN)
    assert torch.allclose(mean, base.means[0][u]) and torch.allclose(cond_cov, cov[u][:, u])
    se = (cond_cov.diagonal() / n).sqrt()
    # Euler-Maruyama's own discretisation error at 100 steps is O(1/N) of the variance, within the bounds.
    assert ((x[:, ~KNOWN].mean(0) - mean).abs() / se).max() < 4.5
    assert (x[:, ~KNOWN].var(0) / cond_cov.diagonal() - 1).abs().max() < 5 * math.sqrt(2 / n) + 0.02


def test_per_sample_seeds_hold_under_replacement():
    sde, mixture = VPSDE(), image_gaussian()
    score = image_score(mixture, sde)
    y = mixture.sample(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64).reshape(3, *SHAPE)
    for sampler in (SAMPLERS["euler_maruyama"], SAMPLERS["dpmpp_2m_sde"]):
        batch, _ = inpaint(sampler, score, sde, y, KNOWN, generator=PerSampleGenerator([7, 8, 9]))
        alone, _ = inpaint(sampler, score, sde, y[1:2], KNOWN, generator=PerSampleGenerator([8]))
        assert torch.allclose(batch[1:2], alone, atol=1e-12)


def test_samplers_that_cannot_replace_are_refused_by_name():
    sde, mixture = VPSDE(), image_gaussian()
    y = torch.zeros(2, *SHAPE, dtype=torch.float64)
    with pytest.raises(UserError, match=r"ODESampler\(method='dopri5'.*adaptive"):
        inpaint(ODESampler("dopri5"), image_score(mixture, sde), sde, y, KNOWN)

    class Plain:
        def __call__(self, score_fn, sde, shape=None, generator=None, device=None, dtype=None, callback=None,
                     x_init=None):
            return x_init, 0

        def __repr__(self):
            return "Plain()"

    with pytest.raises(UserError, match=r"Plain\(\) cannot replace known values"):
        inpaint(Plain(), image_score(mixture, sde), sde, y, KNOWN)
    with pytest.raises(ValueError, match="known must broadcast"):
        KnownValues(sde, y, torch.ones(3, 3, dtype=torch.bool))


# --- colour ------------------------------------------------------------------------------------------
def test_the_colour_map_is_orthogonal_with_the_scaled_mean_as_its_grey_channel():
    m = color_matrix(torch.float64)
    assert torch.allclose(m @ m.T, torch.eye(3, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(m[0], torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64), atol=1e-15)
    rgb = torch.randn(4, 3, 5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = to_color_space(rgb)
    assert torch.allclose(c[:, 0], math.sqrt(3) * rgb.mean(1), atol=1e-14)
    assert torch.allclose(from_color_space(c), rgb, atol=1e-14)
    assert torch.allclose(c.pow(2).sum(1), rgb.pow(2).sum(1), atol=1e-13)  # orthogonal: norms kept per pixel


def test_the_colour_space_score_is_the_exact_score_of_the_transformed_data():
    """If x ~ N(mu, Sigma) then c = M x ~ N(M mu, M Sigma M^T): its oracle score must equal M s(M^T c)."""
    sde = VPSDE()
    g = torch.Generator().manual_seed(3)
    d = 3 * 2 * 2
    root = torch.randn(d, d, generator=g, dtype=torch.float64)
    rgb_gaussian = GaussianMixture([1.0], torch.randn(1, d, generator=g, dtype=torch.float64),
                                   covs=(root @ root.T / d + 0.1 * torch.eye(d, dtype=torch.float64))[None])
    big_m = torch.kron(color_matrix(torch.float64), torch.eye(4, dtype=torch.float64))  # channels-first flattening
    c_gaussian = GaussianMixture([1.0], rgb_gaussian.means @ big_m.T,
                                 covs=(big_m @ rgb_gaussian.covs[0] @ big_m.T)[None])
    c = torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.rand(5, generator=g, dtype=torch.float64)
    rgb_score = lambda x, t: rgb_gaussian.oracle(sde)(x.flatten(1), t).reshape(x.shape)  # noqa: E731
    expected = c_gaussian.oracle(sde)(c.flatten(1), t).reshape(c.shape)
    assert torch.allclose(color_space_score(rgb_score)(c, t), expected, atol=1e-10)


def test_colorize_keeps_the_grey_level_and_restores_colour():
    sde = VPSDE()
    g = torch.Generator().manual_seed(4)
    d = 3 * 2 * 2
    root = torch.randn(d, d, generator=g, dtype=torch.float64)
    mixture = GaussianMixture([1.0], torch.zeros(1, d, dtype=torch.float64),
                              covs=(root @ root.T / d + 0.05 * torch.eye(d, dtype=torch.float64))[None])
    score = lambda x, t: mixture.oracle(sde)(x.flatten(1), t).reshape(x.shape)  # noqa: E731
    rgb = mixture.sample(6, generator=g, dtype=torch.float64).reshape(6, 3, 2, 2)
    grey = rgb.mean(1, keepdim=True)
    out, _ = colorize(SAMPLERS["dpmpp_2m_sde"], score, sde, grey, generator=torch.Generator().manual_seed(0))
    assert out.shape == rgb.shape
    assert torch.allclose(out.mean(1, keepdim=True), grey, atol=1e-12)
    assert (out - out.mean(1, keepdim=True)).abs().max() > 0.1  # colour, not three copies of the grey
    with pytest.raises(ValueError, match="grey must have shape"):
        colorize(SAMPLERS["dpmpp_2m_sde"], score, sde, rgb)


# --- the probability-flow ODE and slerp ------------------------------------------------------------------
@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_encoding_is_the_exact_gaussian_flow_map_and_decoding_inverts_it(sde):
    """For N(mu, Sigma) the probability-flow ODE moves w = U^T (x - a mu) (eigenbasis of Sigma) as
    dw/dt = v'/(2v) w with v = a^2 lambda + s^2, so x(T) = a_T mu + U diag(sqrt(v_T / v_eps)) U^T (x - a_eps mu)."""
    mixture, eps = image_gaussian(), 1e-3
    score = image_score(mixture, sde)
    x = mixture.sample(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64).reshape(5, *SHAPE)
    solver = {"method": "dopri5", "rtol": 1e-8, "atol": 1e-8}  # global error ~ 10-100x the local tolerance
    z, nfe = encode(score, sde, x, eps=eps, **solver)
    lam, vec = torch.linalg.eigh(mixture.covs[0])
    times = torch.tensor([eps, sde.T], dtype=torch.float64)
    a, s = sde.mean_coeff(times), sde.marginal_std(times)
    v = a[:, None] ** 2 * lam + s[:, None] ** 2
    mu = mixture.means[0]
    expected = a[1] * mu + ((x.flatten(1) - a[0] * mu) @ vec * (v[1] / v[0]).sqrt()) @ vec.T
    assert nfe > 0 and torch.allclose(z.flatten(1), expected, atol=1e-5 * (1 + expected.abs().max()))
    back, _ = decode(score, sde, z, eps=eps, **solver)
    assert torch.allclose(back, x, atol=1e-5)
    if isinstance(sde, VPSDE):  # a fixed-step solver: RK4's error per step ~ (h rate)^5 / 120 with rate <= beta/2
        z_rk4, nfe_rk4 = encode(score, sde, x, eps=eps, method="rk4", steps=100)
        assert nfe_rk4 == 400 and torch.allclose(z_rk4.flatten(1), expected, atol=1e-4 * (1 + expected.abs().max()))


def test_slerp_hits_both_ends_exactly_and_keeps_equal_norms():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    z1 = z1 / z1.flatten(1).norm(dim=1)[:, None, None, None] * z0.flatten(1).norm(dim=1)[:, None, None, None]
    alphas = torch.linspace(0, 1, 7)
    path = slerp(z0, z1, alphas)
    assert path.shape == (3, 7, 2, 4, 4)
    assert torch.equal(path[:, 0], z0) and torch.equal(path[:, -1], z1)
    norms = path.flatten(2).norm(dim=2)
    assert torch.allclose(norms, norms[:, :1].expand_as(norms), rtol=1e-5)
    # the angle from z0 grows linearly: alpha * theta
    f0, fp = z0.flatten(1).double(), path.flatten(2).double()
    theta = torch.arccos((f0 * z1.flatten(1).double()).sum(1) / f0.norm(dim=1) ** 2)
    cos = (fp * f0[:, None]).sum(2) / (fp.norm(dim=2) * f0.norm(dim=1)[:, None])
    assert torch.allclose(torch.arccos(cos.clamp(-1, 1)), alphas.double()[None] * theta[:, None], atol=1e-3)
    # a linear path would shrink the norm in the middle; nearly parallel latents fall back to it without NaN
    assert (((z0 + z1) / 2).flatten(1).norm(dim=1) < norms[:, 3] * 0.99).all()
    same = slerp(z0, z0 * 2, alphas)
    assert torch.isfinite(same).all() and torch.allclose(same[:, 3], z0 * 1.5, atol=1e-6)


# --- the command line ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def colour_run(tiny_image_run, tmp_path_factory):
    """The suite's tiny 3-channel 16x16 image model (``tests/conftest.py``: trained for two steps, with a 4-image
    test split), and PNG inputs."""
    from PIL import Image

    root = tmp_path_factory.mktemp("colour_run")
    rng = np.random.default_rng(0)
    pngs = {}
    for name, shape in (("a", (16, 16, 3)), ("b", (16, 16, 3)), ("small", (8, 8, 3))):
        pngs[name] = root / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(pngs[name])
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 8:] = 255
    pngs["mask"] = root / "mask.png"
    Image.fromarray(mask).save(pngs["mask"])
    Image.fromarray(mask[:8]).save(root / "bad_mask.png")
    pngs["bad_mask"] = root / "bad_mask.png"
    return tiny_image_run.ckpt, pngs


def _task_cfg(tmp_path, ckpt, overrides):
    cfg = make_cfg(tmp_path, [f"ckpt_path={ckpt}", "device=cpu", "progress=false", *overrides], config_name="sample")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
    return cfg


def test_cli_inpaint_with_a_mask_png_and_with_a_box_on_test_images(tmp_path, colour_run):
    ckpt, pngs = colour_run
    npz = sample(_task_cfg(tmp_path, ckpt, ["task=inpaint", f"task.image={pngs['a']}",
                                            f"task.mask={pngs['mask']}", "task.per_image=3", "sampler=ddim",
                                            "sampler.steps=3"]))
    saved = np.load(npz)
    known = saved["known"]
    assert saved["samples"].shape == (1, 3, 3, 16, 16) and known.shape == (1, 1, 16, 16)
    assert int((~known).sum()) == 8 * 8 and not known[0, 0, 4:12, 8:].any()
    observed = np.broadcast_to(saved["observed"][:, None], saved["samples"].shape)
    mask = np.broadcast_to(known[:, None], saved["samples"].shape)
    assert np.array_equal(saved["samples"][mask], observed[mask])
    assert (tmp_path / "out" / "inpaint.png").is_file()
    summary = json.loads((tmp_path / "out" / "inpaint.json").read_text())
    assert summary["nfe"] == 4 and summary["hole_pixels"] == 64
    # test-set indices and a box; seeds continue across the rows
    npz = sample(_task_cfg(tmp_path / "box", ckpt, ["task=inpaint", "task.image=[0,3]", "task.box=[0,0,16,8]",
                                                    "task.per_image=2",
                                                    "sampler=euler_maruyama", "sampler.steps=3", "seed=10"]))
    saved = np.load(npz)
    assert saved["samples"].shape == (2, 2, 3, 16, 16) and saved["seeds"].tolist() == [[10, 11], [12, 13]]
    assert np.array_equal(saved["samples"][:, :, :, 8:], np.broadcast_to(saved["observed"][:, None, :, 8:],
                                                                          (2, 2, 3, 8, 16)))


def test_cli_colorize_and_interpolate(tmp_path, colour_run):
    ckpt, pngs = colour_run
    npz = sample(_task_cfg(tmp_path, ckpt, ["task=colorize", f"task.image={pngs['a']}", "task.per_image=2",
                                            "sampler=dpmpp_2m_sde", "sampler.steps=3"]))
    saved = np.load(npz)
    assert saved["samples"].shape == (1, 2, 3, 16, 16)
    # float32 rounding of the colour map: relative to the values (a 2-step model's colours can be far out of range)
    scale = 1.0 + np.abs(saved["samples"]).max()
    assert np.allclose(saved["samples"].mean(2), np.broadcast_to(saved["grey"][:, None, 0], (1, 2, 16, 16)),
                       atol=1e-6 * scale)
    npz = sample(_task_cfg(tmp_path / "interp", ckpt, ["task=interpolate",
                                                       f"task.image=[{pngs['a']},{pngs['b']}]",
                                                       "task.points=4", "task.steps=5"]))
    saved = np.load(npz)
    assert saved["decoded"].shape == (4, 3, 16, 16) and int(saved["nfe_encode"]) == 20
    assert np.array_equal(saved["path_latents"][0], saved["latents"][0])
    assert np.array_equal(saved["path_latents"][-1], saved["latents"][1])
    summary = json.loads((tmp_path / "interp" / "out" / "interpolate.json").read_text())
    assert len(summary["reconstruction_max_abs_error"]) == 2


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["task=inpaint", "task.image={missing}", "task.box=[0,0,4,4]"], "image not found"),
        (["task=inpaint", "task.image={small}", "task.box=[0,0,4,4]"],
         "is 8x8 pixels but the model makes 16x16 images"),
        (["task=inpaint", "task.image={a}", "task.mask={bad_mask}"], "mask {bad_mask} is 16x8 pixels"),
        (["task=inpaint", "task.image={a}"], "needs exactly one of task.mask=<png>"),
        (["task=inpaint", "task.image={a}", "task.box=[0,0,17,4]"], "must satisfy 0 <= x0 < x1 <= 16"),
        (["task=inpaint", "task.image=9", "task.box=[0,0,4,4]"], "the test set has 4 images"),
        (["task=interpolate", "task.image={a}"], "needs exactly two images"),
        (["task=inpaint", "task.image={a}", "task.box=[0,0,4,4]", "sampler=ode_adaptive"], "adaptive solver"),
        (["task=inpaint", "task.image={a}", "task.box=[0,0,4,4]", "task.per_image=0"],
         "task.per_image must be a positive integer"),
        (["task=interpolate", "task.image=[0,1]", "task.method=leapfrog"], "task.method must be one of"),
        (["task=interpolate", "task.image=[0,1]", "task.steps=0"], "task.steps must be a positive integer"),
        (["task=interpolate", "task.image=[0,1]", "task.rtol=0"], "task.rtol must be a number in"),
        (["task=inpaint", "task.image={a}", "task.box=[0,0,4,4]", "+task.colour=1"],
         "task.colour is not a setting of scorelab.tasks.Inpaint"),
    ],
)
def test_cli_bad_input_is_a_user_error(tmp_path, colour_run, overrides, expected):
    ckpt, pngs = colour_run
    names = {**{k: str(v) for k, v in pngs.items()}, "missing": str(tmp_path / "missing.png")}
    with pytest.raises(UserError, match=expected.format(**names).replace("[", r"\[").replace("(", r"\(")):
        sample(_task_cfg(tmp_path, ckpt, [o.format(**names) for o in overrides]))
    assert not (tmp_path / "out" / "inpaint.npz").exists()


def test_cli_refuses_tasks_that_make_no_sense_for_the_model(tmp_path):
    cfg = make_cfg(tmp_path, ["model=oracle", "task=inpaint", "task.image=0", "task.box=[0,0,1,1]"],
                   config_name="sample")
    with pytest.raises(UserError, match=r"task=inpaint is for image models; this one makes points of shape \(2,\)"):
        sample(cfg)
    from scorelab.domains import Images

    grey_model = SimpleNamespace(datamodule=SimpleNamespace(sample_shape=(1, 28, 28),
                                                            domain=Images("mnist", (-1.0, 1.0))))
    with pytest.raises(UserError, match="needs a colour .3-channel. model; this one makes 1-channel images"):
        Colorize(image=0).run(None, None, grey_model.datamodule, None, "cpu", tmp_path / "grey")


def test_image_tasks_refuse_torchrun_before_loading_anything(tmp_path, monkeypatch):
    from scorelab.cli.sample import build_task

    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = make_cfg(tmp_path, ["task=inpaint", "task.image=0", "task.box=[0,0,1,1]"], config_name="sample")
    with pytest.raises(UserError, match="task=inpaint runs in one process; launch it without torchrun"):
        build_task(cfg)
    assert type(build_task(make_cfg(tmp_path, [], config_name="sample"))).__name__ == "Sample"  # draws on any rank


def test_cli_prints_one_error_line(tmp_path, colour_run, capsys):
    """What sample.py's main does with the config: run_or_exit turns the UserError into one line and status 2."""
    ckpt, pngs = colour_run
    cfg = _task_cfg(tmp_path, ckpt, ["task=inpaint", f"task.image={pngs['a']}", f"task.mask={pngs['bad_mask']}"])
    with pytest.raises(SystemExit) as exit_info:
        run_or_exit(sample, cfg)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.strip()]
    assert line.startswith("error: ") and "is 16x8 pixels but the model makes 16x16 images" in line
