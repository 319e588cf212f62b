"""DSM loss against exact answers: the excess loss of a wrong score is E lambda(t) ||s - s*||^2 (Vincent 2011)."""
import math

import pytest
import torch

from scorelab.data import two_modes
from scorelab.models import ScoreMLP, ScoreModel
from scorelab.objectives.score_matching import DDPMLoss, DSMLoss
from scorelab.sde import EDMSDE, VESDE, VPSDE, CosineVPSDE, RectifiedFlowSDE, SubVPSDE

from .conftest import ALL_SDES, SDE_IDS


def written_out_weight(sde, weighting: str, t: torch.Tensor) -> torch.Tensor:
    """lambda(t) of Song et al. 2021 (Eq. 7), written out with the SDE's parameters only (none of its methods).

    sigma2: s(t)^2 = 1 - e^{-B} (VP), (1 - e^{-B})^2 (sub-VP), sigma(t)^2 (VE);
    g2: g(t)^2 = beta(t) (VP), beta(t) (1 - e^{-2B}) (sub-VP), sigma(t)^2 2 ln(sigma_max / sigma_min) (VE);
    snr_sigmoid (shift b, floor c): s^2 [c + (1 - c) a^2 e^b / (a^2 e^b + s^2)], a^2 = e^{-B} (VP, sub-VP), 1 (VE),
    the sigmoid of log(a^2 / s^2) + b written as a ratio.
    """
    if weighting == "none":
        return torch.ones_like(t)
    if isinstance(sde, VESDE):
        sigma2 = (sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t) ** 2
        a2, s2, g2 = torch.ones_like(t), sigma2, sigma2 * 2 * math.log(sde.sigma_max / sde.sigma_min)
    elif isinstance(sde, EDMSDE):  # sigma(t) = t: a = 1, s = t, g^2 = d[t^2]/dt
        a2, s2, g2 = torch.ones_like(t), t**2, 2 * t
    elif isinstance(sde, RectifiedFlowSDE):  # a = 1 - t, s = t, g^2 = d[s^2]/dt - 2 (a'/a) s^2 = 2t + 2t^2/(1-t)
        a2, s2, g2 = (1 - t) ** 2, t**2, 2 * t / (1 - t)
    elif isinstance(sde, CosineVPSDE):  # any VP schedule: a^2 = e^{-B}, s^2 = 1 - e^{-B}, g^2 = beta
        big_b = sde.integral(t)
        a2, s2, g2 = torch.exp(-big_b), 1 - torch.exp(-big_b), sde.beta(t)
    else:
        beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
        big_b = sde.beta_min * t + 0.5 * t**2 * (sde.beta_max - sde.beta_min)
        a2 = torch.exp(-big_b)
        if isinstance(sde, SubVPSDE):
            s2, g2 = (1 - torch.exp(-big_b)) ** 2, beta * (1 - torch.exp(-2 * big_b))
        else:
            s2, g2 = 1 - torch.exp(-big_b), beta
    if weighting == "snr_sigmoid":
        b, c = SNR_SHIFT, SNR_FLOOR
        return s2 * (c + (1 - c) * a2 * math.exp(b) / (a2 * math.exp(b) + s2))
    return s2 if weighting == "sigma2" else g2


SNR_SHIFT, SNR_FLOOR = -1.3, 0.1  # not the defaults, so that the arguments are seen to reach the weight
WEIGHTINGS = ["sigma2", "g2", "none", "snr_sigmoid"]


def make_dsm(sde, weighting, **kwargs) -> DSMLoss:
    return DSMLoss(sde, weighting=weighting, snr_shift=SNR_SHIFT, snr_floor=SNR_FLOOR, **kwargs)


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_oracle_has_lowest_loss_and_excess_is_exact(sde, weighting):
    mixture = two_modes()
    oracle = mixture.oracle(sde)
    delta = torch.tensor([0.3, -0.2], dtype=torch.float64)

    def perturbed(x, t):
        return oracle(x, t) + delta

    loss = make_dsm(sde, weighting, eps=1e-3)
    n = 200_000
    x0 = mixture.sample(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.rand(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * (sde.T - 1e-3) + 1e-3
    good = loss.per_example(oracle, x0, generator=torch.Generator().manual_seed(2), t=t)
    bad = loss.per_example(perturbed, x0, generator=torch.Generator().manual_seed(2), t=t)  # same t and z
    diff = bad - good
    # E[diff] = E_t lambda(t) ||delta||^2 / D exactly (the cross term vanishes, Vincent 2011).
    expected = (written_out_weight(sde, weighting, t) * (delta**2).mean()).mean()
    se = diff.std() / n**0.5
    assert diff.mean() > 0
    assert abs(diff.mean() - expected) < 5 * se + 1e-3 * expected


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_weight_is_the_written_out_lambda(sde, weighting):
    t = torch.tensor([1e-5, 0.1, 0.5, 1.0], dtype=torch.float64) * sde.T
    torch.testing.assert_close(make_dsm(sde, weighting).weight(t), written_out_weight(sde, weighting, t))


def test_snr_sigmoid_at_hand_computed_points():
    # VP (0.1, 20) at t = 0.5: a^2 = e^{-2.5375} = 0.0790638, s^2 = 0.9209362; with b = 0 the sigmoid of
    # log(a^2/s^2) is a^2 / (a^2 + s^2) = a^2, so lambda = s^2 (c + (1 - c) a^2). VE at sigma = 1 (log SNR = 0) with
    # b = -2: sigmoid(-2) = 0.1192029.
    loss = DSMLoss(VPSDE(), weighting="snr_sigmoid", snr_shift=0.0, snr_floor=0.05)
    t = torch.tensor([0.5], dtype=torch.float64)
    assert loss.weight(t).item() == pytest.approx(0.9209362 * (0.05 + 0.95 * 0.0790638), rel=1e-6)
    ve = VESDE(sigma_min=0.01, sigma_max=100.0)
    t_one = torch.tensor([0.5], dtype=torch.float64)  # sigma = 0.01 * 10^4^(1/2) = 1
    got = DSMLoss(ve, weighting="snr_sigmoid", snr_shift=-2.0, snr_floor=0.05).weight(t_one).item()
    assert got == pytest.approx(0.05 + 0.95 * 0.1192029, rel=1e-6)


def test_weights_at_hand_computed_points():
    # VP (0.1, 20) at t = 0.5: beta = 10.05, B = 2.5375, s^2 = 1 - e^{-2.5375}; VE (0.01, 50) at t = 0.5: sigma^2 = 0.5.
    t = torch.tensor([0.5], dtype=torch.float64)
    assert DSMLoss(VPSDE(), weighting="g2").weight(t).item() == pytest.approx(10.05)
    assert DSMLoss(VPSDE(), weighting="sigma2").weight(t).item() == pytest.approx(0.9209362, rel=1e-6)
    assert DSMLoss(SubVPSDE(), weighting="g2").weight(t).item() == pytest.approx(10.05 * (1 - math.exp(-5.075)))
    assert DSMLoss(VESDE(), weighting="sigma2").weight(t).item() == pytest.approx(0.5)
    assert DSMLoss(VESDE(), weighting="g2").weight(t).item() == pytest.approx(0.5 * 2 * math.log(5000.0))


def test_loss_trains_an_mlp_towards_the_oracle():
    torch.manual_seed(0)
    sde = VPSDE()
    mixture = two_modes()
    model = ScoreModel(ScoreMLP(dim=2, width=64, depth=2, embed_dim=32), sde, output="eps")
    loss = DSMLoss(sde)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    data = mixture.sample(20_000, generator=gen)
    for _ in range(300):
        batch = data[torch.randint(0, len(data), (512,), generator=gen)]
        opt.zero_grad()
        value = loss(model, batch, generator=gen)
        value.backward()
        opt.step()
    x = mixture.sample(4000, generator=gen)
    t = torch.full((4000,), 0.3)
    err = ((model(x, t) - mixture.oracle(sde)(x, t).float()) ** 2).mean()
    ref = (mixture.oracle(sde)(x, t) ** 2).mean()
    assert err < 0.1 * ref


def test_reduce_sum_is_dim_times_mean():
    sde = VESDE()
    x0 = torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))

    def score(x, t):
        return -x / 4.0

    mean_loss = DSMLoss(sde, reduce_mean=True).per_example(score, x0, torch.Generator().manual_seed(5))
    sum_loss = DSMLoss(sde, reduce_mean=False).per_example(score, x0, torch.Generator().manual_seed(5))
    assert torch.allclose(sum_loss, 48 * mean_loss, rtol=1e-5)


def test_ddpm_loss_of_exact_eps_is_zero_for_point_mass():
    # Data = a single point m: the exact score of x_t is -(x_t - sqrt(abar) m) / (1 - abar), so L_simple = 0.
    loss = DDPMLoss(num_steps=1000)
    m = torch.tensor([[0.7, -1.2]], dtype=torch.float64).expand(256, 2)
    abar = loss.alphas_cumprod

    times = loss.chain.sde_times(loss.sde)  # the time of step i + 1 at index i

    def exact(x, t):
        i = (t.double()[:, None] - times[None]).abs().argmin(1)
        a = abar[i][:, None]
        return -(x - a.sqrt() * m) / (1 - a)

    assert float(loss(exact, m, generator=torch.Generator().manual_seed(0))) < 1e-20

    def wrong(x, t):
        return exact(x, t) * 0.9

    assert float(loss(wrong, m, generator=torch.Generator().manual_seed(0))) > 1e-3


def test_ddpm_loss_takes_the_chain_the_sde_declares():
    # The SDE states which DDPM chain it is the limit of: VP its beta range; VE and sub-VP none.
    assert VPSDE(beta_min=0.2, beta_max=10.0).ddpm_beta_range() == (0.2, 10.0)
    torch.testing.assert_close(DDPMLoss(VPSDE(beta_min=0.2, beta_max=10.0)).alphas_cumprod,
                               DDPMLoss(beta_min=0.2, beta_max=10.0).alphas_cumprod)

    class Chained(VESDE):  # any SDE that declares a chain is accepted, whatever its class
        def ddpm_beta_range(self):
            return 0.3, 12.0

    torch.testing.assert_close(DDPMLoss(Chained()).alphas_cumprod, DDPMLoss(beta_min=0.3, beta_max=12.0).alphas_cumprod)
    for sde in (VESDE(), SubVPSDE()):
        assert sde.ddpm_beta_range() is None
        with pytest.raises(ValueError, match="limit of DDPM's chain"):
            DDPMLoss(sde)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: DSMLoss(VPSDE(), weighting="sigma"), "weighting"),
        (lambda: DSMLoss(VPSDE(), weighting="snr_sigmoid", snr_floor=0.0), "snr_floor"),
        (lambda: DSMLoss(VPSDE(), weighting="snr_sigmoid", snr_floor=1.5), "snr_floor"),
        (lambda: DSMLoss(VPSDE(), weighting="snr_sigmoid", snr_shift=float("nan")), "snr_shift"),
        (lambda: DSMLoss(VPSDE(), weighting="snr_sigmoid", snr_shift="low"), "snr_shift"),
        (lambda: DSMLoss(VPSDE(), eps=0.0), "eps"),
        (lambda: DSMLoss(VPSDE(), lr_scale=0.0), "lr_scale"),
        (lambda: DSMLoss(VPSDE(), lr_scale=-0.5), "lr_scale"),
        (lambda: DSMLoss(VPSDE(), lr_scale=float("inf")), "lr_scale"),
        (lambda: DSMLoss(VPSDE(), lr_scale=True), "lr_scale"),
        (lambda: DSMLoss(VPSDE(), lr_scale="half"), "lr_scale"),
        (lambda: DDPMLoss(num_steps=10, beta_max=20.0), "exceed 1"),
        (lambda: ScoreModel(ScoreMLP(), VPSDE(), output="velocity_field"), "output"),
    ],
)
def test_invalid_loss_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()
