"""Time grids fitted per model (fit_grid.py, scorelab.sampling.fitted): the fit against a closed-form flow map, the
stored table's round trip and refusals, and sample.py using a grid only for the solver and step count it fits."""
from __future__ import annotations

import json
import math

import pytest
import torch

from scorelab.cli.errors import UserError
from scorelab.data.toy import GaussianMixture
from scorelab.sampling import DEISSampler, DPMSolverPP, TimeGrid
from scorelab.sampling.fitted import (
    TABLE_KEY,
    FittedGrid,
    check_table,
    fit_time_grid,
    grid_key,
    is_deterministic,
    new_entry,
    reference_solution,
    with_fitted_grid,
)
from scorelab.sde import VPSDE

pytestmark = pytest.mark.usefixtures("one_thread")

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
VAR = torch.tensor([0.04, 2.25], dtype=torch.float64)  # an anisotropic Gaussian: std 0.2 and 1.5


def gaussian():
    return GaussianMixture([1.0], [MU.tolist()], stds=[VAR.sqrt().tolist()])


def exact_flow_map(sde, x_T: torch.Tensor, eps: float) -> torch.Tensor:
    """The probability-flow ODE of Gaussian data in closed form: in ``y = x / a`` each axis of variance ``v`` is the
    affine map ``y(eps) = mu + sqrt((v + sigma(eps)^2) / (v + sigma(T)^2)) (y(T) - mu)``."""
    t = torch.tensor([sde.T, eps], dtype=torch.float64)
    (a_T, a_eps), (s_T, s_eps) = sde.mean_coeff(t).tolist(), sde.sigma(t).tolist()
    return a_eps * (MU + ((VAR + s_eps**2) / (VAR + s_T**2)).sqrt() * (x_T / a_T - MU))


def noise(sde, n: int, seed: int) -> torch.Tensor:
    return sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_the_reference_solve_is_the_exact_flow_map_of_gaussian_data():
    sde = VPSDE()
    x = noise(sde, 64, 0)
    ref = reference_solution(gaussian().oracle(sde), sde, x, 1e-3, denoise=False, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(ref, exact_flow_map(sde, x, 1e-3), atol=1e-5, rtol=0)


def test_on_gaussian_data_the_fitted_grid_beats_the_uniform_log_snr_grid_at_5_steps():
    sde, eps = VPSDE(), 1e-3
    score = gaussian().oracle(sde)
    x, x_hold = noise(sde, 256, 0), noise(sde, 256, 1)
    ref, ref_hold = exact_flow_map(sde, x, eps), exact_flow_map(sde, x_hold, eps)
    sampler = DPMSolverPP(5, "2m", eps=eps, grid="logsnr", denoise=False)  # starts from the uniform log-SNR grid
    result = fit_time_grid(sampler, score, sde, x, ref, x_hold, ref_hold, max_evals=60)

    def error(s, rms: bool = False) -> float:  # measured here, against the closed form, on the held-out noise
        out, _ = s(score, sde, x_init=x_hold)
        per_draw = ((out - ref_hold) ** 2).mean(1)
        return float((per_draw.sqrt() if rms else per_draw).mean())

    fitted = DPMSolverPP(5, "2m", eps=eps, grid=FittedGrid(result.ts), denoise=False)
    assert error(fitted) < 0.5 * error(sampler)  # mean squared error
    assert math.isclose(error(fitted, rms=True), result.holdout_after, rel_tol=1e-9)  # the fitted distance
    ts = result.ts
    assert len(ts) == 6 and ts[0] == sde.T and ts[-1] == eps
    assert all(a > b for a, b in zip(ts[:-1], ts[1:], strict=True))


def test_only_deterministic_solvers_are_fitted():
    sde = VPSDE()
    score, x = gaussian().oracle(sde), noise(sde, 4, 0)
    assert is_deterministic(DPMSolverPP(5, "2m"), score, sde, x)
    assert not is_deterministic(DPMSolverPP(5, "2m_sde"), score, sde, x)


def _entry(sampler, sde, ts=None):
    ts = ts if ts is not None else sampler.grid(sampler.steps, sampler.eps, sde.T, sde=sde).tolist()
    return new_entry(sampler, sde, ts, holdout_before=2.0, holdout_after=1.0)


def test_a_fitted_grid_survives_save_and_load_in_a_checkpoint(tmp_path):
    sde, sampler = VPSDE(), DEISSampler(6, 4, "ipndm", denoise=False)
    ts = [1.0, 0.7, 0.45, 0.25, 0.1, 0.03, 1e-3]
    entry = _entry(sampler, sde, ts)
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}, TABLE_KEY: {entry["key"]: entry}}, path)
    table = check_table(torch.load(path, weights_only=True)[TABLE_KEY], str(path))
    used, note = with_fitted_grid(sampler, table, sde)
    assert used.grid(6, sampler.eps, sde.T, sde=sde).tolist() == ts
    assert "using the time grid fitted for" in note and sampler.grid == TimeGrid("edm")  # the original is untouched


@pytest.mark.parametrize("change, says", [
    (lambda e: e["ts"].__setitem__(3, float("nan")), "not finite"),
    (lambda e: e["ts"].__setitem__(3, 0.9), "not strictly decreasing"),
    (lambda e: e["ts"].pop(3), "points where 6 steps need 7"),
    (lambda e: e["ts"].__setitem__(0, 1.5), "not at the SDE's T"),
    (lambda e: e["ts"].__setitem__(-1, 0.002), "not at the sampler's eps"),
    (lambda e: e["ts"].__setitem__(2, "0.5"), "not a list of numbers"),
    (lambda e: e.__setitem__("ts", {"_target_": "os.system"}), "'ts'"),
    (lambda e: e.__setitem__("key", "other"), "says it is"),
])
def test_a_hostile_fitted_grid_is_refused_in_one_line(change, says):
    sde, sampler = VPSDE(), DEISSampler(6, 4, "ipndm", denoise=False)
    entry = _entry(sampler, sde)
    change(entry)
    with pytest.raises(UserError) as err:
        check_table({grid_key(sampler): entry}, "a.ckpt")
    assert says in str(err.value) and "\n" not in str(err.value) and "a.ckpt" in str(err.value)


def test_a_grid_is_used_only_for_the_solver_and_step_count_it_was_fitted_for():
    sde = VPSDE()
    fitted_for = DPMSolverPP(6, "2m", denoise=False)
    ts = [1.0, 0.7, 0.45, 0.25, 0.1, 0.03, 1e-3]
    table = {grid_key(fitted_for): _entry(fitted_for, sde, ts)}
    assert with_fitted_grid(DPMSolverPP(6, "2m", denoise=False), table, sde)[0].grid == FittedGrid(ts)
    for other in (DPMSolverPP(7, "2m", denoise=False), DPMSolverPP(6, "3m", denoise=False),
                  DPMSolverPP(6, "2m", denoise=True), DEISSampler(6, 2, "ipndm", denoise=False)):
        used, note = with_fitted_grid(other, table, sde)
        assert used is other and "none for" in note
    from scorelab.sde import SubVPSDE

    assert with_fitted_grid(DPMSolverPP(6, "2m", denoise=False), table, SubVPSDE())[0].grid != FittedGrid(ts)


def test_fit_grid_py_writes_a_grid_that_sample_py_uses_for_that_sampler_and_step_count_only(tmp_path):
    from .platform_utils import run_script

    common = ["model=oracle", "data=toy_two_modes", "sampler=dpmpp_2m", "sampler.denoise=false", "progress=false"]
    grids = tmp_path / "grids.json"
    fitted = run_script("fit_grid.py", [*common, "steps=6", "n_fit=64", "n_holdout=64", "max_evals=40",
                                        f"out={grids}", f"hydra.run.dir={tmp_path / 'fit'}"], cwd=tmp_path, timeout=240)
    assert fitted.returncode == 0, fitted.stdout + fitted.stderr
    assert "wrote the fitted grid for DPMSolverPP" in fitted.stdout
    (entry,) = json.loads(grids.read_text()).values()
    assert entry["steps"] == 6 and len(entry["ts"]) == 7

    def sample(folder: str, *extra: str):
        res = run_script("sample.py", [*common, "n_samples=32", f"fitted_grids={grids}", *extra,
                                       f"hydra.run.dir={tmp_path / folder}"], cwd=tmp_path, timeout=240)
        assert res.returncode == 0, res.stdout + res.stderr
        import numpy as np

        return res.stdout, np.load(tmp_path / folder / "samples.npz")["x"]

    out6, x6 = sample("s6", "sampler.steps=6")
    out7, _ = sample("s7", "sampler.steps=7")
    own6, x6_own = sample("own6", "sampler.steps=6", "fitted_grids=false")
    assert "using the time grid fitted for DPMSolverPP" in out6 and "steps=6" in out6
    assert "none for DPMSolverPP" in out7 and "using the time grid" not in out7
    assert "using the time grid" not in own6 and not (x6 == x6_own).all()
    sde = VPSDE()
    score = GaussianMixture([0.8, 0.2], [[-2.0, 0.0], [2.0, 0.0]], stds=0.5).oracle(sde)
    direct = DPMSolverPP(6, "2m", grid=FittedGrid(entry["ts"]), denoise=False)
    from scorelab.sampling.seeded import draw_seeded

    expected, _, _ = draw_seeded(direct, score, sde, (2,), list(range(32)))
    torch.testing.assert_close(torch.as_tensor(x6), expected, atol=1e-5, rtol=0)


def test_fit_grid_py_writes_into_a_checkpoint_and_a_hostile_grid_there_is_refused_in_one_line(tmp_path):
    from scorelab.cli import train

    from .platform_utils import FAST, make_cfg, run_script

    train(make_cfg(tmp_path, FAST))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    fitted = run_script("fit_grid.py", [f"ckpt_path={ckpt}", "sampler=dpmpp_2m", "steps=4", "n_fit=32", "n_holdout=32",
                                        "max_evals=24", "progress=false", f"hydra.run.dir={tmp_path / 'fit'}"],
                        cwd=tmp_path, timeout=240)
    assert fitted.returncode == 0, fitted.stdout + fitted.stderr
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    # training and fitting are seeded: this model's fitted grid beats its own on held-out noise, so it is written
    assert "nothing written" not in fitted.stdout, fitted.stdout
    (key,) = stored[TABLE_KEY]
    assert key.startswith("DPMSolverPP(") and key.endswith("steps=4")
    used = run_script("sample.py", [f"ckpt_path={ckpt}", "sampler=dpmpp_2m", "sampler.steps=4", "n_samples=16",
                                    f"hydra.run.dir={tmp_path / 's'}"], cwd=tmp_path, timeout=240)
    assert used.returncode == 0 and f"using the time grid fitted for {key}" in used.stdout, used.stdout + used.stderr
    stored[TABLE_KEY][key]["ts"][2] = float("nan")
    torch.save(stored, ckpt)
    refused = run_script("sample.py", [f"ckpt_path={ckpt}", "n_samples=16", f"hydra.run.dir={tmp_path / 'r'}"],
                         cwd=tmp_path, timeout=240)
    lines = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 2 and len(lines) == 1 and "not finite" in lines[0], refused.stderr


def test_the_fid_callback_samples_on_the_grid_fitted_for_its_sampler(capsys):
    from scorelab.lit.fid_callback import FIDCallback

    sde = VPSDE()
    sampler = DPMSolverPP(6, "2m", denoise=False)
    ts = [1.0, 0.7, 0.45, 0.25, 0.1, 0.03, 1e-3]
    entry = _entry(sampler, sde, ts)
    callback = FIDCallback(sampler, torch.nn.Identity(), n_samples=4, batch_size=4)
    assert callback.sampler_for(sde) is sampler  # no fitted grids: its own
    callback.on_load_checkpoint(None, None, {TABLE_KEY: {entry["key"]: entry}})  # resuming from a fitted checkpoint
    assert callback.sampler_for(sde).grid == FittedGrid(ts) and sampler.grid == TimeGrid("logsnr")
    callback.sampler_for(sde)
    assert capsys.readouterr().out.count("FID callback: using the time grid fitted for DPMSolverPP") == 1
    other = FIDCallback(DPMSolverPP(7, "2m", denoise=False), torch.nn.Identity(), n_samples=4, batch_size=4)
    other.on_load_checkpoint(None, None, {TABLE_KEY: {entry["key"]: entry}})
    assert other.sampler_for(sde) is other.sampler  # fitted for 6 steps, not 7
    entry["ts"][1] = float("nan")
    with pytest.raises(UserError, match="not finite"):
        FIDCallback(sampler, torch.nn.Identity()).on_load_checkpoint(None, None, {TABLE_KEY: {entry["key"]: entry}})


def test_the_few_step_targets_table_has_a_fitted_row_for_each_fitted_sampler():
    from .platform_utils import load_bench

    bench = load_bench("fast_samplers")
    lines: list[str] = []
    bench.report_targets(["vp"], 200, 1, lines.append, budgets=(), fitted=("DPM-Solver++(2M)",), fit_draws=64,
                         fit_evals=12)
    fitted = [line for line in lines if line.startswith("| DPM-Solver++(2M) | fitted | 10 |")]
    assert len(fitted) == 1 and not any(line.startswith("| UniPC-3 | fitted") for line in lines)
    notes = [line for line in "\n".join(lines).splitlines() if line.startswith("- DPM-Solver++(2M) on ")]
    assert len(notes) == 2  # one grid per mixture
    for note in notes:
        times = [float(t) for t in note.split("times ")[1].split(", ")]
        assert len(times) == 11 and times[0] == 1.0 and times[-1] == 1e-3
        assert all(a > b for a, b in zip(times, times[1:], strict=False))
