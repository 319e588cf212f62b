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
