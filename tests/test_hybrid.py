"""Improved DDPM's learned reverse variance and hybrid objective (Nichol & Dhariwal 2021, Eq. 15 and Sec. 3.1), against
closed forms written out here: the end points of the interpolation, the KL-optimal variance of Gaussian data, the
stop-gradient of the hybrid loss, and the commands that train and evaluate it."""
from __future__ import annotations

import json
import math
from pathlib import Path

import hydra.utils
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from scorelab.core.rng import sample_noise
from scorelab.models import ScoreMLP, ScoreModel
from scorelab.objectives.hybrid import HybridLoss
from scorelab.objectives.vlb import DDPMChain, bound_term, chain_times, variational_bound
from scorelab.sde import VESDE, VPSDE, CosineVPSDE

from .platform_utils import CONF, make_cfg

MU, C = 0.3, 0.2  # data x0 ~ N(MU, C^2) in each dimension
CHAINS = {"linear": VPSDE().ddpm_alphas_cumprod(50), "cosine": CosineVPSDE().ddpm_alphas_cumprod(50)}


pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_eps(abar: torch.Tensor, v=None):
    """The exact E[eps | x_t] of N(MU, C^2) data, sqrt(1 - abar) (x_t - sqrt(abar) MU) / (abar C^2 + 1 - abar), and,
    if ``v`` is given, a constant variance interpolation ``v`` next to it (the ``(eps, v)`` of a learned variance)."""
    def eps_fn(x, t):
        a = abar[t - 1].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        eps = (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * C**2 + 1 - a)
        return eps if v is None else (eps, torch.as_tensor(v, dtype=x.dtype).expand_as(x))
    return eps_fn


# --- the interpolation's end points ---------------------------------------------------------------------------------
@pytest.mark.parametrize("chain_name", list(CHAINS))
def test_v_one_is_the_beta_bound_and_v_zero_the_beta_tilde_bound(chain_name):
    abar = CHAINS[chain_name]
    chain, gen = DDPMChain(abar), torch.Generator().manual_seed(0)
    x0 = torch.round((MU + C * torch.randn(3, 4, generator=gen, dtype=torch.float64) + 1) * 127.5) / 127.5 - 1
    for t in [1, 2, 3, 17, 49, 50]:  # t = 1: the decoder L_0, whose beta~ is beta~_2
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        tt = torch.full((3,), t)
        for v, fixed in ((1.0, "beta"), (0.0, "beta_tilde")):
            learned = bound_term(chain, gaussian_eps(abar, v), x0, tt, noise, "learned")
            assert torch.allclose(learned, bound_term(chain, gaussian_eps(abar), x0, tt, noise, fixed), rtol=1e-12)
        # v = 1/2: the geometric mean of beta_t and beta~_t, exactly
        ab = [1.0] + abar.tolist()
        s = max(t, 2)
        beta, tilde = 1 - ab[t] / ab[t - 1], (1 - ab[s - 1]) / (1 - ab[s]) * (1 - ab[s] / ab[s - 1])
        var = chain.interpolated_variance(tt, torch.full_like(x0, 0.5))
        assert torch.allclose(var, torch.full_like(x0, math.sqrt(beta * tilde)), rtol=1e-12)
    for v, fixed in ((1.0, "beta"), (0.0, "beta_tilde")):  # the whole bound, same times and noises
        a = variational_bound(gaussian_eps(abar, v), x0, abar, 7, "learned", generator=torch.Generator().manual_seed(3))
        b = variational_bound(gaussian_eps(abar), x0, abar, 7, fixed, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(a.total, b.total, rtol=1e-12)
    with pytest.raises(ValueError, match="variance must be one of"):
        variational_bound(gaussian_eps(abar), x0, abar, 7, "bogus")


# --- the KL-optimal variance of Gaussian data -----------------------------------------------------------------------
def optimal_reverse_variance(ab: list[float], t: int) -> float:
    """Var(x_{t-1} | x_t) for N(MU, C^2) data: beta~_t + (coefficient of x0 in mu~_t)^2 Var(x0 | x_t), with
    Var(x0 | x_t) = C^2 (1 - abar_t) / (abar_t C^2 + 1 - abar_t) (Gaussian conditioning)."""
    beta = 1 - ab[t] / ab[t - 1]
    tilde = beta * (1 - ab[t - 1]) / (1 - ab[t])
    coef = math.sqrt(ab[t - 1]) * beta / (1 - ab[t])
    return tilde + coef**2 * C**2 * (1 - ab[t]) / (ab[t] * C**2 + 1 - ab[t])


@pytest.mark.parametrize("chain_name", list(CHAINS))
def test_the_bound_is_minimised_at_the_true_reverse_variance(chain_name):
    """With the exact posterior mean, E KL(q(x_{t-1} | x_t, x_0) || N(mu, sigma^2)) is
    (log sigma^2 - log beta~ + (beta~ + E (mu~ - mu)^2) / sigma^2 - 1) / 2, minimised at sigma^2 = Var(x_{t-1} | x_t).
    The expectation over (x0, noise) of this quadratic integrand is exact by 2-D Gauss-Hermite quadrature; Newton's
    method on the code's term, as a function of a constant v, must land on the v of that variance, inside (0, 1)."""
    abar = CHAINS[chain_name]
    ab, chain = [1.0] + abar.tolist(), DDPMChain(abar)
    nodes, weights = np.polynomial.hermite_e.hermegauss(6)
    z0, z1 = (torch.tensor(a, dtype=torch.float64).flatten() for a in np.meshgrid(nodes, nodes))
    w = torch.tensor(np.outer(weights, weights).flatten() / (2 * math.pi), dtype=torch.float64)
    x0, noise = (MU + C * z0)[:, None], z1[:, None]

    def expected_kl(t: int, v: torch.Tensor) -> torch.Tensor:
        eps_fn = gaussian_eps(abar, v)
        return (bound_term(chain, eps_fn, x0, torch.full((len(x0),), t), noise, "learned") * w).sum()

    for t in [2, 5, 20, 40, 50]:
        # the closed form two ways: conditioning the joint Gaussian (x_{t-1}, x_t) directly
        v_t, v_prev = ab[t] * C**2 + 1 - ab[t], ab[t - 1] * C**2 + 1 - ab[t - 1]
        target = optimal_reverse_variance(ab, t)
        assert target == pytest.approx(v_prev - (ab[t] / ab[t - 1]) * v_prev**2 / v_t, rel=1e-10)
        beta = 1 - ab[t] / ab[t - 1]
        tilde = beta * (1 - ab[t - 1]) / (1 - ab[t])
        assert tilde < target < beta
        v_star = (math.log(target) - math.log(tilde)) / (math.log(beta) - math.log(tilde))
        v = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        for _ in range(30):  # Newton on the code's expected term (convex in log sigma^2, which is linear in v)
            (g,) = torch.autograd.grad(expected_kl(t, v), v, create_graph=True)
            (h,) = torch.autograd.grad(g, v)
            v = (v - g / h).detach().requires_grad_(True)
        assert float(v) == pytest.approx(v_star, abs=1e-8), t
        assert 0 < v_star < 1
        best = float(expected_kl(t, v))
        mean_gap = (target - tilde)  # E (mu~ - mu)^2 per dimension
        want = 0.5 * (math.log(target / tilde) + (tilde + mean_gap) / target - 1)
        assert best == pytest.approx(want, rel=1e-9)
        for fixed in (0.0, 1.0):  # beta~ and beta are worse
            assert best < float(expected_kl(t, torch.tensor(fixed, dtype=torch.float64)))


# --- the model's variance output ------------------------------------------------------------------------------------
def tiny_mlp_model(learn_variance: bool = True, sde=None) -> ScoreModel:
    torch.manual_seed(0)
    net = ScoreMLP(dim=3, width=16, depth=1, embed_dim=8, learn_variance=learn_variance)
    with torch.no_grad():  # the output layer away from zero, so both halves of the output matter
        for p in net.out.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return ScoreModel(net, sde or VPSDE(), output="eps", learn_variance=learn_variance)


def test_score_model_splits_the_output_into_score_and_variance():
    model = tiny_mlp_model()
    x, t = torch.randn(5, 3), torch.rand(5) * 0.9 + 0.05
    raw = model.net(x, model.label(t))
    assert raw.shape == (5, 6)
    std = model.sde.marginal_std(t)[:, None]
    score, v = model(x, t, return_variance=True)
    assert torch.allclose(score, -raw[:, :3] / std) and torch.allclose(v, (raw[:, 3:] + 1) / 2)
    assert torch.equal(model(x, t), score)  # what every sampler calls: the score alone
    assert all(torch.equal(a, b) for a, b in zip(model.score_and_variance(x, t), (score, v), strict=True))
    plain = tiny_mlp_model(learn_variance=False)
    assert plain(x, t).shape == x.shape
    with pytest.raises(ValueError, match="no learned variance"):
        plain(x, t, return_variance=True)
    with pytest.raises(ValueError, match="model.learn_variance"):
        ScoreModel(ScoreMLP(dim=3), VPSDE(), learn_variance=True)


@pytest.mark.parametrize("name, shape, plain, extra", [
    ("unet_small", dict(in_channels=1, image_size=28), 1_029_905, 16 * 9 + 1),  # conv_out: 16 -> 1 more channel
    ("mlp", dict(dim=2), 133_252 - (128 * 2 + 2), 128 * 2 + 2),  # last Linear: width 128 -> 2 more outputs
])
def test_learn_variance_is_opt_in_and_adds_only_the_output_channels(name, shape, plain, extra):
    counts = {}
    with initialize_config_dir(str(CONF), version_base="1.3"):
        for flag in (False, True):
            cfg = compose(config_name=f"model/{name}", overrides=[f"model.learn_variance={str(flag).lower()}"]).model
            with torch.device("meta"):
                net = hydra.utils.instantiate(cfg.net, **shape)
                model = hydra.utils.instantiate(cfg, net=net, sde=VPSDE())
            assert net.learn_variance is flag and model.learn_variance is flag
            counts[flag] = sum(p.numel() for p in model.parameters())
    assert counts == {False: plain, True: plain + extra}


# --- the hybrid loss --------------------------------------------------------------------------------------------------
def grid_batch(n: int = 8, dim: int = 3, seed: int = 0) -> torch.Tensor:
    """Data on the 8-bit grid of [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, dim), generator=gen).float() / 127.5 - 1


def test_hybrid_terms_are_l_simple_and_the_learned_bound_term():
    sde, model = VPSDE(), tiny_mlp_model()
    loss = HybridLoss(sde, num_steps=50)
    x0, t = grid_batch(), torch.tensor([1, 2, 3, 10, 25, 40, 49, 50])
    simple, vlb = loss.terms(model, x0, torch.Generator().manual_seed(1), t)
    noise = sample_noise(x0.shape, x0, torch.Generator().manual_seed(1))
    abar = sde.ddpm_alphas_cumprod(50)
    a = abar[t - 1].float()[:, None]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    raw = model.net(xt, model.label(chain_times(sde, abar)[t - 1].float()))
    assert torch.allclose(simple, ((raw[:, :3] - noise) ** 2).mean(1), rtol=1e-4)  # eps_theta is the mean half
    eps_fn = lambda x, i: (raw[:, :3], (raw[:, 3:] + 1) / 2)  # noqa: E731 (the same network call)
    want = bound_term(DDPMChain(abar), eps_fn, x0, t, noise, "learned") / (3 * math.log(2))
    assert torch.allclose(vlb, want, rtol=1e-4)
    total = loss.per_example(model, x0, torch.Generator().manual_seed(1), t)
    assert torch.allclose(total, simple + 0.001 * 50 * vlb)
    # decoder="gaussian" (continuous data): L_0 is the density -log N(x0; mu_theta(x_1, 1), Sigma_theta(x_1, 1))
    _, vlb_g = HybridLoss(sde, num_steps=50, decoder="gaussian").terms(model, x0, torch.Generator().manual_seed(1), t)
    assert torch.equal(vlb_g[1:], vlb[1:])
    ab = abar.tolist()
    mean = (xt[0] - (1 - ab[0]) / math.sqrt(1 - ab[0]) * raw[0, :3]) / math.sqrt(ab[0])  # beta_1 = 1 - abar_1
    tilde_2 = (1 - ab[1] / ab[0]) * (1 - ab[0]) / (1 - ab[1])
    var = torch.exp((raw[0, 3:] + 1) / 2 * math.log(1 - ab[0]) + (1 - (raw[0, 3:] + 1) / 2) * math.log(tilde_2))
    nll = -torch.distributions.Normal(mean, var.sqrt()).log_prob(x0[0]).sum()
    assert float(vlb_g[0]) == pytest.approx(float(nll) / (3 * math.log(2)), rel=1e-4)
    with pytest.raises(ValueError, match="decoder"):
        HybridLoss(sde, decoder="logistic")


def test_a_class_conditional_model_trains_its_learned_variance_through_bound_labels():
    """The training step binds each example's label to the model (``BoundLabels``); the hybrid loss's
    ``return_variance`` call must reach the conditional network with those labels."""
    from scorelab.guidance.labels import BoundLabels

    torch.manual_seed(0)
    net = ScoreMLP(dim=3, width=16, depth=1, embed_dim=8, learn_variance=True, num_classes=4)
    with torch.no_grad():
        for p in [*net.out.parameters(), *net.label_embed.parameters()]:
            p.add_(0.3 * torch.randn_like(p))
    model = ScoreModel(net, VPSDE(), output="eps", learn_variance=True)
    x0, t, y = grid_batch(), torch.tensor([1, 2, 3, 10, 25, 40, 49, 50]), torch.tensor([0, 1, 2, 3, 4, 0, 1, 4])
    loss = HybridLoss(VPSDE(), num_steps=50)
    bound = loss.per_example(BoundLabels(model, y), x0, torch.Generator().manual_seed(1), t)
    def direct(x, s, **kw):
        return model(x, s, y, **kw)
    direct.learn_variance = True
    direct = loss.per_example(direct, x0, torch.Generator().manual_seed(1), t)
    null = loss.per_example(model, x0, torch.Generator().manual_seed(1), t)  # no labels: the null class (4)
    assert torch.equal(bound, direct)
    assert torch.equal(bound[y == 4], null[y == 4]) and not torch.allclose(bound[y != 4], null[y != 4])


def test_l_vlb_trains_only_the_variance_and_l_simple_only_the_mean():
    """Stop-gradient (Nichol & Dhariwal 2021, Sec. 3.1): in the output layer, the rows making eps_theta get the
    gradient of L_simple alone, the rows making v only that of lambda L_vlb; the shared layers get both."""
    model, loss = tiny_mlp_model(), HybridLoss(VPSDE(), num_steps=50)
    x0, t = grid_batch(), torch.tensor([1, 2, 3, 10, 25, 40, 49, 50])
    params = dict(model.named_parameters())

    def grads(kind: str) -> dict[str, torch.Tensor]:
        simple, vlb = loss.terms(model, x0, torch.Generator().manual_seed(1), t)
        value = {"simple": simple, "vlb": vlb, "hybrid": simple + 0.001 * 50 * vlb}[kind].mean()
        return dict(zip(params, torch.autograd.grad(value, list(params.values()), allow_unused=True,
                                                    materialize_grads=True), strict=True))

    g_simple, g_vlb, g_hybrid = grads("simple"), grads("vlb"), grads("hybrid")
    for name in ("net.out.1.weight", "net.out.1.bias"):
        mean_rows, var_rows = slice(0, 3), slice(3, 6)
        assert torch.equal(g_vlb[name][mean_rows], torch.zeros_like(g_vlb[name][mean_rows]))
        assert torch.equal(g_simple[name][var_rows], torch.zeros_like(g_simple[name][var_rows]))
        assert torch.allclose(g_hybrid[name][mean_rows], g_simple[name][mean_rows], rtol=1e-6, atol=1e-9)
        assert torch.allclose(g_hybrid[name][var_rows], 0.05 * g_vlb[name][var_rows], rtol=1e-4, atol=1e-9)
        assert g_vlb[name][var_rows].abs().sum() > 0 and g_simple[name][mean_rows].abs().sum() > 0
    assert g_vlb["net.inp.weight"].abs().sum() > 0  # the shared trunk learns from the variance too


def test_hybrid_loss_refuses_what_it_cannot_train():
    with pytest.raises(ValueError, match="learn_variance=true"):
        HybridLoss(VPSDE(), num_steps=50)(tiny_mlp_model(learn_variance=False), grid_batch())
    with pytest.raises(ValueError, match="discrete DDPM chain"):
        HybridLoss(VESDE())
    for kwargs, name in [({"num_steps": 1}, "num_steps"), ({"vlb_weight": -1.0}, "vlb_weight"),
                         ({"data_range": (1.0, -1.0)}, "data_range"), ({"reduce_mean": "yes"}, "reduce_mean")]:
        with pytest.raises(ValueError, match=name):
            HybridLoss(VPSDE(), **kwargs)
    from scorelab.cli.common import build_core

    cfg = make_cfg(Path("/nonexistent"), ["loss=hybrid"])
    with pytest.raises(ValueError, match="model.learn_variance=true"):
        build_core(cfg)


# --- checkpoints and commands -----------------------------------------------------------------------------------------
def test_checkpoints_without_the_learn_variance_keys_still_load(tmp_path):
    """A checkpoint written before learned variances existed stores no learn_variance key: it loads as before."""
    from scorelab.cli.common import build_core
    from scorelab.cli.sample import load_trained
    from scorelab.lit.module import ScoreModule

    cfg = make_cfg(tmp_path, ["trainer.max_steps=1"])
    stored = OmegaConf.to_container(cfg, resolve=True)
    del stored["model"]["learn_variance"], stored["model"]["net"]["learn_variance"]
    del stored["module"]["_target_"]  # nor did its module section name its class
    parts = build_core(OmegaConf.create(stored))
    module = ScoreModule(parts["score_model"], parts["sde"], **stored["module"])
    torch.save({"state_dict": module.state_dict(), "scorelab_config": stored}, tmp_path / "old.ckpt")
    trained = load_trained(str(tmp_path / "old.ckpt"))
    assert trained.score.learn_variance is False
    x, t = torch.randn(4, 2), torch.full((4,), 0.5)
    assert torch.equal(trained.score(x, t), module.score_fn()(x, t))


@pytest.fixture(scope="module")
def hybrid_checkpoint(tmp_path_factory) -> dict:
    """A tiny DDPM++ with a learned variance trained 6 steps with loss=hybrid (non-finite steps stop it), 8x8: one
    epoch of 5 steps, so validation (the loss under inference mode, EMA weights) runs once too."""
    from scorelab.cli import train

    root = tmp_path_factory.mktemp("hybrid")
    rng = np.random.default_rng(0)
    np.savez(root / "tiny.npz", x=rng.integers(0, 256, (24, 8, 8, 1), dtype=np.uint8))
    np.savez(root / "tiny_test.npz", x=rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8))
    cfg = make_cfg(root / "train", [
        "experiment=mnist_small", "sde=vp", "model.output=eps", "loss=hybrid", "loss.num_steps=100",
        "model.learn_variance=true", "data=npz",
        f"paths.data_dir={root}", "data.path=tiny.npz", "data.test_path=tiny_test.npz", "data.val_size=4",
        "data.batch_size=4", "data.num_workers=0", "trainer.max_steps=6", "trainer.max_time=null",
        "trainer.enable_progress_bar=false", "logger=none", "callbacks.samples.n_samples=2", "callbacks.fid=null",
        "sampler.steps=2", "module.nonfinite=stop", "model.net.ch=8", "model.net.num_res_blocks=1",
        "model.net.ch_mult=[1,2]", "model.net.attn_resolutions=[4]"])
    train(cfg)
    return {"ckpt": Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", "data_dir": root}


def test_train_loss_hybrid_gives_a_finite_learned_variance_model(hybrid_checkpoint):
    from scorelab.cli.sample import load_trained

    state = torch.load(hybrid_checkpoint["ckpt"], weights_only=True)
    assert state["global_step"] == 6 and math.isfinite(float(state["callbacks"][next(
        k for k in state["callbacks"] if k.startswith("ModelCheckpoint"))]["best_model_score"]))  # val/loss

    trained = load_trained(str(hybrid_checkpoint["ckpt"]), data_dir=str(hybrid_checkpoint["data_dir"]))
    assert trained.score.learn_variance and trained.config.loss._target_ == "scorelab.objectives.HybridLoss"
    assert all(torch.isfinite(p).all() for p in trained.score.parameters())
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    loss = HybridLoss(trained.sde, num_steps=100)(trained.score, x, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_likelihood_vlb_uses_the_learned_variance_unless_told_otherwise(tmp_path, hybrid_checkpoint):
    from scorelab.cli.likelihood import likelihood

    def run(variance: str) -> dict:
        cfg = make_cfg(tmp_path / variance, [
            f"ckpt_path={hybrid_checkpoint['ckpt']}", f"paths.data_dir={hybrid_checkpoint['data_dir']}", "split=test",
            "method=vlb", "vlb.num_steps=30", "vlb.timesteps=6", f"vlb.variance={variance}", "n=3",
            "batch_size=3", "device=cpu"], config_name="likelihood")
        result = likelihood(cfg)
        saved = json.loads((Path(cfg.paths.output_dir) / "likelihood.json").read_text())
        assert saved["vlb"]["variance"] == result["vlb"]["variance"]
        return result

    auto, learned, beta, tilde = (run(v) for v in ("auto", "learned", "beta", "beta_tilde"))
    assert auto["vlb"]["variance"] == "learned" and beta["vlb"]["variance"] == "beta"
    assert auto["mean"] == learned["mean"] and math.isfinite(auto["mean"])  # same seeds: the same bound
    assert len({auto["mean"], beta["mean"], tilde["mean"]}) == 3
    # the prior term does not depend on the variance; the same times and noises are drawn for every variance
    assert auto["vlb"]["prior"]["mean"] == pytest.approx(beta["vlb"]["prior"]["mean"], rel=1e-12)
