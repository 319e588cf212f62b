"""Every output parameterisation of ScoreModel (eps, x0, v, EDM preconditioning, velocity, score) turns an exact
backbone into the exact score, for every shipped SDE: the targets are written out here from a(t), s(t), f(t), g(t)."""
import math

import pytest
import torch
from torch import nn

from scorelab.data.toy import GaussianMixture
from scorelab.models import ScoreModel
from scorelab.models.score_model import OUTPUTS

from .conftest import ALL_SDES, SDE_IDS

F64 = torch.float64
MIXTURE = GaussianMixture([0.7, 0.3], [[-1.0, 0.5], [1.5, -0.5]], stds=0.4)
SIGMA_DATA = 0.6


def target(output: str, sde, x, t, score):
    """What a perfect network outputs under ``output``, from the exact score (written out, not ScoreModel's code)."""
    a, s = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
    eps = -s * score
    x0 = (x + s**2 * score) / a  # Tweedie
    if output == "score":
        return score
    if output == "eps":
        return eps
    if output == "scaled_score":
        return s * score
    if output == "x0":
        return x0
    if output == "v":  # (a eps - s x0) / sqrt(a^2 + s^2)
        return (a * eps - s * x0) / torch.sqrt(a**2 + s**2)
    if output == "edm":  # F = (D - c_skip y) / c_out with y = x / a, sigma = s / a
        sigma = s / a
        c_skip = SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2)
        c_out = sigma * SIGMA_DATA / torch.sqrt(sigma**2 + SIGMA_DATA**2)
        return (x0 - c_skip * x / a) / c_out
    if output == "velocity":  # a'(t) x0 + s'(t) eps, derivatives by central differences of a and s
        h = 1e-6 * sde.T
        da = (sde.mean_coeff(t + h) - sde.mean_coeff(t - h))[:, None] / (2 * h)
        ds = (sde.marginal_std(t + h) - sde.marginal_std(t - h))[:, None] / (2 * h)
        return da * x0 + ds * eps
    raise AssertionError(output)


class PerfectNet(nn.Module):
    """A backbone that returns the exact target of its parameterisation for the (x, t) the test is asking about;
    it checks what it is fed: the input scaling and the noise label."""

    def __init__(self, output, sde, scale_input):
        super().__init__()
        self.output, self.sde, self.scale_input = output, sde, scale_input
        self.x = self.t = None

    def forward(self, x_in, label):
        a, s = self.sde.mean_coeff(self.t)[:, None], self.sde.marginal_std(self.t)[:, None]
        expected_in = self.x / torch.sqrt(a**2 * SIGMA_DATA**2 + s**2) if self.scale_input else self.x
        torch.testing.assert_close(x_in, expected_in)
        return target(self.output, self.sde, self.x, self.t, MIXTURE.oracle(self.sde)(self.x, self.t))


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
@pytest.mark.parametrize("output", OUTPUTS)
def test_a_perfect_backbone_gives_the_exact_score_and_denoiser_under_every_parameterisation(sde, output):
    gen = torch.Generator().manual_seed(0)
    t = (torch.rand(64, generator=gen, dtype=F64) * 0.9 + 0.05) * sde.T
    x = 2.0 * torch.randn(64, 2, generator=gen, dtype=F64)
    net = PerfectNet(output, sde, scale_input=output == "edm")
    model = ScoreModel(net, sde, output=output, sigma_data=SIGMA_DATA)
    net.x, net.t = x, t
    score = model(x, t)
    exact = MIXTURE.oracle(sde)(x, t)
    rtol = 1e-5 if output == "velocity" else 1e-9  # the velocity target's derivatives are finite differences
    torch.testing.assert_close(score, exact, rtol=rtol, atol=rtol)
    # the same denoiser D = E[x0 | x_t] whatever the parameterisation
    torch.testing.assert_close(sde.data_prediction(x, t, score), sde.data_prediction(x, t, exact), rtol=rtol,
                               atol=rtol)


def test_edm_preconditioning_is_karras_table_1_on_the_edm_process():
    """On sigma(t) = t (a = 1) the wrapper's EDM output is D = c_skip x + c_out F(c_in x; c_noise), Table 1."""
    from scorelab.sde import EDMSDE

    sde = EDMSDE()
    seen = {}

    class Record(nn.Module):
        def forward(self, x_in, label):
            seen["x_in"], seen["label"] = x_in, label
            return torch.full_like(x_in, 0.25)

    model = ScoreModel(Record(), sde, output="edm", noise_label="edm", sigma_data=0.5)
    x = torch.tensor([[1.0, -2.0]], dtype=F64)
    sigma = torch.tensor([2.0], dtype=F64)
    score = model(x, sigma)
    c_skip, c_out, c_in = 0.25 / 4.25, 2.0 * 0.5 / math.sqrt(4.25), 1 / math.sqrt(4.25)
    torch.testing.assert_close(seen["x_in"], c_in * x)
    torch.testing.assert_close(seen["label"], torch.tensor([math.log(2.0) / 4], dtype=F64))
    denoised = c_skip * x + c_out * 0.25
    torch.testing.assert_close(score, (denoised - x) / 4.0)  # (D - x) / sigma^2
