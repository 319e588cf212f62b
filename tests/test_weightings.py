"""EDM's lambda(sigma) and log-normal noise levels, min-SNR-gamma and the flow-matching loss, held to exact answers:
each loss is written out here in its own space (denoiser, velocity), and its optimum is the true denoiser."""
import math

import pytest
import torch

from scorelab.objectives import DSMLoss
from scorelab.sde import VPSDE, RectifiedFlowSDE

from .conftest import ALL_SDES, SDE_IDS

F64 = torch.float64
NEW = ("edm", "min_snr", "flow")
SIGMA_DATA, GAMMA = 0.7, 3.0  # not the defaults, so that the arguments are seen to reach the weight


def make(sde, weighting, **kw):
    return DSMLoss(sde, weighting=weighting, sigma_data=SIGMA_DATA, min_snr_gamma=GAMMA, eps=1e-3, **kw)


def some_score(x, t):
    """A smooth score that is nobody's: the losses are compared away from their optimum."""
    return -0.7 * x + torch.sin(x) * t[:, None] / (1 + t[:, None])


def derivative(f, t):
    h = 1e-6 * torch.clamp(t, min=1e-3)
    return (f(t + h) - f(t - h)) / (2 * h)


def written_out(sde, weighting, x0, t, z, score_fn):
    """The loss of each example in its own space, from a(t), s(t) and Tweedie's formula only."""
    a, s = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
    x = a * x0 + s * z
    score = score_fn(x, t)
    denoised = (x + s**2 * score) / a  # E[x0 | x_t] of the model
    sigma2 = (s / a) ** 2
    if weighting == "edm":  # Karras et al. 2022, Eq. 8 with lambda = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2
        lam = (sigma2 + SIGMA_DATA**2) / (sigma2 * SIGMA_DATA**2)
        return (lam * (denoised - x0) ** 2).mean(1)
    if weighting == "min_snr":  # Hang et al. 2023: min(SNR, gamma) on the x0 error, SNR = a^2 / s^2
        return (torch.clamp(1 / sigma2, max=GAMMA) * (denoised - x0) ** 2).mean(1)
    # flow matching: the model's velocity a' x0_hat + s' eps_hat against the path's a' x0 + s' z
    da, ds = derivative(sde.mean_coeff, t)[:, None], derivative(sde.marginal_std, t)[:, None]
    eps_hat = -s * score
    return ((da * denoised + ds * eps_hat - (da * x0 + ds * z)) ** 2).mean(1)


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
@pytest.mark.parametrize("weighting", NEW)
def test_each_new_weighting_is_its_loss_written_out_in_its_own_space(sde, weighting):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(512, 3, generator=gen, dtype=F64)
    t = (torch.rand(512, generator=gen, dtype=F64) * 0.9 + 0.05) * sde.T
    loss = make(sde, weighting).per_example(some_score, x0, torch.Generator().manual_seed(7), t=t)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7), dtype=F64)  # the loss's draw of z
    rtol = 1e-5 if weighting == "flow" else 1e-10  # finite-difference derivatives of a and s
    torch.testing.assert_close(loss, written_out(sde, weighting, x0, t, z, some_score), rtol=rtol, atol=0)


def test_flow_matching_on_the_rectified_flow_is_velocity_regression_onto_z_minus_x0():
    """Liu et al. 2023: x_t = (1 - t) x0 + t z, target z - x0; the model's velocity is f x - g^2 score / 2."""
    sde = RectifiedFlowSDE()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(256, 2, generator=gen, dtype=F64)
    t = torch.rand(256, generator=gen, dtype=F64) * 0.9 + 0.05
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    x = (1 - t[:, None]) * x0 + t[:, None] * z
    velocity = -x / (1 - t[:, None]) - t[:, None] / (1 - t[:, None]) * some_score(x, t)
    expected = ((velocity - (z - x0)) ** 2).mean(1)
    loss = make(sde, "flow").per_example(some_score, x0, torch.Generator().manual_seed(3), t=t)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=0)


def test_min_snr_is_one_loss_on_noise_x0_and_v():
    """On VP (a^2 + s^2 = 1): min(SNR, g)/SNR ||eps error||^2 = min(SNR, g) ||x0 error||^2 = min(SNR, g)/(SNR + 1)
    ||v error||^2, the three forms of Hang et al. 2023, Sec. 3.4."""
    sde = VPSDE()
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(256, 2, generator=gen, dtype=F64)
    t = torch.rand(256, generator=gen, dtype=F64) * 0.9 + 0.05
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    a, s = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
    x = a * x0 + s * z
    eps_hat = -s * some_score(x, t)
    x0_hat = (x - s * eps_hat) / a
    snr = a**2 / s**2
    w = torch.clamp(snr, max=GAMMA)
    v, v_hat = a * z - s * x0, a * eps_hat - s * x0_hat
    forms = [(w / snr * (eps_hat - z) ** 2).mean(1), (w * (x0_hat - x0) ** 2).mean(1),
             (w / (snr + 1) * (v_hat - v) ** 2).mean(1)]
    loss = make(sde, "min_snr").per_example(some_score, x0, torch.Generator().manual_seed(5), t=t)
    for form in forms:
        torch.testing.assert_close(loss, form, rtol=1e-10, atol=0)


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
def test_log_normal_times_have_log_normal_noise_levels(sde):
    """EDM's ln sigma ~ N(P_mean, P_std^2): the times drawn are the t_of_sigma of exactly those noise levels."""
    loss = make(sde, "edm", time_distribution="log_normal", p_mean=-0.4, p_std=0.9)
    like = torch.empty(0, dtype=F64)
    t = loss.sample_times(4096, like, torch.Generator().manual_seed(4))
    sigma = torch.exp(-0.4 + 0.9 * torch.randn(4096, generator=torch.Generator().manual_seed(4), dtype=F64))
    lo, hi = sde.sigma(torch.tensor([1e-3, sde.T], dtype=F64)).tolist()
    inside = (sigma > lo) & (sigma < hi)
    assert inside.float().mean() > 0.99
    torch.testing.assert_close(sde.sigma(t[inside]), sigma[inside], rtol=1e-9, atol=1e-12)
    assert ((t >= 1e-3) & (t <= sde.T)).all()


GAUSS_M, GAUSS_C = torch.tensor([0.8, -0.3], dtype=F64), 0.6


def denoiser_score(sde, c):
    """The score whose denoiser is E[x0 | x_t] of N(m, c^2 I) data: D = m + c^2 a (x - a m) / (a^2 c^2 + s^2)."""
    def score(x, t, delta=None):
        a, s = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
        d = GAUSS_M + c**2 * a * (x - a * GAUSS_M) / (a**2 * c**2 + s**2)
        if delta is not None:  # a perturbation of the denoiser along h(x) = 1 + x / 2
            d = d + delta[:, None] * (1 + x / 2)
        return (a * d - x) / s**2
    return score


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
@pytest.mark.parametrize("weighting, times", [("edm", "log_normal"), ("edm", "uniform"), ("min_snr", "uniform"),
                                              ("flow", "uniform"), ("sigma2", "log_normal")])
def test_the_optimum_of_each_loss_is_the_true_denoiser_of_gaussian_data(sde, weighting, times):
    """d loss / d delta at the true denoiser is zero in expectation (within 5 standard errors); at the denoiser of
    a Gaussian of the wrong width it moves by far more than its standard error: the test can tell."""
    n = 100_000
    loss = make(sde, weighting, time_distribution=times)
    x0 = GAUSS_M + GAUSS_C * torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = loss.sample_times(n, x0, torch.Generator().manual_seed(2))

    def slope(c):
        delta = torch.zeros(n, dtype=F64, requires_grad=True)
        score = denoiser_score(sde, c)
        values = loss.per_example(lambda x, tt: score(x, tt, delta), x0, torch.Generator().manual_seed(3), t=t)
        (grad,) = torch.autograd.grad(values.sum(), delta)
        return grad

    right = slope(GAUSS_C)
    assert abs(float(right.mean())) < 5 * float(right.std()) / math.sqrt(n)
    shift = slope(2 * GAUSS_C) - right  # same t and z: the change the wrong denoiser makes, example by example
    assert abs(float(shift.mean())) > 10 * float(shift.std()) / math.sqrt(n)
