"""The cosine VP SDE (Nichol & Dhariwal 2021, Eq. 17) and DDPM's variational bound (Ho et al. 2020, Eq. 5, 13),
each against closed forms written out here, independently of the code."""
from __future__ import annotations

import glob
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from scorelab.data import GaussianMixture, two_modes
from scorelab.metrics import mode_weights
from scorelab.metrics.likelihood import log_likelihood
from scorelab.objectives.score_matching import DDPMLoss
from scorelab.objectives.vlb import (
    DDPMChain,
    bound_term,
    chain_times,
    discretized_gaussian_log_prob,
    eps_from_score,
    prior_term,
    stratified_timesteps,
    variational_bound,
)
from scorelab.sde import VESDE, VPSDE, CosineVPSDE, SubVPSDE

S = 0.008


pytestmark = pytest.mark.usefixtures("one_thread")


def f(t: float) -> float:
    """Nichol & Dhariwal 2021, Eq. 17."""
    return math.cos((t + S) / (1 + S) * math.pi / 2) ** 2


def paper_alphas_cumprod(n: int) -> list[float]:
    """The paper's discrete chain: alpha_bar_t = f(t/N)/f(0), beta_t = min(1 - alpha_bar_t/alpha_bar_{t-1}, 0.999)."""
    out, prod = [], 1.0
    for i in range(1, n + 1):
        beta = min(1.0 - (f(i / n) / f(0)) / (f((i - 1) / n) / f(0)), 0.999)
        prod *= 1.0 - beta
        out.append(prod)
    return out


def Phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


# --- the cosine schedule --------------------------------------------------------------------------------------------
def test_cosine_discrete_alpha_bar_is_the_papers_at_1000_steps():
    got = CosineVPSDE().ddpm_alphas_cumprod(1000)
    want = torch.tensor(paper_alphas_cumprod(1000), dtype=torch.float64)
    assert torch.allclose(got, want, rtol=1e-9, atol=0)
    # below the clip the chain is the continuous alpha_bar(i / N); only the last beta is clipped (at 0.999)
    t = torch.arange(1, 1000, dtype=torch.float64) / 1000
    assert torch.allclose(got[:-1], CosineVPSDE().mean_coeff(t) ** 2, rtol=1e-9)
    assert got[-1] / got[-2] == pytest.approx(0.001, rel=1e-9)


def test_cosine_continuous_closed_forms():
    sde = CosineVPSDE()
    ts = [1e-6, 1e-3, 0.1, 0.5, 0.9, 0.99, 0.9946]
    t = torch.tensor(ts, dtype=torch.float64)
    abar = torch.tensor([f(u) / f(0) for u in ts], dtype=torch.float64)
    assert torch.allclose(sde.mean_coeff(t), abar.sqrt(), rtol=1e-12)
    one_minus = torch.tensor([(f(0) - f(u)) / f(0) for u in ts], dtype=torch.float64)
    assert torch.allclose(sde.marginal_std(t), one_minus.sqrt(), rtol=1e-7)  # f(0) - f(u) cancels in math too
    assert torch.allclose(sde.sigma(t), (one_minus / abar).sqrt(), rtol=1e-7)
    assert torch.allclose(sde.t_of_sigma(sde.sigma(t)), t, rtol=1e-10)
    assert torch.allclose(sde.t_of_sigma(sde.sigma(t.float())), t.float(), rtol=1e-4)  # float32 keeps precision
    beta = torch.tensor([math.pi / (1 + S) * math.tan((u + S) / (1 + S) * math.pi / 2) for u in ts],
                        dtype=torch.float64)
    drift, diffusion = sde.sde(torch.ones(len(ts), 3, dtype=torch.float64), t)
    assert torch.allclose(diffusion**2, beta, rtol=1e-12)
    assert torch.allclose(drift, -0.5 * beta[:, None].expand(-1, 3), rtol=1e-12)
    assert sde.prior_std == 1.0 and sde.T == 0.9946


def test_cosine_beta_is_minus_dlog_alpha_bar_dt_and_the_variance_ode_holds():
    sde = CosineVPSDE()
    t = torch.tensor([1e-3, 0.2, 0.5, 0.8, 0.95, 0.99, sde.T], dtype=torch.float64, requires_grad=True)
    log_abar = 2 * torch.log(sde.mean_coeff(t))
    (dlog,) = torch.autograd.grad(log_abar.sum(), t)
    beta = sde.sde(torch.zeros(7, 1, dtype=torch.float64), t)[1].detach() ** 2
    assert torch.allclose(beta, -dlog, rtol=1e-10)
    # the VP variance ODE d s^2/dt = beta (1 - s^2), i.e. the forward SDE's kernel variance is s(t)^2
    s2 = sde.marginal_std(t) ** 2
    (ds2,) = torch.autograd.grad(s2.sum(), t)
    assert torch.allclose(ds2, beta * (1 - s2.detach()), rtol=1e-8)


@pytest.mark.parametrize("t_end", [0.5, 0.9])
def test_cosine_forward_simulation_matches_the_kernel(t_end):
    sde, gen, n = CosineVPSDE(), torch.Generator().manual_seed(0), 20_000
    x = torch.full((n, 1), 1.5, dtype=torch.float64)
    ts = torch.linspace(0, t_end, 1001, dtype=torch.float64)
    for t0, t1 in zip(ts[:-1], ts[1:], strict=True):
        drift, diffusion = sde.sde(x, t0.expand(n))
        x = x + drift * (t1 - t0) + diffusion[:, None] * (t1 - t0).sqrt() * torch.randn(x.shape, generator=gen,
                                                                                         dtype=x.dtype)
    t = torch.tensor([t_end], dtype=torch.float64)
    a, s = float(sde.mean_coeff(t)), float(sde.marginal_std(t))
    assert float(x.mean()) == pytest.approx(1.5 * a, abs=5 * s / math.sqrt(n) + 0.01)
    assert float(x.std()) == pytest.approx(s, rel=0.02)


def test_cosine_chain_steps_and_validation():
    sde = CosineVPSDE()
    t, t_next = torch.tensor([0.9946, 0.5, 1e-3]), torch.tensor([0.99, 0.5 - 1e-6, 1e-3 - 1e-7])
    td, tnd = t.double(), t_next.double()
    alpha_ref = (sde.mean_coeff(td) / sde.mean_coeff(tnd)) ** 2
    assert torch.allclose(sde.step_alpha(td, tnd), alpha_ref, rtol=1e-12)
    assert torch.allclose(sde.step_beta(t, t_next).double(), 1 - alpha_ref, rtol=1e-3)  # float32 on fine steps
    for kwargs, name in [({"s": 0.0}, "s"), ({"T": 1.0}, "T"), ({"max_beta": 1.0}, "max_beta")]:
        with pytest.raises(ValueError, match=name):
            CosineVPSDE(**kwargs)


def test_ddpm_loss_takes_the_cosine_chain_and_refuses_sdes_without_one():
    loss = DDPMLoss(CosineVPSDE(), num_steps=1000)
    assert torch.allclose(loss.alphas_cumprod, torch.tensor(paper_alphas_cumprod(1000), dtype=torch.float64))
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss(two_modes().oracle(CosineVPSDE()), x0, torch.Generator().manual_seed(1)))
    for sde in (VESDE(), SubVPSDE()):
        with pytest.raises(ValueError, match="DDPM"):
            DDPMLoss(sde)


SAMPLER_FILES = sorted(glob.glob("conf/sampler/*.yaml"))


def test_every_sampler_config_runs_finite_with_the_cosine_sde():
    sde, mixture = CosineVPSDE(), two_modes()
    assert len(SAMPLER_FILES) > 10
    for path in SAMPLER_FILES:
        sampler = instantiate(OmegaConf.load(path))
        x, nfe = sampler(mixture.oracle(sde), sde, (200, 2), generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(x).all() and nfe > 0, path


@pytest.mark.parametrize("name", ["reverse_diffusion", "pc", "dpmpp_3m", "edm"])
def test_cosine_sde_samplers_recover_the_mode_weights(name):
    sde, mixture, n = CosineVPSDE(), two_modes(), 10_000  # standard error of a weight 0.004: +-0.02 is 5 of them
    sampler = instantiate(OmegaConf.load(f"conf/sampler/{name}.yaml"))
    x, _ = sampler(mixture.oracle(sde), sde, (n, 2), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mode_weights(mixture, x), mixture.weights, atol=0.02)


def test_cosine_probability_flow_likelihood_of_gaussian_data_is_exact():
    sde, m, c = CosineVPSDE(), torch.tensor([0.5, -1.0], dtype=torch.float64), 0.7
    data = GaussianMixture([1.0], m[None], stds=[c])
    oracle = data.oracle(sde)
    x = torch.tensor([[0.1, -0.4], [1.2, -2.0]], dtype=torch.float64)
    res = log_likelihood(oracle, sde, x, eps=1e-5, divergence="exact",
                         prior_logp=lambda z: oracle.log_prob(z, torch.full((len(z),), sde.T, dtype=z.dtype)))
    t0 = torch.tensor([1e-5], dtype=torch.float64)
    a, s = float(sde.mean_coeff(t0)), float(sde.marginal_std(t0))
    var = a**2 * c**2 + s**2
    exact = (-0.5 * ((x - a * m) ** 2).sum(1) / var - math.log(2 * math.pi * var)).double()
    assert torch.allclose(res.log_prob, exact, atol=1e-3)


# --- the discretised decoder ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_decoder_probabilities_sum_to_one_over_the_256_values(data_range):
    lo, hi = data_range
    grid = lo + (hi - lo) * torch.arange(256, dtype=torch.float64) / 255
    means = torch.tensor([-3.0, -1.0, -0.999, 0.0, 0.31, 1.0, 2.5], dtype=torch.float64)
    stds = torch.tensor([1e-4, 1e-3, 0.01, 0.3, 5.0], dtype=torch.float64)
    mean, std = torch.meshgrid(means, stds, indexing="ij")  # one "pixel" per (mean, std)
    x = grid[:, None, None].expand(256, *mean.shape)
    logp = discretized_gaussian_log_prob(x, mean.expand_as(x), std.expand_as(x), data_range)
    assert torch.isfinite(logp).all() or (logp[torch.isinf(logp)] < 0).all()
    assert torch.allclose(torch.logsumexp(logp, dim=0), torch.zeros_like(mean), atol=1e-9)
    # one interior bin and both end bins against the normal CDF
    h = (hi - lo) / 510
    m, sd = 0.31, 0.3
    M, SD = torch.tensor(m, dtype=torch.float64), torch.tensor(sd, dtype=torch.float64)
    assert float(discretized_gaussian_log_prob(grid[100], M, SD, data_range)) == \
        pytest.approx(math.log(Phi((float(grid[100]) + h - m) / sd) - Phi((float(grid[100]) - h - m) / sd)), rel=1e-9)
    assert float(discretized_gaussian_log_prob(grid[0], M, SD, data_range)) == \
        pytest.approx(math.log(Phi((lo + h - m) / sd)), rel=1e-9)
    assert float(discretized_gaussian_log_prob(grid[255], M, SD, data_range)) == \
        pytest.approx(math.log(1 - Phi((hi - h - m) / sd)), rel=1e-9)


def test_decoder_is_accurate_far_in_the_tails():
    """A bin 40 standard deviations away: log(Phi(b) - Phi(a)) ~ log phi(a) (b - a), where a naive difference is 0."""
    x, mean, std = torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64), 0.5 / 40
    h = 1 / 255
    logp = float(discretized_gaussian_log_prob(x, mean, torch.tensor(std, dtype=torch.float64)))
    a, b = (0.5 - h) / std, (0.5 + h) / std
    # the mass over [a, b] of the standard normal, by the trapezoid rule in log space on a fine grid
    u = np.linspace(a, b, 20001)
    log_phi = -0.5 * u**2 - 0.5 * math.log(2 * math.pi)
    ref = log_phi.max() + math.log(np.trapezoid(np.exp(log_phi - log_phi.max()), u))
    assert logp == pytest.approx(ref, rel=1e-6)


# --- the bound for Gaussian data: every term against the Gaussian algebra ---------------------------------------------
MU, C = 0.3, 0.2  # data x0 ~ N(MU, C^2) in each dimension


def gaussian_eps(abar: torch.Tensor):
    """The exact E[eps | x_t] of N(MU, C^2) data under the chain: sqrt(1 - abar) (x_t - sqrt(abar) MU) / v_t."""
    def eps_fn(x, t):
        a = abar[t - 1].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * C**2 + 1 - a)
    return eps_fn


def reverse_mean(ab: list[float], t: int, xt: float) -> float:
    """E[x_{t-1} | x_t] of the joint Gaussian (x_{t-1}, x_t): m_{t-1} + sqrt(alpha_t) v_{t-1} / v_t (x_t - m_t)."""
    abar_t, abar_prev = ab[t], ab[t - 1]
    v_t, v_prev = abar_t * C**2 + 1 - abar_t, abar_prev * C**2 + 1 - abar_prev
    return math.sqrt(abar_prev) * MU + math.sqrt(abar_t / abar_prev) * v_prev / v_t * (xt - math.sqrt(abar_t) * MU)


def posterior(ab: list[float], t: int, x0: float, xt: float) -> tuple[float, float]:
    """q(x_{t-1} | x_t, x_0) by Bayes: prior N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}), likelihood
    N(sqrt(alpha_t) x, beta_t)."""
    alpha = ab[t] / ab[t - 1]
    beta, v = 1 - alpha, 1 - ab[t - 1]
    precision = 1 / v + alpha / beta
    return (math.sqrt(ab[t - 1]) * x0 / v + math.sqrt(alpha) * xt / beta) / precision, 1 / precision


def kl(m1: float, v1: float, m2: float, v2: float) -> float:
    return 0.5 * math.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5


CHAINS = {"linear": VPSDE().ddpm_alphas_cumprod(50), "cosine": CosineVPSDE().ddpm_alphas_cumprod(50)}


@pytest.mark.parametrize("chain_name", list(CHAINS))
@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_every_term_of_the_bound_matches_the_gaussian_algebra(chain_name, variance):
    abar = CHAINS[chain_name]
    ab = [1.0] + abar.tolist()
    n, chain, gen = len(abar), DDPMChain(abar), torch.Generator().manual_seed(0)
    x0 = torch.round((MU + C * torch.randn(3, 4, generator=gen, dtype=torch.float64) + 1) * 127.5) / 127.5 - 1
    eps_fn = gaussian_eps(abar)
    for t in [1, 2, 3, 17, n - 1, n]:
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        got = bound_term(chain, eps_fn, x0, torch.full((3,), t), noise, variance)
        xt = math.sqrt(ab[t]) * x0 + math.sqrt(1 - ab[t]) * noise
        beta = 1 - ab[t] / ab[t - 1]
        for b in range(3):
            want = 0.0
            for d in range(4):
                mean = reverse_mean(ab, t, float(xt[b, d]))
                if t == 1:  # -log of the decoder's bin mass; beta~_1 = 0, so beta_tilde's decoder uses beta~_2
                    var = beta if variance == "beta" else (1 - ab[1]) / (1 - ab[2]) * (1 - ab[2] / ab[1])
                    lo = -math.inf if x0[b, d] < -1 + 1e-9 else (float(x0[b, d]) - 1 / 255 - mean) / math.sqrt(var)
                    hi = math.inf if x0[b, d] > 1 - 1e-9 else (float(x0[b, d]) + 1 / 255 - mean) / math.sqrt(var)
                    want -= math.log(Phi(hi) - Phi(lo))
                else:
                    m_post, v_post = posterior(ab, t, float(x0[b, d]), float(xt[b, d]))
                    want += kl(m_post, v_post, mean, beta if variance == "beta" else v_post)
            assert float(got[b]) == pytest.approx(want, rel=1e-8, abs=1e-10), (t, b)
    # L_N: KL(N(sqrt(abar_N) x0, 1 - abar_N) || N(0, 1)) by torch.distributions
    q = torch.distributions.Normal(math.sqrt(ab[n]) * x0, math.sqrt(1 - ab[n]))
    want = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(prior_term(chain, x0), want, rtol=1e-10)


@pytest.mark.parametrize("chain_name", list(CHAINS))
@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_expected_bound_is_above_the_exact_nll_of_the_model(chain_name, variance):
    """For the linear-Gaussian reverse chain of Gaussian data the model's own -log p_theta(x_0) is exact: x_N ~ N(0, 1),
    x_{t-1} = A_t x_t + b_t + sigma_t z keeps x_1 Gaussian, and the decoder's bin mass of a Gaussian x_1 is a
    normal CDF difference. The bound's expectation over the noise (Gauss-Hermite, 60 nodes) must lie above it."""
    abar = CHAINS[chain_name]
    ab, n, chain = [1.0] + abar.tolist(), len(abar), DDPMChain(abar)
    eps_fn = gaussian_eps(abar)
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    weights = torch.tensor(weights / math.sqrt(2 * math.pi))
    pixels = [int(round((MU + k * C + 1) * 127.5)) for k in (-2.0, -0.5, 0.0, 1.0)]
    x0 = torch.tensor([p / 127.5 - 1 for p in pixels], dtype=torch.float64)
    x0b = x0.repeat_interleave(len(nodes))[:, None]
    noise = torch.tensor(nodes).repeat(len(pixels))[:, None]
    expected = prior_term(chain, x0[:, None])
    for t in range(1, n + 1):
        terms = bound_term(chain, eps_fn, x0b, torch.full((len(x0b),), t), noise, variance)
        expected = expected + (terms.view(len(pixels), -1) * weights).sum(1)

    def sigma2(t: int) -> float:
        beta = 1 - ab[t] / ab[t - 1]
        if variance == "beta":
            return beta
        s = max(t, 2)
        return (1 - ab[s - 1]) / (1 - ab[s]) * (1 - ab[s] / ab[s - 1])

    mean, var = 0.0, 1.0  # p_theta(x_N)
    for t in range(n, 1, -1):  # to x_1
        v_t, v_prev = ab[t] * C**2 + 1 - ab[t], ab[t - 1] * C**2 + 1 - ab[t - 1]
        A = math.sqrt(ab[t] / ab[t - 1]) * v_prev / v_t
        b = math.sqrt(ab[t - 1]) * MU - A * math.sqrt(ab[t]) * MU
        mean, var = A * mean + b, A * A * var + sigma2(t)
    A = math.sqrt(ab[1]) * C**2 / (ab[1] * C**2 + 1 - ab[1])  # decoder mean E[x0 | x1] = A x1 + b
    b = MU - A * math.sqrt(ab[1]) * MU
    m0, s0 = A * mean + b, math.sqrt(A * A * var + sigma2(1))
    for k, p in enumerate(pixels):
        x = p / 127.5 - 1
        nll = -math.log(Phi((x + 1 / 255 - m0) / s0) - Phi((x - 1 / 255 - m0) / s0))
        assert float(expected[k]) >= nll - 1e-9, (k, float(expected[k]), nll)


def test_full_bound_of_a_point_mass_is_its_closed_form_and_the_subset_estimate_is_unbiased():
    """Point-mass data x0 with its exact noise prediction: mu_theta = mu~ for every x_t, so with sigma_t^2 = beta_t each
    L_{t-1} is the noise-free KL of variances (beta~_t / beta_t - 1 - log(beta~_t / beta_t)) / 2 per dimension, L_0 is
    the decoder's mass of N(x0, beta_1) on x0's bin and L_N is exact: the bound is known without randomness."""
    abar = CosineVPSDE().ddpm_alphas_cumprod(200)
    ab, n, d, point = [1.0] + abar.tolist(), len(abar), 3, 0.2

    def eps_fn(x, t):
        a = abar[t - 1].to(x.dtype)[:, None]
        return (x - a.sqrt() * point) / (1 - a).sqrt()

    per_t = []
    for t in range(2, n + 1):
        ratio = (1 - ab[t - 1]) / (1 - ab[t])  # beta~_t / beta_t
        per_t.append(d * 0.5 * (ratio - 1 - math.log(ratio)))
    h = 1 / 255 / math.sqrt(1 - ab[1])
    decoder = -d * math.log(Phi(h) - Phi(-h))
    prior = d * 0.5 * (ab[n] * point**2 - ab[n] - math.log(1 - ab[n]))
    x0 = torch.full((2, d), point, dtype=torch.float64)
    full = variational_bound(eps_fn, x0, abar, timesteps=None, generator=torch.Generator().manual_seed(0))
    assert full.nfe == n
    assert torch.allclose(full.diffusion, torch.tensor(sum(per_t), dtype=torch.float64), rtol=1e-9)
    assert torch.allclose(full.decoder, torch.tensor(decoder, dtype=torch.float64), rtol=1e-9)
    assert torch.allclose(full.prior, torch.tensor(prior, dtype=torch.float64), rtol=1e-9)
    assert torch.allclose(full.total, full.prior + full.decoder + full.diffusion)
    # K = 10 strata: each draws one t uniformly in its block, weighted by the block size; the estimator's exact
    # variance is sum_k n_k^2 Var_{t in block k}(L_t), so the mean of B estimates must lie within 5 of its std / sqrt(B)
    k, batch = 10, 4000
    est = variational_bound(eps_fn, torch.full((batch, d), point, dtype=torch.float64), abar, timesteps=k,
                            generator=torch.Generator().manual_seed(1))
    assert est.nfe == k + 1
    edges = np.round(np.linspace(0, n - 1, k + 1)).astype(int)
    var = sum(((edges[j + 1] - edges[j]) ** 2) * np.var(per_t[edges[j]:edges[j + 1]]) for j in range(k))
    assert abs(float(est.diffusion.mean()) - sum(per_t)) < 5 * math.sqrt(var / batch)


def test_stratified_times_cover_every_block_uniformly():
    like = torch.zeros(1)
    t, w = stratified_timesteps(1000, 7, 20_000, like, torch.Generator().manual_seed(0))
    assert t.shape == (20_000, 7) and float(w.sum()) == 999
    edges = 2 + np.round(np.linspace(0, 999, 8)).astype(int)
    for j in range(7):
        col = t[:, j].numpy()
        assert col.min() == edges[j] and col.max() == edges[j + 1] - 1  # inside its block, both ends reached
        counts = np.bincount(col - edges[j])
        assert abs(counts.mean() - counts).max() < 6 * math.sqrt(counts.mean())  # uniform within the block
    full, w_full = stratified_timesteps(50, None, 2, like)
    assert full[0].tolist() == list(range(2, 51)) and (w_full == 1).all()
    with pytest.raises(ValueError, match="timesteps"):
        stratified_timesteps(50, 50, 2, like)


@pytest.mark.parametrize("sde", [VPSDE(), CosineVPSDE()], ids=["linear", "cosine"])
def test_a_score_model_becomes_the_chains_noise_prediction(sde):
    """eps_from_score of the exact score of Gaussian data is the exact E[eps | x_i] of the discrete chain: the chain's
    noise levels map to the SDE's times with the same kernel."""
    abar = sde.ddpm_alphas_cumprod(100)
    ts = chain_times(sde, abar)
    assert torch.allclose(sde.mean_coeff(ts) ** 2, abar, rtol=1e-6)
    oracle = GaussianMixture([1.0], [[MU]], stds=[C]).oracle(sde)
    x, i = torch.linspace(-2, 2, 5, dtype=torch.float64)[:, None], torch.tensor([1, 10, 50, 90, 99])
    assert torch.allclose(eps_from_score(oracle, sde, abar)(x, i), gaussian_eps(abar)(x, i), rtol=1e-6, atol=1e-9)


# --- the likelihood command's method=vlb ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cosine_checkpoint(tmp_path_factory) -> dict:
    """A 2-step tiny DDPM++ trained with the DDPM loss on the cosine chain (sde=vp_cosine loss=ddpm), 8x8 images."""
    from scorelab.cli import train

    from .platform_utils import make_cfg

    root = tmp_path_factory.mktemp("cosine")
    rng = np.random.default_rng(0)
    np.savez(root / "tiny.npz", x=rng.integers(0, 256, (24, 8, 8, 1), dtype=np.uint8))
    np.savez(root / "tiny_test.npz", x=rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8))
    cfg = make_cfg(root / "train", [
        "experiment=mnist_small", "sde=vp_cosine", "model.output=eps", "loss=ddpm", "data=npz",
        f"paths.data_dir={root}",
        "data.path=tiny.npz", "data.test_path=tiny_test.npz", "data.val_size=4", "data.batch_size=4",
        "data.num_workers=0", "trainer.max_steps=2", "trainer.max_time=null", "trainer.enable_progress_bar=false",
        "logger=none", "callbacks.samples.n_samples=2", "callbacks.fid=null", "sampler.steps=2",
        "model.net.ch=8", "model.net.num_res_blocks=1", "model.net.ch_mult=[1,2]", "model.net.attn_resolutions=[4]"])
    train(cfg)
    return {"ckpt": Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", "data_dir": root}


def run_likelihood(tmp_path, overrides):
    from scorelab.cli.likelihood import likelihood

    from .platform_utils import make_cfg

    cfg = make_cfg(tmp_path, overrides, config_name="likelihood")
    return likelihood(cfg), Path(cfg.paths.output_dir)


@pytest.mark.parametrize("timesteps, nfe", [("null", 20), ("4", 5)], ids=["full", "subset"])
def test_likelihood_cli_reports_the_bound_of_a_cosine_checkpoint(tmp_path, cosine_checkpoint, timesteps, nfe):
    result, out = run_likelihood(tmp_path, [
        f"ckpt_path={cosine_checkpoint['ckpt']}", f"paths.data_dir={cosine_checkpoint['data_dir']}", "split=test",
        "method=vlb", "vlb.num_steps=20", f"vlb.timesteps={timesteps}", "n=5", "batch_size=2", "repeats=2",
        "device=cpu"])
    saved = json.loads((out / "likelihood.json").read_text())
    arrays = np.load(out / "likelihood_values.npz")
    assert saved["unit"] == "bits/dim" and saved["n"] == 5 and arrays["values"].shape == (5, 2)
    assert saved["vlb"]["num_steps"] == 20 and saved["nfe"]["per_solve_mean"] == nfe
    parts = arrays["vlb_prior"] + arrays["vlb_decoder"] + arrays["vlb_diffusion"]
    assert np.allclose(arrays["values"], parts) and np.isfinite(arrays["values"]).all()
    assert (arrays["vlb_decoder"] > 0).all() and (arrays["vlb_prior"] >= 0).all()
    assert not np.array_equal(arrays["values"][:, 0], arrays["values"][:, 1])  # fresh noise per repeat
    assert saved["mean"] == pytest.approx(float(arrays["values"].mean()))


@pytest.mark.parametrize("overrides, message", [
    (["model=oracle", "data=toy_two_modes"], "needs image data"),
    (["ckpt_path={ckpt}", "vlb.num_steps=20", "vlb.timesteps=20"], "at most vlb.num_steps - 1 = 19"),
    (["ckpt_path={ckpt}", "vlb.variance=bogus"], "vlb.variance must be one of"),
    (["ckpt_path={ckpt}", "vlb.variance=learned"], "needs a model with a learned variance"),
    (["ckpt_path={ckpt}", "vlb.num_steps=1"], "vlb.num_steps must be an integer >= 2"),
])
def test_likelihood_cli_refuses_bad_vlb_settings(tmp_path, cosine_checkpoint, overrides, message):
    from scorelab.cli.errors import UserError

    overrides = [o.format(ckpt=cosine_checkpoint["ckpt"]) for o in overrides]
    with pytest.raises(UserError, match=message):
        run_likelihood(tmp_path, overrides + ["method=vlb", f"paths.data_dir={cosine_checkpoint['data_dir']}",
                                              "device=cpu"])
    assert not (tmp_path / "run").exists()
