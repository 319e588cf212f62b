"""Probability-flow likelihoods against the closed-form density of Gaussian data (docs/math.md §5, §8)."""
import math

import pytest
import torch

from scorelab.data import GaussianMixture
from scorelab.metrics.likelihood import bits_per_dim, dequantize, log_likelihood
from scorelab.sde import VESDE, VPSDE, SubVPSDE

from .conftest import ALL_SDES, SDE_IDS

D = 3
GAUSSIAN = GaussianMixture([1.0], [[0.5, -1.0, 2.0]], stds=0.7)  # N(m, c^2 I)


def closed_form(sde, x, eps):
    """log N(x; a m, (a^2 c^2 + s^2) I) at t = eps, written out (not through the oracle)."""
    t = torch.full((1,), eps, dtype=torch.float64)
    a, s = sde.mean_coeff(t), sde.marginal_std(t)
    var = a**2 * 0.7**2 + s**2
    m = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    return -0.5 * D * torch.log(2 * math.pi * var) - ((x - a * m) ** 2).sum(1) / (2 * var)


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
def test_exact_divergence_matches_closed_form(sde):
    x = GAUSSIAN.sample(100, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    oracle = GAUSSIAN.oracle(sde)

    def exact_prior(z):  # the true p_T removes the (tiny) prior mismatch: what remains is solver error
        return oracle.log_prob(z, torch.full((z.shape[0],), sde.T, dtype=z.dtype))

    res = log_likelihood(oracle, sde, x, eps=1e-5, prior_logp=exact_prior)
    assert res.z.shape == x.shape and res.nfe > 0
    assert ((res.log_prob - closed_form(sde, x, 1e-5)).abs() / D).max() < 1e-3


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE()], ids=["vp", "subvp"])
def test_default_prior_within_1e2_nats_per_dim(sde):
    # With the N(0, I) prior the error includes the prior mismatch at T: small on average, per dimension.
    x = GAUSSIAN.sample(100, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = log_likelihood(GAUSSIAN.oracle(sde), sde, x, eps=1e-5)
    assert ((res.log_prob - closed_form(sde, x, 1e-5)).abs() / D).mean() < 1e-2


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_within_standard_error(probe):
    # A correlated Gaussian: with an isotropic one the Jacobian is a multiple of I and Rademacher probes are exact.
    sde = VPSDE()
    cov = torch.tensor([[1.0, 0.6, 0.0], [0.6, 0.8, -0.3], [0.0, -0.3, 0.5]], dtype=torch.float64)
    gaussian = GaussianMixture([1.0], [[0.5, -1.0, 2.0]], covs=cov[None])
    x = gaussian.sample(400, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    oracle = gaussian.oracle(sde)
    exact = log_likelihood(oracle, sde, x, eps=1e-5)
    est = log_likelihood(oracle, sde, x, eps=1e-5, divergence="hutchinson", probe=probe,
                         generator=torch.Generator().manual_seed(4))
    diff = est.log_prob - exact.log_prob
    se = diff.std() / math.sqrt(len(diff))
    assert diff.std() > 0  # the estimator is genuinely stochastic
    assert abs(diff.mean()) < 4 * se


def test_likelihood_of_mixture_with_oracle():
    sde = VESDE(sigma_max=20.0)
    m = GaussianMixture([0.8, 0.2], [[-2.0, 0.0], [2.0, 0.0]], stds=0.5)
    x = m.sample(100, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    oracle = m.oracle(sde)
    res = log_likelihood(oracle, sde, x, eps=1e-5,
                         prior_logp=lambda z: oracle.log_prob(z, torch.ones(len(z), dtype=z.dtype)))
    truth = oracle.log_prob(x, torch.full((100,), 1e-5, dtype=torch.float64))
    assert (res.log_prob - truth).abs().max() < 1e-2


def test_bits_per_dim_offsets():
    # A uniform density on the pixel cube: exactly 8 bits/dim in any scaling.
    d = 10
    logp01 = torch.tensor([0.0])  # uniform on [0, 1]^d has density 1
    logp11 = torch.tensor([-d * math.log(2.0)])  # uniform on [-1, 1]^d has density 2^-d
    assert bits_per_dim(logp01, d, (0.0, 1.0)).item() == pytest.approx(8.0)
    assert bits_per_dim(logp11, d, (-1.0, 1.0)).item() == pytest.approx(8.0)
    with pytest.raises(ValueError, match="data_range"):
        bits_per_dim(logp01, d, (1.0, 0.0))


def test_dequantize_stays_in_bins():
    x = torch.arange(256).repeat(4)
    y = dequantize(x, (-1.0, 1.0), generator=torch.Generator().manual_seed(0))
    unit = (y + 1) / 2 * 256
    assert torch.equal(unit.floor().long(), x)
    assert y.min() >= -1 and y.max() < 1


def test_invalid_likelihood_arguments():
    sde = VPSDE()
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(lambda x, t: -x, sde, x, divergence="skilling")
    with pytest.raises(ValueError, match="probe"):
        log_likelihood(lambda x, t: -x, sde, x, divergence="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match=r"eps must lie in \(0, T"):  # s(0) = 0 for VP: the score divides by it
        log_likelihood(lambda x, t: -x, sde, x, eps=0.0)
