"""Few-step samplers in sigma space, their time grids and the SDEs' sigma view, held to exact answers."""
import math

import numpy as np
import pytest
import torch

from scorelab.core.rng import PerSampleGenerator
from scorelab.data import two_modes
from scorelab.data.toy import GaussianMixture
from scorelab.metrics import energy_distance, energy_distance_2d, mode_weights
from scorelab.sampling import (
    DDIMSampler,
    DEISSampler,
    DPMSolverPP,
    EDMSampler,
    EulerMaruyama,
    NoCorrector,
    ODESampler,
    PCSampler,
    TimeGrid,
    UniPCSampler,
    time_grid,
)
from scorelab.sampling.sigma_space import phi, taylor_weights
from scorelab.sde import EDMSDE, SDE, VESDE, VPSDE, RectifiedFlowSDE, SubVPSDE

N = 10_000  # standard error of a mode weight: sqrt(0.16 / N) = 0.004, so +-0.02 is 5 standard errors
MIXTURE = two_modes()  # modes at (-2, 0) w.p. 0.8 and (2, 0) w.p. 0.2, std 0.5
SDES = {"vp": (VPSDE(), 1e-3), "subvp": (SubVPSDE(), 1e-3), "ve": (VESDE(sigma_max=50.0), 1e-5),
        "edm": (EDMSDE(), 1e-3), "rectified_flow": (RectifiedFlowSDE(), 1e-3)}
F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")

# The sigma range that resolves 2-D data of unit scale (docs/bench_samplers.md); the grid still starts at T.
TOY = TimeGrid("logsnr", sigma_min=0.1, sigma_max=8.0)
# (factory of eps, the NFE we claim): each must reproduce the 0.8 / 0.2 mixture for VP, sub-VP and VE.
SAMPLERS = {
    "ddim_eta0": (lambda eps: DDIMSampler(49, eps=eps, grid=TOY), 50),
    "ddim_eta1": (lambda eps: DDIMSampler(99, eta=1.0, eps=eps, grid=TOY), 100),
    "dpmpp_2m": (lambda eps: DPMSolverPP(14, "2m", eps=eps, grid=TOY), 15),
    "dpmpp_3m": (lambda eps: DPMSolverPP(11, "3m", eps=eps, grid=TOY), 12),
    "dpmpp_2s": (lambda eps: DPMSolverPP(10, "2s", eps=eps, grid=TOY), 21),
    "dpmpp_2m_sde": (lambda eps: DPMSolverPP(39, "2m_sde", eps=eps, grid=TOY), 40),
    "unipc_3": (lambda eps: UniPCSampler(14, 3, eps=eps, grid=TOY), 15),
    "edm_heun": (lambda eps: EDMSampler(30, eps=eps), 61),
    "edm_churn": (lambda eps: EDMSampler(15, s_churn=10.0, eps=eps,
                                         grid=TimeGrid("edm", sigma_min=0.1, sigma_max=8.0)), 31),
    "deis_rhoab3": (lambda eps: DEISSampler(19, 3, "rhoab", eps=eps, grid=TOY), 20),
    "ipndm_4": (lambda eps: DEISSampler(10, 4, "ipndm", eps=eps, grid=TOY, denoise=False), 10),
}


def gaussian(m=(1.0, -0.5), c=0.7):
    """Gaussian data N(m, c^2 I) as a one-component mixture (exact score and denoiser)."""
    return GaussianMixture([1.0], [list(m)], stds=c), torch.tensor(m, dtype=F64), c


def exact_flow(sde: SDE, x_T: torch.Tensor, eps: float, m: torch.Tensor, c: float) -> torch.Tensor:
    """Closed-form probability-flow solution for N(m, c^2 I) data.

    In y = x / a, D(y, sigma) = m + c^2 (y - m) / (c^2 + sigma^2), so dy/dsigma = (y - D) / sigma becomes
    d(y - m)/dsigma = sigma (y - m) / (c^2 + sigma^2), whose solution is y - m ∝ sqrt(c^2 + sigma^2).
    """
    T, e = torch.tensor([sde.T], dtype=F64), torch.tensor([eps], dtype=F64)
    sigma_T, sigma_e = float(sde.sigma(T)), float(sde.sigma(e))
    y = m + (x_T / float(sde.mean_coeff(T)) - m) * math.sqrt((c**2 + sigma_e**2) / (c**2 + sigma_T**2))
    return float(sde.mean_coeff(e)) * y


def fitted_order(errors: list[float], steps: tuple[int, ...]) -> float:
    """Slope of log(error) against log(step size): the observed order of convergence."""
    return float(-np.polyfit(np.log(steps), np.log(errors), 1)[0])


# --- the sigma-space view of the SDEs -----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SDES))
def test_sigma_view_is_consistent_and_invertible(name):
    sde, _ = SDES[name]
    t = torch.linspace(1e-5, sde.T, 401, dtype=F64)
    sigma = sde.sigma(t)
    assert torch.allclose(sigma, sde.marginal_std(t) / sde.mean_coeff(t), rtol=1e-12)
    assert torch.allclose(sde.log_snr(t), -sigma.log(), rtol=1e-12)
    assert (sigma.diff() > 0).all()
    assert torch.allclose(sde.t_of_sigma(sigma), t, rtol=0, atol=1e-12)  # the closed form
    assert torch.allclose(SDE.t_of_sigma(sde, sigma), t, rtol=0, atol=1e-12)  # the generic bisection agrees
    if isinstance(sde, VPSDE):  # sigma^2 = e^B - 1
        assert torch.allclose(sigma**2, torch.expm1(sde.integral(t)), rtol=1e-12)
    elif isinstance(sde, SubVPSDE):  # sigma = 2 sinh(B / 2)
        assert torch.allclose(sigma, 2 * torch.sinh(sde.integral(t) / 2), rtol=1e-12)
    elif isinstance(sde, EDMSDE):  # time is the noise level
        assert torch.equal(sigma, t)
    elif isinstance(sde, RectifiedFlowSDE):  # s / a = t / (1 - t)
        assert torch.allclose(sigma, t / (1 - t), rtol=1e-12)
    else:  # VE: a = 1, so sigma(t) is the noise level it always had
        assert torch.allclose(sigma, sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t, rtol=1e-12)


@pytest.mark.parametrize("name", list(SDES))
def test_data_prediction_is_the_posterior_mean_of_gaussian_data(name):
    sde, _ = SDES[name]
    data, m, c = gaussian()
    gen = torch.Generator().manual_seed(0)
    t = torch.rand(256, generator=gen, dtype=F64) * 0.98 + 0.01
    x = 3.0 * torch.randn(256, 2, generator=gen, dtype=F64)
    denoised = sde.data_prediction(x, t, data.oracle(sde)(x, t))
    y, sigma = x / sde.mean_coeff(t)[:, None], sde.sigma(t)[:, None]
    assert torch.allclose(denoised, m + c**2 / (c**2 + sigma**2) * (y - m), rtol=1e-10, atol=1e-10)


# --- time grids ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("kind, quantity", [
    ("uniform", lambda sde, t: t),
    ("quadratic", lambda sde, t: (t - t[-1]).sqrt()),
    ("logsnr", lambda sde, t: sde.log_snr(t)),
    ("edm", lambda sde, t: sde.sigma(t) ** (1 / 7)),
])
def test_grids_are_monotone_exact_at_the_ends_and_uniform_in_their_quantity(name, kind, quantity):
    sde, eps = SDES[name]
    ts = time_grid(12, eps, sde.T, kind=kind, sde=sde)
    assert ts.dtype == F64 and ts.shape == (13,)
    assert ts[0] == sde.T and ts[-1] == eps and (ts.diff() < 0).all()
    steps = quantity(sde, ts).diff()
    assert torch.allclose(steps, steps.mean().expand(12), rtol=1e-7, atol=0), steps


def test_edm_grid_follows_rho_and_sigma_range_keeps_the_ends():
    sde = VPSDE()
    sigmas = sde.sigma(time_grid(8, 1e-3, kind="edm", sde=sde, rho=1.0))
    assert torch.allclose(sigmas.diff(), sigmas.diff().mean().expand(8), rtol=1e-7)  # rho = 1: uniform in sigma
    ts = TimeGrid("logsnr", sigma_min=0.1, sigma_max=8.0)(10, 1e-3, sde=sde)
    assert ts[0] == 1.0 and ts[-1] == 1e-3 and (ts.diff() < 0).all()
    inner = sde.log_snr(ts[1:-1])  # 9 points spaced uniformly in log-SNR from sigma = 8 to sigma = 0.1
    assert torch.allclose(sde.sigma(ts[[1, -2]]), torch.tensor([8.0, 0.1], dtype=F64), rtol=1e-10)
    assert torch.allclose(inner.diff(), inner.diff().mean().expand(8), rtol=1e-7)
    wide = TimeGrid("logsnr", sigma_min=1e-9, sigma_max=1e9)(10, 1e-3, sde=sde)  # a range wider than the SDE's
    assert torch.allclose(wide, time_grid(10, 1e-3, kind="logsnr", sde=sde))


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE()], ids=["vp", "subvp"])
@pytest.mark.parametrize("steps", [10, 20])
def test_log_std_grid_is_gone_and_its_replacement_keeps_three_modes(sde, steps):
    """Euler–Maruyama on the old uniform-in-log s(t) grid lost a mode of a 3-mode mixture; log-SNR does not."""
    mixture = GaussianMixture([0.5, 0.3, 0.2], [[-3.0, 0.0], [0.0, 0.0], [3.0, 0.0]], stds=0.5)
    with pytest.raises(ValueError, match="log_std.*removed.*logsnr"):
        time_grid(steps, kind="log_std", sde=sde)

    class Fixed(TimeGrid):  # a given list of times
        def __init__(self, ts):
            super().__init__("uniform")
            self.ts = ts

        def __call__(self, *args, **kwargs):
            return self.ts

    def run(ts):
        sampler = PCSampler(EulerMaruyama(), NoCorrector(), steps=steps, grid=Fixed(ts))
        x, _ = sampler(mixture.oracle(sde), sde, (N, 2), generator=torch.Generator().manual_seed(0))
        return float((mode_weights(mixture, x) - mixture.weights).abs().max())

    # The removed grid, rebuilt here: uniform in log s(t) from s(T) to s(eps); its first step goes to t ~ 0.22.
    fine = torch.linspace(1.0, 1e-3, 200_001, dtype=F64)
    log_std = sde.marginal_std(fine).log()
    targets = torch.linspace(float(log_std[0]), float(log_std[-1]), steps + 1, dtype=F64)
    old = fine[torch.searchsorted(-log_std, -targets).clamp(max=fine.numel() - 1)]
    old[0], old[-1] = 1.0, 1e-3
    assert run(old) > 0.2
    assert run(time_grid(steps, 1e-3, kind="logsnr", sde=sde)) < 0.15


@pytest.mark.parametrize("make, match", [
    (lambda: time_grid(0), "steps"),
    (lambda: time_grid(10, eps=1.0), "eps"),
    (lambda: time_grid(10, kind="edm", sde=VPSDE(), rho=0.0), "rho"),
    (lambda: time_grid(10, eps=0.0, kind="logsnr", sde=VPSDE()), r"eps must lie in \(0, T"),
    (lambda: time_grid(10, kind="logsnr"), "needs the sde"),
    (lambda: time_grid(10, kind="cosine"), "unknown grid"),
    (lambda: TimeGrid("uniform", sigma_min=0.1), "sigma_min only applies"),
    (lambda: TimeGrid("logsnr", sigma_min=1.0, sigma_max=0.5), "sigma_min must be smaller"),
    (lambda: TimeGrid("logsnr", sigma_max=-1.0), "sigma_max"),
    (lambda: TimeGrid("logsnr", sigma_min=0.1, sigma_max=8.0)(1, 1e-3, sde=VPSDE()), "steps = 1 is too few"),
])
def test_invalid_grid_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --- the exponential-integrator weights ---------------------------------------------------------------------
def test_phi_functions_and_taylor_weights_are_exact():
    for h in (0.01, 0.5, 0.999, 1.001, 2.0, 7.0):  # both sides of the series / recursion switch at h = 1
        assert phi(1, h) == pytest.approx(1 - math.exp(-h), rel=1e-12)
        assert phi(2, h) == pytest.approx(h - 1 + math.exp(-h), rel=1e-9)
        assert phi(3, h) == pytest.approx(h**2 / 2 - h + 1 - math.exp(-h), rel=1e-7)
    h, offsets = 0.8, [-0.5, -1.3, 0.8]
    weights = taylor_weights(h, offsets)
    u, w = np.polynomial.legendre.leggauss(20)
    u = 0.5 * h * (u + 1)
    for degree in (1, 2, 3):  # sum_k c_k (D(u_k) - D(0)) = int_0^h e^{-(h-u)} (D(u) - D(0)) du for D = u^degree
        exact = 0.5 * h * float(np.dot(w, np.exp(-(h - u)) * u**degree))
        assert sum(c * o**degree for c, o in zip(weights, offsets, strict=True)) == pytest.approx(exact, rel=1e-10)


# --- samplers: mixtures, determinism, convergence, order ----------------------------------------------------
COMBINATIONS = [(s, name) for s in SDES for name in SAMPLERS]


@pytest.mark.parametrize("sde_name, sampler_name", COMBINATIONS)
def test_exact_score_recovers_the_mixture_at_the_claimed_nfe(sde_name, sampler_name):
    sde, eps = SDES[sde_name]
    make, claimed = SAMPLERS[sampler_name]
    x, nfe = make(eps)(MIXTURE.oracle(sde), sde, (N, 2), generator=torch.Generator().manual_seed(0))
    assert nfe == claimed
    assert x.shape == (N, 2) and torch.isfinite(x).all()
    weights = mode_weights(MIXTURE, x)
    assert torch.allclose(weights, MIXTURE.weights, atol=0.02), weights
    labels = MIXTURE.classify(x.double())
    for k in range(2):
        xk = x[labels == k].double()
        assert torch.allclose(xk.mean(0), MIXTURE.means[k], atol=0.06)
        assert torch.allclose(xk.std(0), torch.full((2,), 0.5, dtype=F64), atol=0.05)


def test_ddim_eta0_is_deterministic_and_converges_to_the_probability_flow():
    sde, data = VPSDE(), MIXTURE
    x_T = sde.prior_sampling((256, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    reference, _ = ODESampler("rk4", steps=2000)(data.oracle(sde), sde, x_init=x_T)
    sampler = DDIMSampler(40, denoise=False)
    a, _ = sampler(data.oracle(sde), sde, x_init=x_T, generator=torch.Generator().manual_seed(2))
    b, _ = sampler(data.oracle(sde), sde, x_init=x_T, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)  # no randomness besides x_T
    steps = (20, 40, 80, 160)
    errors = [float((DDIMSampler(n, denoise=False)(data.oracle(sde), sde, x_init=x_T)[0] - reference).norm(dim=1)
                    .mean()) for n in steps]
    assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.03
    assert 0.8 < fitted_order(errors, steps) < 1.3  # first order


@pytest.mark.parametrize("make, order", [
    (lambda n, eps: DPMSolverPP(n, "2m", eps=eps, grid="edm", denoise=False, lower_order_final=False), 2),
    (lambda n, eps: DPMSolverPP(n, "3m", eps=eps, grid="edm", denoise=False, lower_order_final=False), 3),
    (lambda n, eps: DPMSolverPP(n, "2s", eps=eps, grid="edm", denoise=False), 2),
    (lambda n, eps: UniPCSampler(n, 2, eps=eps, grid="edm", denoise=False, lower_order_final=False), 3),
    (lambda n, eps: EDMSampler(n, eps=eps, grid="edm", denoise=False), 2),
], ids=["dpmpp_2m", "dpmpp_3m", "dpmpp_2s", "unipc_2", "edm_heun"])
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_solver_order_on_gaussian_data(make, order, sde_name):
    """Halving the steps cuts the error against the closed-form flow by 2^order.

    The grid is EDM's (non-uniform in log-SNR): on exactly uniform log-SNR steps the leading error of the
    third-order multistep method nearly cancels along this Gaussian's trajectory, which shows up as order 4.
    """
    sde, eps = SDES[sde_name]
    data, m, c = gaussian()
    x_T = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = exact_flow(sde, x_T, eps, m, c)
    steps = (20, 40, 80, 160)
    errors = [float((make(n, eps)(data.oracle(sde), sde, x_init=x_T)[0] - exact).norm(dim=1).max()) for n in steps]
    assert abs(fitted_order(errors, steps) - order) < 0.3, errors


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_sde_dpm_solver_is_weakly_second_order_on_gaussian_data(sde_name):
    """The sample variance of N(m, c^2 I) data after the reverse SDE is known in closed form,
    ``a(eps)^2 c^2 + s(eps)^2``; SDE-DPM-Solver++(2M)'s error in it falls as the step size squared, and its mean
    (a linear function of the samples) stays exact. Common random numbers keep the Monte-Carlo noise (~1e-4) out."""
    sde, eps = SDES[sde_name]
    data, m, c = gaussian(c=0.3)
    t = torch.tensor([eps], dtype=F64)
    a, s = float(sde.mean_coeff(t)), float(sde.marginal_std(t))
    steps, errors = (40, 80, 160), []
    for n in steps:
        sampler = DPMSolverPP(n, "2m_sde", eps=eps, grid="edm", denoise=False, lower_order_final=False)
        x, _ = sampler(data.oracle(sde), sde, (500_000, 2), generator=torch.Generator().manual_seed(0))
        x = x.double()
        assert torch.allclose(x.mean(0), a * m, atol=2e-3)
        errors.append(abs(float(x.var(0).mean()) - (a**2 * c**2 + s**2)))
    assert errors[-1] < 1e-3 and 1.6 < fitted_order(errors, steps) < 2.6, errors


# --- the contract: NFE, randomness, callback, shapes, arguments --------------------------------------------
@pytest.mark.parametrize("sampler, nfe", [
    (DDIMSampler(7), 8), (DDIMSampler(7, eta=0.5, denoise=False), 7),
    (DPMSolverPP(7, "2m"), 8), (DPMSolverPP(7, "3m", denoise=False), 7), (DPMSolverPP(7, "2s"), 15),
    (DPMSolverPP(7, "2m_sde"), 8),
    (UniPCSampler(7, 3), 8), (UniPCSampler(7, 2, denoise=False), 7),
    (EDMSampler(7), 15), (EDMSampler(7, s_churn=20.0, denoise=False), 14),
    (DEISSampler(7, 4, "ipndm"), 8), (DEISSampler(7, 3, "rhoab", denoise=False), 7),
], ids=repr)
def test_reported_nfe_equals_the_counted_score_calls(sampler, nfe):
    calls = []

    def score(x, t):
        calls.append(x.shape[0])
        return -x

    x, reported = sampler(score, VPSDE(), (5, 2), generator=torch.Generator().manual_seed(0))
    assert reported == len(calls) == nfe and set(calls) == {5} and torch.isfinite(x).all()


@pytest.mark.parametrize("sampler", [DDIMSampler(20, eta=1.0), DDIMSampler(20, eta=0.3, denoise=False),
                                     EDMSampler(10, s_churn=10.0), DPMSolverPP(20, "2m_sde")], ids=repr)
def test_stochastic_samplers_give_each_seed_the_same_sample_at_any_batch_size(sampler):
    sde, seeds = VPSDE(), list(range(100, 164))
    small, _ = sampler(MIXTURE.oracle(sde), sde, (7, 2), generator=PerSampleGenerator(seeds[:7]))
    large, _ = sampler(MIXTURE.oracle(sde), sde, (64, 2), generator=PerSampleGenerator(seeds))
    assert torch.allclose(small, large[:7], rtol=0, atol=1e-5)
    # the noise along the way matters: the same x_T with other seeds gives other samples
    x_T = sde.prior_sampling((7, 2), generator=PerSampleGenerator(seeds[:7]))
    other, _ = sampler(MIXTURE.oracle(sde), sde, x_init=x_T, generator=PerSampleGenerator(range(7)))
    assert (other - small).norm(dim=1).min() > 1e-3


def test_churn_never_raises_sigma_above_the_prior():
    seen = []
    sampler = EDMSampler(4, s_churn=1e6, s_noise=1.0, denoise=False)
    sde = VPSDE()
    real = sde.t_of_sigma

    def spy(sigma):  # the grid maps a whole tensor; each churned step maps its scalar sigma_hat
        if torch.as_tensor(sigma).ndim == 0:
            seen.append(float(sigma))
        return real(sigma)

    sde.t_of_sigma = spy
    sampler(MIXTURE.oracle(sde), sde, (16, 2), generator=torch.Generator().manual_seed(0))
    sigma_T = float(sde.sigma(torch.tensor(1.0, dtype=F64)))
    assert len(seen) == 3 and max(seen) <= sigma_T * (1 + 1e-12)  # steps 2-4 churn; step 1 starts at sigma(T)
    assert min(seen) > 0


@pytest.mark.parametrize("sampler", [DDIMSampler(6), DPMSolverPP(6, "3m"), DPMSolverPP(3, "2s"), UniPCSampler(6),
                                     EDMSampler(3, s_churn=5.0), DEISSampler(6, 4, "ipndm")], ids=repr)
def test_callback_follows_the_grid_and_images_work(sampler):
    sde, seen = VESDE(), []
    x, _ = sampler(lambda x, t: -x / (1.0 + sde.sigma(t) ** 2)[:, None, None, None], sde, (2, 3, 8, 8),
                   generator=torch.Generator().manual_seed(0), callback=seen.append)
    assert x.shape == (2, 3, 8, 8) and torch.isfinite(x).all()
    grid = sampler.time_grid(sde)
    assert [s["i"] for s in seen] == list(range(sampler.steps))
    assert [s["t"] for s in seen] == pytest.approx(grid[1:].tolist())
    assert all(s["x"].shape == s["x_mean"].shape == (2, 3, 8, 8) for s in seen)


@pytest.mark.parametrize("make, match", [
    (lambda: DDIMSampler(0), "steps"),
    (lambda: DDIMSampler(10, eta=1.5), "eta"),
    (lambda: DDIMSampler(10, eps=1.0), "eps"),
    (lambda: DDIMSampler(10, grid="log_std"), "log_std"),
    (lambda: DDIMSampler(10, grid=3), "grid must be"),
    (lambda: DPMSolverPP(10, "4m"), "variant"),
    (lambda: UniPCSampler(10, order=4), "order"),
    (lambda: UniPCSampler(10, variant="bh3"), "variant"),
    (lambda: EDMSampler(10, s_churn=-1.0), "s_churn"),
    (lambda: EDMSampler(10, s_noise=float("nan")), "s_noise"),
    (lambda: EDMSampler(10, s_tmin=2.0, s_tmax=1.0), "s_tmax"),
    (lambda: DEISSampler(10, order=5), "order"),
    (lambda: DEISSampler(10, variant="pndm"), "variant"),
])
def test_invalid_sampler_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --- the benchmark's energy distance ------------------------------------------------------------------------
def test_projected_energy_distance_equals_the_pairwise_one():
    gen = torch.Generator().manual_seed(0)
    x = MIXTURE.sample(1500, generator=gen)
    for y in (MIXTURE.sample(1000, generator=gen), 1.1 * MIXTURE.sample(1000, generator=gen)):
        exact = energy_distance(x, y, max_points=10_000)
        assert energy_distance_2d(x, y) == pytest.approx(exact, rel=1e-4)
