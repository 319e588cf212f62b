"""Every sampler with the exact score of the 0.8 / 0.2 mixture must return the right mode weights and shapes."""
import pytest
import torch

from scorelab.data import two_modes
from scorelab.metrics import mode_weights
from scorelab.sampling import (
    Ancestral,
    AnnealedLangevin,
    EulerMaruyama,
    Langevin,
    NoCorrector,
    NoPredictor,
    ODESampler,
    PCSampler,
    ReverseDiffusion,
    time_grid,
)
from scorelab.sde import EDMSDE, VESDE, VPSDE, RectifiedFlowSDE, SubVPSDE

N = 10_000  # standard error of a mode weight: sqrt(0.16 / N) = 0.004, so +-0.02 is 5 standard errors
MIXTURE = two_modes()  # modes at (-2, 0) w.p. 0.8 and (2, 0) w.p. 0.2, std 0.5

# (name, sampler factory taking eps) at the step counts we claim.
SAMPLERS = {
    "euler_maruyama_500": lambda eps: PCSampler(EulerMaruyama(), NoCorrector(), steps=500, eps=eps),
    "reverse_diffusion_500": lambda eps: PCSampler(ReverseDiffusion(), NoCorrector(), steps=500, eps=eps),
    "ancestral_500": lambda eps: PCSampler(Ancestral(), NoCorrector(), steps=500, eps=eps),
    "pc_langevin_200": lambda eps: PCSampler(ReverseDiffusion(), Langevin(snr=0.16), steps=200, eps=eps),
    "ode_rk4_50": lambda eps: ODESampler("rk4", steps=50, eps=eps),
    "ode_heun_100": lambda eps: ODESampler("heun", steps=100, eps=eps),
    "ode_dopri5": lambda eps: ODESampler("dopri5", eps=eps, rtol=1e-5, atol=1e-5),
}
SDES = {"vp": (VPSDE(), 1e-3), "subvp": (SubVPSDE(), 1e-3), "ve": (VESDE(sigma_max=50.0), 1e-5),
        "edm": (EDMSDE(), 1e-3), "rectified_flow": (RectifiedFlowSDE(), 1e-3)}


# Every combination the mathematics allows; ancestral sampling needs a DDPM or SMLD chain, which sub-VP and the
# rectified-flow path have not (sub-VP's ValueError is tested below).
COMBINATIONS = [(s, p) for s in SDES for p in SAMPLERS
                if not (s in ("subvp", "rectified_flow") and p.startswith("ancestral"))]


@pytest.mark.parametrize("sde_name, sampler_name", COMBINATIONS)
def test_exact_score_recovers_mode_weights_and_means(sde_name, sampler_name):
    sde, eps = SDES[sde_name]
    sampler = SAMPLERS[sampler_name](eps)
    x, nfe = sampler(MIXTURE.oracle(sde), sde, (N, 2), generator=torch.Generator().manual_seed(0))
    assert x.shape == (N, 2) and torch.isfinite(x).all()
    weights = mode_weights(MIXTURE, x)
    assert torch.allclose(weights, MIXTURE.weights, atol=0.02), weights
    labels = MIXTURE.classify(x.double())
    for k in range(2):
        xk = x[labels == k].double()
        assert torch.allclose(xk.mean(0), MIXTURE.means[k], atol=0.06)
        assert torch.allclose(xk.std(0), torch.full((2,), 0.5, dtype=torch.float64), atol=0.05)
    assert nfe > 0


def test_annealed_langevin_dynamics_ve():
    sde = VESDE(sigma_max=50.0)
    sampler = PCSampler(NoPredictor(), AnnealedLangevin(snr=0.2, n_steps=5), steps=200, eps=1e-5)
    x, nfe = sampler(MIXTURE.oracle(sde), sde, (N, 2), generator=torch.Generator().manual_seed(0))
    assert nfe == 1000
    assert torch.allclose(mode_weights(MIXTURE, x), MIXTURE.weights, atol=0.05)


@pytest.mark.parametrize(
    "sampler, per_step",
    [
        (PCSampler(EulerMaruyama(), steps=7), 1),
        (PCSampler(ReverseDiffusion(), Langevin(n_steps=2), steps=7), 19 / 7),  # no corrector after the last step
        (PCSampler(NoPredictor(), AnnealedLangevin(n_steps=3), steps=7), 3),
        (ODESampler("euler", steps=7), 1),
        (ODESampler("heun", steps=7), 2),
        (ODESampler("rk4", steps=7), 4),
    ],
)
def test_nfe_is_counted_honestly(sampler, per_step):
    calls = []

    def score(x, t):
        calls.append(1)
        return -x

    _, nfe = sampler(score, VPSDE(), (4, 2), generator=torch.Generator().manual_seed(0))
    assert nfe == len(calls) == round(7 * per_step)


@pytest.mark.parametrize("steps", [5, 10, 1000])
@pytest.mark.parametrize("predictor", [ReverseDiffusion(), Ancestral(), EulerMaruyama()], ids=["rd", "anc", "em"])
def test_vp_samplers_finite_at_every_step_count(steps, predictor):
    # The reference's discrete beta_i = linspace(beta_min/N, beta_max/N, N) exceeds 1 at N = 10 and returns NaN.
    sde = VPSDE()
    n = 2000 if steps < 1000 else 500
    sampler = PCSampler(predictor, steps=steps)
    x, _ = sampler(MIXTURE.oracle(sde), sde, (n, 2), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    if steps >= 10:  # few steps are coarse but must still find both modes
        assert (mode_weights(MIXTURE, x) > 0.05).all()


def test_langevin_corrector_works_for_subvp():
    sde = SubVPSDE()
    sampler = PCSampler(NoPredictor(), Langevin(snr=0.16, n_steps=2), steps=20)
    x, _ = sampler(MIXTURE.oracle(sde), sde, (500, 2), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()


def test_ancestral_with_subvp_raises_clear_error():
    sde = SubVPSDE()
    with pytest.raises(ValueError, match="ancestral sampling is not defined for SubVPSDE"):
        PCSampler(Ancestral(), steps=10)(MIXTURE.oracle(sde), sde, (4, 2))


def test_same_seed_same_samples_and_callback():
    sde = VPSDE()
    seen = []
    sampler = PCSampler(EulerMaruyama(), Langevin(), steps=10)
    a, _ = sampler(MIXTURE.oracle(sde), sde, (8, 2), generator=torch.Generator().manual_seed(3), callback=seen.append)
    b, _ = sampler(MIXTURE.oracle(sde), sde, (8, 2), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert [s["i"] for s in seen] == list(range(10)) and seen[-1]["t"] == pytest.approx(1e-3)


def test_samplers_work_on_image_shapes():
    sde = VESDE()
    x, _ = PCSampler(ReverseDiffusion(), Langevin(), steps=5, eps=1e-5)(lambda x, t: -x / 2500.0, sde, (2, 3, 8, 8))
    assert x.shape == (2, 3, 8, 8)
    x, _ = ODESampler("heun", steps=5)(lambda x, t: -x, VPSDE(), (2, 1, 4, 4))
    assert x.shape == (2, 1, 4, 4) and torch.isfinite(x).all()


def test_time_grids():
    for kind in ("uniform", "quadratic", "logsnr", "edm"):
        ts = time_grid(20, 1e-3, kind=kind, sde=VPSDE())
        assert ts[0] == 1.0 and ts[-1] == pytest.approx(1e-3) and (ts.diff() < 0).all()
    assert torch.allclose(time_grid(4, 0.2), torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2], dtype=torch.float64))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: PCSampler(NoPredictor(), NoCorrector()), "predictor, a corrector or both"),
        (lambda: PCSampler(EulerMaruyama(), steps=0), "steps"),
        (lambda: PCSampler(EulerMaruyama(), eps=1.5), "eps"),
        (lambda: Langevin(snr=-0.1), "snr"),
        (lambda: Langevin(n_steps=0), "n_steps"),
        (lambda: ODESampler("midpoint2"), "unknown ODE method"),
        (lambda: ODESampler("dopri5", rtol=0.0), "rtol"),
        (lambda: time_grid(10, kind="cosine"), "unknown grid"),
        # eps = 0 would divide by s(0) = 0 (VP): refused by the grid and by every sampler built on it
        (lambda: time_grid(10, 0.0), r"eps must lie in \(0, T"),
        (lambda: PCSampler(EulerMaruyama(), eps=0.0), r"eps must lie in \(0, T"),
        (lambda: ODESampler("rk4", eps=0.0), r"eps must lie in \(0, T"),
        (lambda: ODESampler("dopri5", eps=-1e-3), r"eps must lie in \(0, T"),
    ],
)
def test_invalid_sampler_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("predictor", [NoPredictor, EulerMaruyama, ReverseDiffusion, Ancestral],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("corrector", [NoCorrector, Langevin, AnnealedLangevin], ids=lambda c: c.__name__)
def test_every_predictor_corrector_combination(sde_name, predictor, corrector):
    """Every SDE x predictor x corrector the mathematics allows runs and stays finite; the others say why not."""
    sde, eps = SDES[sde_name]
    if predictor is NoPredictor and corrector is NoCorrector:
        with pytest.raises(ValueError, match="predictor, a corrector or both"):
            PCSampler(NoPredictor(), NoCorrector())
        return
    sampler = PCSampler(predictor(), corrector(), steps=20, eps=eps)
    run = lambda: sampler(MIXTURE.oracle(sde), sde, (256, 2), generator=torch.Generator().manual_seed(0))  # noqa: E731
    if predictor is Ancestral and sde_name in ("subvp", "rectified_flow"):
        with pytest.raises(ValueError, match="ancestral sampling is not defined"):
            run()
        return
    x, nfe = run()
    assert torch.isfinite(x).all() and nfe >= 20
