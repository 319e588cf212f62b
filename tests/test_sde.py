"""SDE formulas against exact answers: kernel moments, prior density, discretisations, validation."""
import math

import pytest
import torch

from scorelab.losses import ddpm_alphas_cumprod
from scorelab.sde import VESDE, VPSDE, SubVPSDE

from .conftest import ALL_SDES, SDE_IDS


def simulate_forward(sde, x0, t_end, steps, gen):
    """Euler–Maruyama simulation of the forward SDE from a fixed x0 (MATH.md Sec. 8, 'Marginals')."""
    x = x0.clone()
    dt = t_end / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), i * dt, dtype=x.dtype)
        drift, diffusion = sde.sde(x, t)
        x = x + drift * dt + diffusion[:, None] * math.sqrt(dt) * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return x


def exact_kernel_std(sde, t):
    """Kernel std from clean data; for VE it is sqrt(sigma^2 - sigma_min^2), not the paper's sigma(t)."""
    if isinstance(sde, VESDE):
        return torch.sqrt(sde.sigma(t) ** 2 - sde.sigma_min**2)
    return sde.marginal_std(t)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=5.0)], ids=SDE_IDS)
@pytest.mark.parametrize("t_end", [0.1, 0.5, 1.0])
def test_forward_simulation_matches_marginal_prob(sde, t_end, gen):
    n = 20_000
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64).expand(n, 2)
    x = simulate_forward(sde, x0, t_end, steps=1000, gen=gen)
    t = torch.full((n,), t_end, dtype=torch.float64)
    mean, _ = sde.marginal_prob(x0, t)
    std = exact_kernel_std(sde, t)[0]
    # 5 standard errors of the sample mean / std, plus 1% for the O(dt) bias of Euler–Maruyama.
    se_mean = 5 * std / math.sqrt(n)
    se_std = 5 * std / math.sqrt(2 * n) + 0.01 * std
    assert torch.allclose(x.mean(0), mean[0], atol=float(se_mean) + 0.01 * float(mean[0].abs().max()))
    assert torch.allclose(x.std(0), std.expand(2), atol=float(se_std))


def test_ve_marginal_std_is_paper_convention():
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(sde.marginal_std(t), 0.01 * 5000.0**t)
    # At small t the exact kernel std differs from sigma(t) by a large relative amount (MATH.md Sec. 2).
    small = torch.tensor([0.01], dtype=torch.float64)
    assert (sde.marginal_std(small) - exact_kernel_std(sde, small)) / sde.marginal_std(small) > 0.1


def test_vp_closed_forms():
    sde = VPSDE(0.1, 20.0)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    log_a = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1  # MATH.md Sec. 2
    assert torch.allclose(sde.mean_coeff(t).log(), log_a)
    assert torch.allclose(sde.marginal_std(t) ** 2, 1 - torch.exp(2 * log_a))
    sub = SubVPSDE(0.1, 20.0)
    assert torch.allclose(sub.marginal_std(t), 1 - torch.exp(2 * log_a))
    assert (sub.marginal_std(t[1:]) < sde.marginal_std(t[1:])).all()
    x = torch.ones(11, 3, dtype=torch.float64)
    drift, diffusion = sde.sde(x, t)
    beta = 0.1 + t * 19.9
    assert torch.allclose(drift, -0.5 * beta[:, None] * x)  # not beta(t): MATH.md Sec. 7
    assert torch.allclose(diffusion, beta.sqrt())


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
def test_prior_logp_equals_torch_distributions(sde, gen):
    z = sde.prior_sampling((64, 3, 4, 4), generator=gen, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, sde.prior_std).log_prob(z).flatten(1).sum(1)
    assert torch.allclose(sde.prior_logp(z), expected)
    assert abs(float(z.std()) - sde.prior_std) < 0.05 * sde.prior_std


def test_ddpm_alphas_cumprod_approach_vp_mean_coefficient():
    sde = VPSDE(0.1, 20.0)
    errors = []
    for n in (100, 1000, 10000):
        abar = ddpm_alphas_cumprod(n, 0.1, 20.0)
        t = torch.arange(1, n + 1, dtype=torch.float64) / n
        errors.append(float((abar - sde.mean_coeff(t) ** 2).abs().max()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3


@pytest.mark.parametrize("steps", [5, 10, 1000])
def test_vp_discretisation_valid_at_any_step_count(steps):
    sde = VPSDE()
    ts = torch.linspace(1.0, 1e-3, steps + 1, dtype=torch.float64)
    x = torch.ones(steps, 2, dtype=torch.float64)
    f, G = sde.discretize(x, ts[:-1], ts[1:])
    beta = G**2
    assert torch.isfinite(f).all() and ((beta > 0) & (beta < 1)).all()
    # alpha_i = a(t_i)^2 / a(t_{i+1})^2 telescopes to a(t_0)^2 / a(t_N)^2 exactly.
    prod = (1 - beta).prod()
    assert torch.allclose(prod, (sde.mean_coeff(ts[:1]) / sde.mean_coeff(ts[-1:])) ** 2)


def test_ve_discretisation_telescopes():
    sde = VESDE()
    ts = torch.linspace(1.0, 1e-5, 11, dtype=torch.float64)
    _, G = sde.discretize(torch.zeros(10, 1, dtype=torch.float64), ts[:-1], ts[1:])
    assert torch.allclose((G**2).sum(), sde.sigma(ts[:1]) ** 2 - sde.sigma(ts[-1:]) ** 2)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: VPSDE(beta_min=-1.0), "beta_min"),
        (lambda: VPSDE(beta_min=0.0), "beta_min"),
        (lambda: VPSDE(beta_min=20.0, beta_max=0.1), "beta_min"),
        (lambda: VPSDE(beta_max=float("nan")), "beta_max"),
        (lambda: SubVPSDE(beta_min=5.0, beta_max=5.0), "beta_min"),
        (lambda: SubVPSDE(beta_max=-3.0), "beta_max"),
        (lambda: VESDE(sigma_min=0.0), "sigma_min"),
        (lambda: VESDE(sigma_min=-0.1), "sigma_min"),
        (lambda: VESDE(sigma_max=-1.0), "sigma_max"),
        (lambda: VESDE(sigma_min=50.0, sigma_max=0.01), "sigma_min"),
    ],
)
def test_invalid_sde_arguments_raise(make, name):
    with pytest.raises(ValueError, match=name):
        make()
