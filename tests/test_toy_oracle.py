"""The Gaussian-mixture oracle against torch.distributions and autograd (docs/math.md §8)."""
import math

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from scorelab.data import GaussianMixture, eight_gaussians, grid, two_modes

from .conftest import ALL_SDES, SDE_IDS


def random_mixture(gen, k=3, d=3):
    a = torch.randn(k, d, d, generator=gen, dtype=torch.float64)
    covs = a @ a.transpose(-1, -2) + 0.3 * torch.eye(d, dtype=torch.float64)
    weights = torch.softmax(torch.randn(k, generator=gen, dtype=torch.float64), 0)
    means = 2 * torch.randn(k, d, generator=gen, dtype=torch.float64)
    return GaussianMixture(weights, means, covs=covs)


def torch_mixture(m, a, s):
    cov = a**2 * m.covs + s**2 * torch.eye(m.dim, dtype=torch.float64)
    return MixtureSameFamily(Categorical(m.weights), MultivariateNormal(a * m.means, covariance_matrix=cov))


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
def test_perturbed_log_prob_matches_torch_distributions(sde, gen):
    m = random_mixture(gen)
    o = m.oracle(sde)
    for t_val in (0.0, 1e-3, 0.3, 1.0):
        t = torch.full((50,), t_val, dtype=torch.float64)
        x = torch.randn(50, 3, generator=gen, dtype=torch.float64) * 3
        a, s = float(sde.mean_coeff(t[:1])), float(sde.marginal_std(t[:1]))
        assert torch.allclose(o.log_prob(x, t), torch_mixture(m, a, s).log_prob(x), atol=1e-9)


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
def test_oracle_score_equals_autograd_of_log_density(sde, gen):
    m = random_mixture(gen)
    o = m.oracle(sde)
    x = (torch.randn(200, 3, generator=gen, dtype=torch.float64) * 3).requires_grad_(True)
    t = torch.rand(200, generator=gen, dtype=torch.float64)  # a different t per example
    (grad,) = torch.autograd.grad(o.log_prob(x, t).sum(), x)
    assert torch.allclose(o(x.detach(), t), grad, atol=1e-8)


def test_sampling_matches_parameters(gen):
    m = random_mixture(gen, k=2, d=2)
    x, labels = m.sample(100_000, generator=gen, return_labels=True, dtype=torch.float64)
    freq = torch.bincount(labels, minlength=2).double() / 100_000
    assert torch.allclose(freq, m.weights, atol=0.01)
    for k in range(2):
        xk = x[labels == k]
        assert torch.allclose(xk.mean(0), m.means[k], atol=0.05)
        assert torch.allclose(torch.cov(xk.T), m.covs[k], atol=0.1)


def test_entropy_of_single_gaussian_is_closed_form(gen):
    m = GaussianMixture([1.0], [[0.0, 1.0]], stds=[[0.5, 2.0]])
    exact = 0.5 * 2 * (1 + math.log(2 * math.pi)) + math.log(0.5) + math.log(2.0)
    est, se = m.entropy(n=100_000, generator=gen)
    assert abs(est - exact) < 5 * se


def test_presets():
    m = two_modes()
    assert m.weights.tolist() == pytest.approx([0.8, 0.2]) and m.dim == 2
    ring = eight_gaussians(radius=2.0)
    assert ring.n_components == 8 and torch.allclose(ring.means.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    g = grid(5)
    assert g.n_components == 25 and torch.allclose(g.means.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.equal(g.classify(g.means), torch.arange(25))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weights=[0.5, 0.4], means=[[0, 0], [1, 1]], stds=1.0), "sum to 1"),
        (dict(weights=[1.2, -0.2], means=[[0, 0], [1, 1]], stds=1.0), "positive"),
        (dict(weights=[0.5, 0.5], means=[[0, 0]], stds=1.0), "means"),
        (dict(weights=[1.0], means=[[0, 0]], stds=-1.0), "stds"),
        (dict(weights=[1.0], means=[[0, 0]]), "exactly one"),
        (dict(weights=[1.0], means=[[0, 0]], covs=[[[1, 0], [0, -1]]]), "positive definite"),
        (dict(weights=[1.0], means=[[0, 0]], covs=[[[1, 0.5], [0, 1]]]), "symmetric"),
        (dict(weights=[1.0], means=[[0, 0]], covs=[[1, 0], [0, 1]]), "covs must have shape"),
    ],
)
def test_invalid_mixture_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs)
