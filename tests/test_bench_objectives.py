"""bench/objectives.py: the seed aggregation of its tables (seed means, ratio of means, worst per-seed ratio)."""

import pytest

from .platform_utils import load_bench


@pytest.fixture()
def bench():
    return load_bench("objectives")


def test_experiment_of_maps_each_preset_to_its_experiment(bench):
    assert bench.experiment_of("two_modes") == "toy_two_modes"
    assert bench.experiment_of("eight_gaussians") == "toy_eight_gaussians"
    assert bench.experiment_of("grid") == "toy_grid_ve"
    with pytest.raises(SystemExit, match="no experiment"):
        bench.experiment_of("spiral")


def test_every_row_composes_to_its_loss(bench):
    for label, overrides in bench.ROWS.items():
        cfg = bench.compose("two_modes", overrides, 10)
        assert cfg.loss._target_.rsplit(".", 1)[-1] in {"DSMLoss", "ISMLoss", "SSMLoss"}, label
        tags = label.split(", ")[1:]
        if "sigma2" in tags:  # the rows that reproduce the earlier tables pin lambda = s^2 and the configured rate
            assert cfg.loss.weighting == "sigma2", label
            assert cfg.loss.lr_scale == 1.0, label
        if "lr_scale 1" in tags:
            assert cfg.loss.lr_scale == 1.0, label
    shipped_ism = bench.compose("two_modes", bench.ROWS["ISM, exact trace"], 10).loss
    shipped_ssm = bench.compose("two_modes", bench.ROWS["SSM-VR, 1 projection"], 10).loss
    assert shipped_ism.weighting == "snr_sigmoid" and shipped_ism.lr_scale == 0.5
    assert shipped_ssm.probe == "rademacher" and shipped_ssm.lr_scale == 0.5
    assert bench.compose("two_modes", bench.ROWS["DSM (sigma2)"], 10).loss.lr_scale == 1.0


def test_seed_means_ratio_and_worst_seed(bench, monkeypatch):
    # Per-seed mean errors: DSM 1, 2; ISM 3, 2. Ratio of seed means (5 / 3) and worst per-seed ratio (3 / 1).
    errors = {("DSM (sigma2)", 0): [1.0] * 4, ("DSM (sigma2)", 1): [2.0] * 4,
              ("ISM, exact trace", 0): [3.0, 3.0, 2.0, 4.0], ("ISM, exact trace", 1): [2.0] * 4}
    monkeypatch.setattr(bench, "compose", lambda mixture, overrides, steps: (overrides, steps))

    def train_row(cfg):
        overrides, _ = cfg
        label = next(k for k, v in bench.ROWS.items() if list(v) == overrides[:len(v)] and len(v) == len(overrides) - 1)
        return (label, int(overrides[-1].split("=")[1])), None, 2.0

    monkeypatch.setattr(bench, "train_row", train_row)
    monkeypatch.setattr(bench, "score_errors", lambda key, _: errors[key])
    lines = []
    bench.run(["two_modes"], 10, 0, ["ISM, exact trace"], lines.append, seeds=[0, 1])
    ism = next(line for line in lines if line.startswith("| ISM"))
    cells = [c.strip() for c in ism.strip("|").split("|")]
    assert cells[1:5] == ["2.5000", "2.5000", "2.0000", "3.0000"]  # per-t seed means
    assert cells[5] == "2.5000" and cells[6] == "1.67" and cells[7] == "3.00"
    assert "means over seeds 0, 1" in "".join(lines)
