"""bench/recipes.py: every recipe composes with experiment=mnist_small and builds the run it names."""

import pytest

from .platform_utils import load_bench, make_cfg


@pytest.fixture()
def bench():
    return load_bench("recipes")


EXPECTED = {  # recipe: (SDE class, model output, loss weighting, time distribution)
    "vp_dsm": ("VPSDE", "eps", "sigma2", "uniform"),
    "edm": ("EDMSDE", "edm", "edm", "log_normal"),
    "flow": ("RectifiedFlowSDE", "velocity", "flow", "uniform"),
    "vp_v_minsnr": ("VPSDE", "v", "min_snr", "uniform"),
}


def test_every_recipe_builds_the_run_it_names(bench, tmp_path):
    from scorelab.cli.runs import build_run

    assert set(bench.RECIPES) == set(EXPECTED)
    for name, (_, overrides) in bench.RECIPES.items():
        cfg = make_cfg(tmp_path, ["experiment=mnist_small", *overrides, "data.data_dir=/nonexistent"])
        run = build_run(cfg)
        sde, output, weighting, times = EXPECTED[name]
        assert type(run.module.sde).__name__ == sde, name
        assert run.module.score_model.output == output, name
        assert run.module.loss.weighting == weighting and run.module.loss.time_distribution == times, name
        assert cfg.model.net.ch == 16 and cfg.optimizer.lr == 1e-3, name  # the same network and optimizer


def _row(recipe, solver, nfe, fd, **extra):
    return {"recipe": recipe, "solver": solver, "nfe": nfe, "n": 2000, "fd_mnist": fd, "precision": 0.5,
            "recall": 0.5, "seconds": 1.0, "classes": [200] * 10, **extra}


def test_fitted_rows_get_their_own_table_next_to_the_own_grid_and_stay_out_of_the_recipe_table(bench):
    fit = {"line": "mean rms distance from the reference: fit 0.2 -> 0.1, held out 0.21 -> 0.11 (60 solver runs, 9 s)",
           "written": True, "seconds": 42.0}
    results = {
        "flow/dpmpp_2m_edm/10/2000": _row("flow", "dpmpp_2m_edm", 10, 16.0),
        "flow/dpmpp_2m/10/2000": _row("flow", "dpmpp_2m", 10, 19.0),
        "flow/dpmpp_2m_edm/10/fit": {"recipe": "flow", "fit": fit, "nfe": 10, "n": None},
        "flow/dpmpp_2m_edm/10/2000/fitted": _row("flow", "dpmpp_2m_edm", 10, 15.0, grid="fitted", fit=fit),
        "flow/dpmpp_2m_edm/8/2000/own": _row("flow", "dpmpp_2m_edm", 8, 24.0, grid="own"),
        "flow/dpmpp_2m_edm/8/2000/fitted": _row("flow", "dpmpp_2m_edm", 8, 13.5, grid="fitted", fit=fit),
        "flow/dpmpp_2m_sde/40/2000/baseline": _row("flow", "dpmpp_2m_sde", 40, 9.0, grid="own (SDE baseline)"),
    }
    assert bench._best_solver(results, "flow", 2000, 10) == "dpmpp_2m_edm"  # the fitted 15.0 is not a candidate
    lines = bench.fitted_table(results, 2000)
    rows = [line.split(" | ") for line in lines if line.startswith("| flow")]
    assert [(r[2], r[3], r[4]) for r in rows] == [("own", "10", "16.00"), ("fitted", "10", "15.00"),
                                                 ("own", "8", "24.00"), ("fitted", "8", "13.50"),
                                                 ("own (SDE baseline)", "40", "9.00")]
    assert rows[1][9] == "42" and rows[1][10].startswith("fit 0.2 -> 0.1, held out 0.21 -> 0.11")
    assert bench.fitted_table({k: v for k, v in results.items() if "grid" not in v}, 2000) == []


def test_a_run_short_of_the_steps_resumes_from_its_checkpoint_and_a_finished_one_is_kept(bench, tmp_path,
                                                                                         monkeypatch):
    import subprocess

    import torch

    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    ckpt = tmp_path / "flow" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"global_step": 1977}, ckpt)
    (tmp_path / "flow" / "train_seconds.txt").write_text("100.0\n")
    assert bench.train("flow", 1977, tmp_path, "data") == ckpt and calls == []  # done: not trained again
    bench.train("flow", 3000, tmp_path, "data")
    assert len(calls) == 1 and f"ckpt_path={ckpt}" in calls[0] and "trainer.max_steps=3000" in calls[0]
    assert float((tmp_path / "flow" / "train_seconds.txt").read_text()) >= 100.0  # the first part is kept
    calls.clear()
    with pytest.raises(SystemExit, match="train.py failed"):  # no checkpoint appears for a fresh recipe
        bench.train("edm", 3000, tmp_path, "data")
    assert not any(arg.startswith("ckpt_path=") for arg in calls[0])
