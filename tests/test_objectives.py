"""Implicit and sliced score matching, Hutchinson traces and importance-sampled times, against exact answers.

Closed forms used (docs/objectives.md): for data ``N(0, c^2 I)`` the marginal ``p_t`` is ``N(0, v_t I)`` with
``v_t = a(t)^2 c^2 + s(t)^2``, and for a linear score ``s(x) = A x + b``
``E_{p_t}[||s||^2 + 2 tr ∇s] = v_t tr(A^T A) + ||b||^2 + 2 tr A``; for any network,
``E[DSM - ISM] = lambda(t) / s(t)^2`` per dimension; the importance density of VP is
``p(t) ∝ beta(t) / (1 - e^{-B(t)})`` with CDF ``∝ log(e^{B(t)} - 1)``.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from scorelab.cli import train
from scorelab.data import two_modes
from scorelab.models import ScoreMLP, ScoreModel
from scorelab.objectives import DSMLoss, ISMLoss, LikelihoodTimes, SSMLoss
from scorelab.ops.divergence import draw_probes, exact_trace, projected_jacobian
from scorelab.sde import VESDE, VPSDE, SubVPSDE

from .platform_utils import FAST, make_cfg

F64 = torch.float64


class LinearScore(nn.Module):
    """``s(x, t) = A x + b``, whatever ``t``."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.a, self.b = nn.Parameter(a.clone()), nn.Parameter(b.clone())

    def forward(self, x, t):
        return x @ self.a.T + self.b


def _matrix(d: int, seed: int) -> torch.Tensor:
    return torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=F64) * 0.5


def written_out(t: torch.Tensor, beta_min: float = 0.1, beta_max: float = 20.0):
    """VP's beta(t), B(t), a(t)^2 and s(t)^2 from the schedule alone (docs/math.md §2)."""
    beta = beta_min + t * (beta_max - beta_min)
    big_b = beta_min * t + 0.5 * t**2 * (beta_max - beta_min)
    return beta, big_b, torch.exp(-big_b), 1 - torch.exp(-big_b)


# --- traces ----------------------------------------------------------------------------------------------------------
def test_exact_trace_of_a_linear_score_is_tr_a():
    a = _matrix(5, 0)
    x = torch.randn(32, 5, dtype=F64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    trace = exact_trace(x @ a.T, x)
    torch.testing.assert_close(trace, torch.full((32,), float(a.trace()), dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_trace_is_unbiased_with_the_exact_variance(probe):
    # v^T A v has mean tr A; its variance is (1/2) sum_{i != j} (A_ij + A_ji)^2 for Rademacher probes and
    # (1/2) sum_{i, j} (A_ij + A_ji)^2 for Gaussian ones (Hutchinson 1989).
    d, n = 4, 40_000
    a = _matrix(d, 2)
    x = torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    (v,) = draw_probes(x, 1, probe, torch.Generator().manual_seed(4))
    if probe == "rademacher":
        assert set(v.unique().tolist()) == {-1.0, 1.0}
    est = projected_jacobian(x @ a.T, x, v)
    sym2 = (a + a.T) ** 2
    variance = 0.5 * (sym2.sum() - (sym2.diagonal().sum() if probe == "rademacher" else 0.0))
    se = math.sqrt(variance / n)
    assert abs(float(est.mean()) - float(a.trace())) < 4 * se
    assert float(est.var()) == pytest.approx(float(variance), rel=0.05)


# --- ISM and SSM against closed forms --------------------------------------------------------------------------------
LOSSES = {
    "ism-exact": lambda sde: ISMLoss(sde, trace="exact"),
    "ism-hutchinson-rademacher": lambda sde: ISMLoss(sde, trace="hutchinson", num_probes=2),
    "ism-hutchinson-gaussian": lambda sde: ISMLoss(sde, trace="hutchinson", probe="gaussian"),
    "ssm-vr": lambda sde: SSMLoss(sde),
    "ssm": lambda sde: SSMLoss(sde, variance_reduction=False, num_projections=3),
    "ssm-rademacher-g2": lambda sde: SSMLoss(sde, variance_reduction=False, probe="rademacher", weighting="g2"),
    "ism-exact-snr_sigmoid": lambda sde: ISMLoss(sde, trace="exact", weighting="snr_sigmoid", snr_shift=-1.0,
                                                 snr_floor=0.1),
    "ssm-vr-rademacher-snr_sigmoid": lambda sde: SSMLoss(sde, probe="rademacher", weighting="snr_sigmoid",
                                                         snr_shift=-1.0, snr_floor=0.1),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_objective_of_a_linear_score_on_gaussian_data_is_the_closed_form(name):
    d, n, c = 3, 40_000, 0.7
    sde = VPSDE()
    loss = LOSSES[name](sde)
    model = LinearScore(_matrix(d, 5) - torch.eye(d, dtype=F64), torch.tensor([0.3, -0.1, 0.2], dtype=F64))
    x0 = c * torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(6))
    t = torch.rand(n, dtype=F64, generator=torch.Generator().manual_seed(7)) * 0.9 + 0.05
    values = loss.per_example(model, x0, torch.Generator().manual_seed(8), t=t)
    beta, _, a2, s2 = written_out(t)
    lam = {"sigma2": s2, "g2": beta,  # snr_sigmoid: s^2 [0.1 + 0.9 sigmoid(log(a^2 / s^2) - 1)], as a ratio
           "snr_sigmoid": s2 * (0.1 + 0.9 * a2 * math.exp(-1.0) / (a2 * math.exp(-1.0) + s2))}[loss.weighting]
    a, b = model.a.detach(), model.b.detach()
    expected = lam * ((a2 * c**2 + s2) * (a**2).sum() + (b**2).sum() + 2 * a.trace()) / d
    diff = values.detach() - expected  # per-example expectation given t is exact, so the mean of diff is 0
    assert abs(float(diff.mean())) < 5 * float(diff.std()) / n**0.5 + 1e-12


@pytest.mark.parametrize("kind", ["ism", "ssm-vr"])
def test_parameter_gradients_flow_through_the_input_derivatives(kind):
    # The tr A (ISM) and v^T A v (SSM) terms reach the parameters only through create_graph: their gradients are
    # 2 I and 2 v v^T, on top of 2 (A x + b) x^T from ||s||^2.
    d, n = 3, 16
    sde = VPSDE()
    loss = ISMLoss(sde, trace="exact") if kind == "ism" else SSMLoss(sde)
    model = LinearScore(_matrix(d, 9), torch.tensor([0.1, 0.2, -0.3], dtype=F64))
    x0 = torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(10))
    t = torch.linspace(0.1, 0.9, n, dtype=F64)
    value = loss.per_example(model, x0, torch.Generator().manual_seed(11), t=t).mean()
    value.backward()
    gen = torch.Generator().manual_seed(11)  # the same draws: z, then (SSM) the projections
    z = torch.randn(n, d, generator=gen, dtype=F64)
    _, _, a2, s2 = written_out(t)
    x = a2.sqrt()[:, None] * x0 + s2.sqrt()[:, None] * z
    a, b = model.a.detach(), model.b.detach()
    s = x @ a.T + b
    w = (s2 / d / n)[:, None, None]
    if kind == "ism":
        second = torch.eye(d, dtype=F64).expand(n, d, d)
    else:
        v = torch.randn(n, 1, d, generator=gen, dtype=F64)[:, 0]
        second = v[:, :, None] * v[:, None, :]
    grad_a = (w * (2 * s[:, :, None] * x[:, None, :] + 2 * second)).sum(0)
    grad_b = (w[:, :, 0] * 2 * s).sum(0)
    torch.testing.assert_close(model.a.grad, grad_a)
    torch.testing.assert_close(model.b.grad, grad_b)


def _small_mlp(sde, seed: int) -> ScoreModel:
    torch.manual_seed(seed)
    return ScoreModel(ScoreMLP(dim=2, width=32, depth=1, embed_dim=16), sde, output="eps")


@pytest.mark.parametrize("weighting", ["sigma2", "g2", "snr_sigmoid"])
def test_dsm_minus_ism_is_the_same_constant_for_any_network(weighting):
    # E[DSM - ISM] = E_t lambda(t) / s(t)^2 (per dimension), whatever the network: the objectives differ by a
    # constant, so they have the same minimiser and the same expected gradients.
    sde, mixture, n = VPSDE(), two_modes(), 20_000
    x0 = mixture.sample(n, generator=torch.Generator().manual_seed(12), dtype=F64)
    t = torch.rand(n, dtype=F64, generator=torch.Generator().manual_seed(13)) * 0.95 + 0.05
    beta, _, _, s2 = written_out(t)
    if weighting == "g2":
        constant = float((beta / s2).mean())
    elif weighting == "snr_sigmoid":  # lambda / s^2 = 0.3 + 0.7 sigmoid(log(a^2 / s^2) - 1.5), a^2 = 1 - s^2 (VP)
        constant = float((0.3 + 0.7 * (1 - s2) * math.exp(-1.5) / ((1 - s2) * math.exp(-1.5) + s2)).mean())
    else:
        constant = 1.0
    snr = {"snr_shift": -1.5, "snr_floor": 0.3}
    dsm, ism = DSMLoss(sde, weighting=weighting, **snr), ISMLoss(sde, weighting=weighting, trace="exact", **snr)
    for model in (mixture.oracle(sde), _small_mlp(sde, 0).double(), _small_mlp(sde, 1).double()):
        diff = (dsm.per_example(model, x0, torch.Generator().manual_seed(14), t=t)
                - ism.per_example(model, x0, torch.Generator().manual_seed(14), t=t)).detach()
        se = float(diff.std()) / n**0.5
        assert abs(float(diff.mean()) - constant) < 5 * se, (type(model).__name__, float(diff.mean()), constant, se)


def test_ssm_and_ssm_vr_have_ism_expectation_on_a_network():
    sde, mixture, n = VPSDE(), two_modes(), 20_000
    model = _small_mlp(sde, 2).double()
    x0 = mixture.sample(n, generator=torch.Generator().manual_seed(15), dtype=F64)
    t = torch.rand(n, dtype=F64, generator=torch.Generator().manual_seed(16)) * 0.95 + 0.05
    ism = ISMLoss(sde, trace="exact").per_example(model, x0, torch.Generator().manual_seed(17), t=t).detach()
    for loss in (SSMLoss(sde), SSMLoss(sde, variance_reduction=False), ISMLoss(sde, trace="hutchinson")):
        other = loss.per_example(model, x0, torch.Generator().manual_seed(17), t=t).detach()
        diff = other - ism  # same x_t: only the probe terms differ
        assert abs(float(diff.mean())) < 5 * float(diff.std()) / n**0.5


def test_validation_value_under_inference_mode_equals_the_training_value():
    sde, mixture = VPSDE(), two_modes()
    model = _small_mlp(sde, 3)
    x0 = mixture.sample(256, generator=torch.Generator().manual_seed(18))
    for loss in (ISMLoss(sde), SSMLoss(sde, variance_reduction=False)):
        trained = loss(model, x0, torch.Generator().manual_seed(19))
        assert trained.requires_grad
        with torch.inference_mode():
            x_inf = x0.clone()  # an inference tensor, as Lightning's validation batches are
            checked = loss(model, x_inf, torch.Generator().manual_seed(19))
        with torch.no_grad():
            plain = loss(model, x0, torch.Generator().manual_seed(19))
        assert not checked.requires_grad and not plain.requires_grad
        torch.testing.assert_close(checked, trained.detach())
        torch.testing.assert_close(plain, trained.detach())


def test_auto_trace_is_exact_in_low_dimension_only():
    loss = ISMLoss(VPSDE())
    assert loss.uses_exact_trace(torch.zeros(4, 2)) and not loss.uses_exact_trace(torch.zeros(4, 1, 8, 8))
    assert not ISMLoss(VPSDE(), trace="hutchinson").uses_exact_trace(torch.zeros(4, 2))
    assert ISMLoss(VPSDE(), trace="exact").uses_exact_trace(torch.zeros(4, 1, 8, 8))


def test_hutchinson_ism_on_small_images_matches_the_exact_trace_in_expectation():
    # [B, 1, 5, 5] images (25 dimensions: trace="auto" takes Hutchinson's) and a linear score with tr ∇s = -12.5.
    sde, n = VESDE(sigma_max=5.0), 8000

    def score(x, t):
        return -0.5 * x + 0.1 * x.roll(1, dims=-1)

    x0 = torch.randn(n, 1, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(20))
    t = torch.full((n,), 0.5, dtype=F64)
    exact = ISMLoss(sde, trace="exact").per_example(score, x0, torch.Generator().manual_seed(21), t=t)
    hutch = ISMLoss(sde).per_example(score, x0, torch.Generator().manual_seed(21), t=t)
    diff = hutch - exact
    assert float(diff.abs().max()) > 0  # a random estimate, not the exact trace
    assert abs(float(diff.mean())) < 5 * float(diff.std()) / n**0.5
    sigma2 = (0.01 * 500**0.5) ** 2  # VE (0.01, 5): a = 1, s(t)^2 = lambda(t) = sigma(t)^2 at t = 0.5
    xt = x0 + sigma2**0.5 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(21), dtype=F64)
    # the exact value per example is sigma^2 (||s||^2 + 2 tr ∇s) / 25 with tr ∇s = -12.5 (the shift has no diagonal)
    torch.testing.assert_close(exact, sigma2 * ((score(xt, t) ** 2).mean(dim=(1, 2, 3)) - 1.0), rtol=1e-12, atol=1e-12)


# --- importance-sampled times ---------------------------------------------------------------------------------------
def _ks(samples: torch.Tensor, cdf) -> float:
    x = samples.sort().values
    n = len(x)
    f = cdf(x)
    upper = torch.arange(1, n + 1, dtype=F64) / n
    return float(torch.maximum(upper - f, f - (upper - 1 / n)).abs().max())


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_importance_times_follow_the_closed_form_distribution(name):
    eps, n = 1e-5, 100_000
    sde = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}[name]
    times = LikelihoodTimes(sde, eps)
    t = times.sample(n, torch.zeros(1, dtype=F64), torch.Generator().manual_seed(22))
    assert float(t.min()) >= eps and float(t.max()) <= 1.0

    def antiderivative(t):  # of g^2 / s^2: VP log(e^B - 1), sub-VP 2 log(e^B - 1) - B, VE uniform
        _, big_b, _, _ = written_out(torch.as_tensor(t, dtype=F64))
        if name == "vp":
            return torch.log(torch.expm1(big_b))
        if name == "subvp":
            return 2 * torch.log(torch.expm1(big_b)) - big_b
        return torch.as_tensor(t, dtype=F64) * 2 * math.log(50.0 / 0.01)

    lo, hi = antiderivative(torch.tensor(eps)), antiderivative(torch.tensor(1.0))
    assert times.normaliser == pytest.approx(float(hi - lo), rel=1e-5)
    ks = _ks(t, lambda x: (antiderivative(x) - lo) / (hi - lo))
    assert ks < 1.63 / n**0.5  # Kolmogorov-Smirnov at the 1% level
    probe = torch.tensor([2e-5, 1e-3, 0.1, 0.5, 0.99], dtype=F64)
    if name == "vp":
        beta, _, _, s2 = written_out(probe)
        # pointwise, the table's piecewise-constant cells are within h |d log p / d log t| of the smooth density
        torch.testing.assert_close(times.density(probe), beta / s2 / (hi - lo), rtol=2e-4, atol=0)


def test_importance_sampling_keeps_the_expectation_and_cuts_the_variance():
    # Oracle + delta under lambda = g^2: uniform and importance-sampled times estimate the same objective, and the
    # excess over the oracle is exactly E_t g(t)^2 ||delta||^2 / D = (B(T) - B(eps)) / (T - eps) ||delta||^2 / D.
    sde, mixture, n, eps = VPSDE(), two_modes(), 200_000, 1e-3
    oracle = mixture.oracle(sde)
    delta = torch.tensor([0.3, -0.2], dtype=F64)

    def perturbed(x, t):
        return oracle(x, t) + delta

    x0 = mixture.sample(n, generator=torch.Generator().manual_seed(23), dtype=F64)
    uniform = DSMLoss(sde, weighting="g2", eps=eps)
    weighted = DSMLoss(sde, weighting="g2", eps=eps, importance_sampling=True)
    u = uniform.per_example(perturbed, x0, torch.Generator().manual_seed(24))
    w = weighted.per_example(perturbed, x0, torch.Generator().manual_seed(24))
    se = math.sqrt(float(u.var()) / n + float(w.var()) / n)
    assert abs(float(u.mean() - w.mean())) < 4 * se
    assert float(w.var()) < 0.1 * float(u.var())

    good = weighted.per_example(oracle, x0, torch.Generator().manual_seed(24))  # the same t and z
    excess = w - good
    _, b_t, _, _ = written_out(torch.tensor([eps, 1.0], dtype=F64))
    expected = float(b_t[1] - b_t[0]) / (1 - eps) * float((delta**2).mean())
    assert abs(float(excess.mean()) - expected) < 5 * float(excess.std()) / n**0.5


# --- training --------------------------------------------------------------------------------------------------------
def _score_error(model, sde, mixture, x, times=(0.05, 0.2, 0.5, 0.9)) -> float:
    """The validation metric of ScoreModule: E ||s(t) (s_theta - s*)||^2 at fixed times, averaged over them."""
    gen = torch.Generator().manual_seed(0)
    total = 0.0
    with torch.no_grad():
        for t_val in times:
            t = torch.full((len(x),), t_val)
            std = sde.marginal_std(t)[:, None]
            xt = sde.marginal_prob(x, t)[0] + std * torch.randn(x.shape, generator=gen)
            total += float((((model(xt, t) - mixture.oracle(sde)(xt, t).float()) * std) ** 2).sum(1).mean())
    return total / len(times)


@pytest.mark.parametrize("make", [lambda sde: ISMLoss(sde), lambda sde: SSMLoss(sde)], ids=["ism", "ssm"])
def test_training_with_ism_and_ssm_lowers_the_score_error(make):
    sde, mixture = VPSDE(), two_modes()
    model = _small_mlp(sde, 4)
    loss = make(sde)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(25)
    data = mixture.sample(20_000, generator=gen)
    val = mixture.sample(2000, generator=torch.Generator().manual_seed(26))
    before = _score_error(model, sde, mixture, val)
    for _ in range(250):
        batch = data[torch.randint(0, len(data), (256,), generator=gen)]
        opt.zero_grad()
        loss(model, batch, generator=gen).backward()
        opt.step()
    after = _score_error(model, sde, mixture, val)
    assert after < 0.2 * before, (before, after)


@pytest.mark.parametrize("loss", ["ism", "ssm", "dsm_likelihood"])
def test_train_cli_runs_each_objective_with_validation(tmp_path, loss):
    cfg = make_cfg(tmp_path, FAST + [f"loss={loss}"])
    train(cfg)
    rows = (Path(cfg.paths.output_dir) / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for key in ("val/loss", "val/score_error_t0.5", "train/loss"):
        column = header.index(key)
        values = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
        assert values and all(math.isfinite(v) for v in values), key


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ISMLoss(VPSDE(), trace="diagonal"), "trace"),
        (lambda: ISMLoss(VPSDE(), probe="uniform"), "probe"),
        (lambda: ISMLoss(VPSDE(), num_probes=0), "num_probes"),
        (lambda: SSMLoss(VPSDE(), num_projections=1.5), "num_projections"),
        (lambda: SSMLoss(VPSDE(), variance_reduction="yes"), "variance_reduction"),
        (lambda: SSMLoss(VPSDE(), weighting="sigma"), "weighting"),
        (lambda: DSMLoss(VPSDE(), importance_sampling=1), "importance_sampling"),
        (lambda: LikelihoodTimes(VPSDE(), eps=0.0), "eps"),
    ],
)
def test_invalid_objective_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_an_objectives_lr_scale_multiplies_the_rate_it_is_trained_at(scale):
    from functools import partial

    from scorelab.lit.module import ScoreModule
    from scorelab.lit.schedules import linear_warmup

    sde = VPSDE()
    adam = partial(torch.optim.Adam, lr=2e-3)
    plain = ScoreModule(_small_mlp(sde, 0), sde, loss=ISMLoss(sde, lr_scale=scale), optimizer=adam)
    assert plain.configure_optimizers().param_groups[0]["lr"] == pytest.approx(2e-3 * scale)
    warm = ScoreModule(_small_mlp(sde, 0), sde, loss=SSMLoss(sde, lr_scale=scale), optimizer=adam,
                       scheduler=partial(linear_warmup, warmup_steps=10))
    scheduler = warm.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert scheduler.base_lrs == [pytest.approx(2e-3 * scale)]  # the warm-up climbs to the scaled rate
    for _ in range(10):
        scheduler.optimizer.step()
        scheduler.step()
    assert scheduler.optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 * scale)


@pytest.mark.parametrize("loss, scale", [("dsm", 1.0), ("dsm_likelihood", 1.0), ("ism", 0.5), ("ssm", 0.5),
                                         ("ddpm", 1.0)])
def test_train_cli_trains_each_objective_at_its_configured_rate(tmp_path, loss, scale):
    from scorelab.cli.common import build_core
    from scorelab.cli.train import build_module, describe_global_batch

    cfg = make_cfg(tmp_path, FAST + [f"loss={loss}", "optimizer.lr=4e-3", "scheduler=none"])
    module = build_module(cfg, build_core(cfg))
    assert module.configure_optimizers().param_groups[0]["lr"] == pytest.approx(4e-3 * scale)
    line = describe_global_batch({"global_batch": 8, "per_device": 8, "devices": 1, "nodes": 1, "accumulate": 1},
                                 4e-3, scale)
    assert ("learning rate 0.002 = optimizer.lr 0.004 x loss.lr_scale 0.5" in line) == (scale == 0.5), line
    assert ("learning rate 0.004 as configured" in line) == (scale == 1.0), line


def test_one_divergence_rule_for_the_objectives_and_the_likelihood():
    """ISM's ``trace=auto`` and the likelihood's ``divergence=auto`` are one rule (exact up to 16 dimensions)."""
    from scorelab.ops.divergence import AUTO_EXACT_MAX_DIM, choose_divergence

    loss = ISMLoss(VPSDE(), trace="auto")
    for dim in (2, AUTO_EXACT_MAX_DIM, AUTO_EXACT_MAX_DIM + 1, 784):
        expected = "exact" if dim <= 16 else "hutchinson"
        assert choose_divergence("auto", dim) == expected
        assert loss.uses_exact_trace(torch.zeros(3, dim)) == (expected == "exact")
