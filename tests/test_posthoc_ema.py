"""Post-hoc EMA (Karras et al. 2024): power-function averages, their snapshots and the least-squares rebuild, held
to a linear model whose parameter trajectory is known; then the callback and ema.py on a real run."""
import math

import pytest
import torch
from torch import nn

from scorelab.lit.posthoc_ema import (
    PowerEMA,
    gamma_to_sigma_rel,
    power_kernel,
    reconstruct,
    sigma_rel_to_gamma,
)

F64 = torch.float64


def trajectory(step: int) -> torch.Tensor:
    """The weights of a linear 'model' at each step: a drift, a slow oscillation and a jump, known in closed form."""
    tau = float(step)
    return torch.tensor([[0.01 * tau, math.sin(tau / 9.0)], [2.0 - 0.003 * tau, 1.0 if tau > 120 else -1.0]], dtype=F64)


def train_linear(steps: int, gammas, every: int):
    """Run the power EMAs on the trajectory; returns (snapshots every ``every`` steps, the PowerEMA)."""
    model = nn.Linear(2, 2, bias=False).double()
    ema = None
    snapshots = []
    for step in range(1, steps + 1):
        with torch.no_grad():
            model.weight.copy_(trajectory(step))
        if ema is None:
            ema = PowerEMA(model, gammas)
        ema.update(model)
        if step % every == 0:
            snapshots.append(ema.snapshot())
    return snapshots, ema


def test_sigma_rel_and_gamma_are_karras_eq_4():
    # EDM2's two profiles: sigma_rel 0.10 is gamma 6.94, 0.05 is gamma 16.97 (their Sec. 3.1)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    for s in (0.02, 0.07, 0.2):
        g = sigma_rel_to_gamma(s)
        assert math.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3))) == pytest.approx(s, rel=1e-10)
        assert gamma_to_sigma_rel(g) == pytest.approx(s, rel=1e-10)
    with pytest.raises(ValueError, match="sigma_rel must lie in"):
        sigma_rel_to_gamma(0.3)


def test_the_power_ema_is_its_discrete_kernel_applied_to_the_trajectory():
    snapshots, ema = train_linear(150, [sigma_rel_to_gamma(0.1)], every=150)
    kernel = power_kernel(ema.gammas[0], 150, 150)
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-12)
    direct = sum(kernel[i] * trajectory(i + 1) for i in range(150))
    torch.testing.assert_close(snapshots[0]["averages"][0]["weight"], direct, rtol=1e-10, atol=1e-12)


def test_the_rebuilt_average_equals_the_directly_tracked_one():
    stored = [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.10)]
    snapshots, _ = train_linear(240, stored, every=8)
    for sigma_rel in (0.05, 0.065, 0.08, 0.10, 0.13):
        for step in (240, 160):
            _, tracked = train_linear(step, [sigma_rel_to_gamma(sigma_rel)], every=10**9)
            state, info = reconstruct(snapshots, sigma_rel, step)
            direct = tracked.averages[0]["weight"]
            # the rebuild's error is the trajectory seen through the kernel residual: exactly that, and small
            length = 240
            x, basis = info["coefficients"], [(g, int(s["step"])) for s in snapshots for g in s["gammas"]]
            residual = sum(c * power_kernel(g, t, length) for c, (g, t) in zip(x, basis, strict=True)) \
                - power_kernel(sigma_rel_to_gamma(sigma_rel), step, length)
            predicted = sum(residual[i] * trajectory(i + 1) for i in range(length))
            torch.testing.assert_close(state["weight"] - direct, predicted, rtol=1e-6, atol=1e-9)
            assert info["residual"] < 0.02, (sigma_rel, step, info["residual"])
            torch.testing.assert_close(state["weight"], direct, rtol=0, atol=0.01)


def test_a_stored_profile_at_a_snapshot_step_is_rebuilt_exactly():
    stored = [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.10)]
    snapshots, ema = train_linear(96, stored, every=8)
    state, info = reconstruct(snapshots, 0.10, 96)
    assert info["residual"] < 1e-8
    torch.testing.assert_close(state["weight"], ema.averages[1]["weight"], rtol=1e-8, atol=1e-10)


def test_a_step_beyond_the_snapshots_is_refused():
    snapshots, _ = train_linear(16, [sigma_rel_to_gamma(0.1)], every=8)
    with pytest.raises(ValueError, match="step must lie in"):
        reconstruct(snapshots, 0.1, 17)


def test_training_writes_snapshots_and_ema_py_writes_a_checkpoint_sample_py_reads(tmp_path):
    from scorelab.cli import train
    from scorelab.lit.posthoc_ema import list_snapshots

    from .platform_utils import FAST, make_cfg, run_script

    train(make_cfg(tmp_path, [*FAST, "callbacks/posthoc_ema=default", "callbacks.posthoc_ema.every_n_steps=3"]))
    run = tmp_path / "run"
    files = list_snapshots(run / "ema_snapshots")
    assert [f.name for f in files] == ["ema-000000003.pt", "ema-000000006.pt", "ema-000000008.pt"]  # + the last step
    res = run_script("ema.py", [f"ckpt_path={run}", "sigma_rel=0.08", f"hydra.run.dir={tmp_path / 'ema'}"],
                     cwd=tmp_path, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    out = run / "checkpoints" / "ema_sigma0.080.ckpt"
    assert "post-hoc EMA sigma_rel 0.080 at step 8 from 3 snapshots" in res.stdout and out.is_file()
    written = torch.load(out, map_location="cpu", weights_only=False)
    expected, _ = reconstruct([torch.load(f, weights_only=False) for f in files], 0.08)
    for name, value in expected.items():
        torch.testing.assert_close(written["state_dict"][f"ema.module.{name}"], value)
    original = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert any(not torch.equal(original["state_dict"][f"ema.module.{n}"], v) for n, v in expected.items())
    sampled = run_script("sample.py", [f"ckpt_path={out}", "n_samples=16", f"hydra.run.dir={tmp_path / 's'}"],
                         cwd=tmp_path, timeout=180)
    assert sampled.returncode == 0, sampled.stdout + sampled.stderr
    missing = run_script("ema.py", [f"ckpt_path={run}", f"snapshots={tmp_path / 'none'}",
                                    f"hydra.run.dir={tmp_path / 'e2'}"], cwd=tmp_path, timeout=180)
    assert missing.returncode == 2 and "no post-hoc EMA snapshots" in missing.stderr + missing.stdout
