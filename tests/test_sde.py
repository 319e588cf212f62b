"""SDE formulas against exact answers: kernel moments, prior density, discretisations, validation."""
import math

import pytest
import torch

from scorelab.sde import VESDE, VPSDE, SubVPSDE, VPFamily
from scorelab.sde.vp import ddpm_alphas_cumprod

from .conftest import ALL_SDES, SDE_IDS


def simulate_forward(sde, x0, t_end, steps, gen):
    """Euler–Maruyama simulation of the forward SDE from a fixed x0 (docs/math.md §8, 'Marginals')."""
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


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_forward_simulation_matches_marginal_prob(sde, fraction, gen):
    """Every shipped SDE: simulating its drift and diffusion reproduces its kernel's a(t) x0 and s(t)."""
    t_end = fraction * sde.T
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


def test_ve_marginal_std_is_paper_convention(gen):
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    # sigma(0) = sigma_min, sigma(1) = sigma_max, sigma(1/2) = sqrt(sigma_min sigma_max): a geometric schedule.
    torch.testing.assert_close(sde.marginal_std(t), torch.tensor([0.01, 0.5**0.5, 50.0], dtype=torch.float64))
    # From clean data the forward SDE spreads to sqrt(sigma(t)^2 - sigma_min^2) = 0.011592 at t = 0.05, while the
    # paper's convention (marginal_std) says sigma(0.05) = 0.015309: 32% apart.
    n = 20_000
    x = simulate_forward(sde, torch.zeros(n, 1, dtype=torch.float64), 0.05, steps=200, gen=gen)
    assert float(x.std()) == pytest.approx(0.011592, rel=0.03)
    assert sde.marginal_std(torch.tensor([0.05], dtype=torch.float64)).item() == pytest.approx(0.0153091, rel=1e-5)


def test_vp_closed_forms():
    sde = VPSDE(0.1, 20.0)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    log_a = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1  # docs/math.md §2
    assert torch.allclose(sde.mean_coeff(t).log(), log_a)
    assert torch.allclose(sde.marginal_std(t) ** 2, 1 - torch.exp(2 * log_a))
    sub = SubVPSDE(0.1, 20.0)
    assert torch.allclose(sub.marginal_std(t), 1 - torch.exp(2 * log_a))
    assert (sub.marginal_std(t[1:]) < sde.marginal_std(t[1:])).all()
    x = torch.ones(11, 3, dtype=torch.float64)
    drift, diffusion = sde.sde(x, t)
    beta = 0.1 + t * 19.9
    assert torch.allclose(drift, -0.5 * beta[:, None] * x)  # not beta(t): docs/math.md §9
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


def added_variance(sde, t_from: float, t_to: float, n: int = 2001) -> float:
    """int g(u)^2 du over [t_to, t_from] by Simpson's rule on the SDE's own diffusion (independent of discretize)."""
    u = torch.linspace(t_to, t_from, n, dtype=torch.float64)
    g2 = sde.sde(torch.zeros(n, 1, dtype=torch.float64), u)[1] ** 2
    w = torch.ones(n, dtype=torch.float64)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return float((w * g2).sum() * (t_from - t_to) / (3 * (n - 1)))


@pytest.mark.parametrize("steps", [5, 10, 1000])
def test_vp_discretisation_valid_at_any_step_count(steps):
    sde = VPSDE()
    ts = torch.linspace(1.0, 1e-3, steps + 1, dtype=torch.float64)
    x = torch.ones(steps, 2, dtype=torch.float64)
    f, G = sde.discretize(x, ts[:-1], ts[1:])
    beta = G**2
    assert torch.isfinite(f).all() and ((beta > 0) & (beta < 1)).all()
    # The DDPM chain keeps a fraction alpha_i = exp(-int beta) of the variance over each step, with beta = g^2.
    for i in (0, steps // 2, steps - 1):
        expected = 1 - math.exp(-added_variance(sde, float(ts[i]), float(ts[i + 1])))
        assert float(beta[i]) == pytest.approx(expected, rel=1e-9)
    torch.testing.assert_close(f, (torch.sqrt(1 - beta) - 1)[:, None] * x)
    # Over the whole grid: a(1e-3)^-2 a(1)^2 = exp(-(B(1) - B(1e-3))) = exp(-(10.05 - 1.0995e-4)) = 4.31905e-5.
    assert float((1 - beta).prod()) == pytest.approx(4.319050e-5, rel=1e-6)


def test_ve_discretisation_adds_the_forward_variance():
    sde = VESDE()
    ts = torch.linspace(1.0, 1e-5, 11, dtype=torch.float64)
    f, G = sde.discretize(torch.ones(10, 1, dtype=torch.float64), ts[:-1], ts[1:])
    assert (f == 0).all()
    for i in range(10):  # each step adds exactly the variance int g^2 the forward SDE adds over it
        assert float(G[i] ** 2) == pytest.approx(added_variance(sde, float(ts[i]), float(ts[i + 1])), rel=1e-8)
    # sigma_max^2 - sigma(1e-5)^2 = 2500 - 1.0002e-4 over the whole grid.
    assert float((G**2).sum()) == pytest.approx(2499.9998999830, rel=1e-12)


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


class ConstantVPSDE(VPFamily):
    """The contributor guide's example: a VP SDE given by nothing but a constant beta and its integral."""

    def __init__(self, beta: float = 10.0):
        self.beta_value = float(beta)

    def beta(self, t):
        return torch.full_like(t, self.beta_value)

    def integral(self, t):
        return self.beta_value * t


def test_a_new_vp_schedule_is_only_its_beta():
    """Everything else of a VP SDE follows from beta(t) and B(t), against the closed forms of constant beta."""
    sde, b = ConstantVPSDE(4.0), 4.0
    t = torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64)
    t_next = t - 0.005
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sde.mean_coeff(t), torch.exp(-b * t / 2))
    torch.testing.assert_close(sde.marginal_std(t), torch.sqrt(1 - torch.exp(-b * t)))
    torch.testing.assert_close(sde.sigma(t), torch.sqrt(torch.exp(b * t) - 1))
    torch.testing.assert_close(sde.t_of_sigma(sde.sigma(t)), t, rtol=1e-9, atol=1e-12)  # the generic inverse
    drift, diffusion = sde.sde(x, t)
    torch.testing.assert_close(drift, -b / 2 * x)
    torch.testing.assert_close(diffusion, torch.full_like(t, b**0.5))
    alpha = torch.exp(-b * (t - t_next))  # DDPM's alpha_i between the two grid times
    f, g = sde.discretize(x, t, t_next)
    torch.testing.assert_close(f, (alpha.sqrt() - 1)[:, None] * x)
    torch.testing.assert_close(g, torch.sqrt(1 - alpha))
    score, z = -x, torch.ones_like(x)
    new, mean = sde.ancestral_step(x, t, t_next, score, z)
    torch.testing.assert_close(mean, (x + (1 - alpha)[:, None] * score) / alpha.sqrt()[:, None])
    torch.testing.assert_close(sde.langevin_alpha(t, t - t_next), torch.exp(-b * (t - t_next)))
    assert sde.prior_std == 1.0


def test_a_new_vp_schedule_samples_the_toy_mixture():
    """The same class drives the samplers: the exact score of the 0.8 / 0.2 mixture, ancestral sampling."""
    from scorelab.data import two_modes
    from scorelab.metrics.toy import mode_weights
    from scorelab.sampling import Ancestral, PCSampler

    sde, mixture = ConstantVPSDE(12.0), two_modes()
    x, _ = PCSampler(Ancestral(), None, steps=200)(mixture.oracle(sde), sde, (4000, 2),
                                                    generator=torch.Generator().manual_seed(0))
    weights = mode_weights(mixture, x)
    assert abs(float(weights[0]) - 0.8) < 0.03
