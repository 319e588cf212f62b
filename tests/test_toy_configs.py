"""Toy data modules take their mixture as an object (configs build it with ``_target_``); old-style configs, as
stored in older checkpoints, still work."""
from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from scorelab.cli.safety import check_stored_config
from scorelab.data.toy import GaussianMixture, eight_gaussians, grid, two_modes
from scorelab.lit.toy_datamodule import ToyDataModule

from .platform_utils import CONF


@pytest.mark.parametrize("name, preset", [("toy_two_modes", two_modes), ("toy_eight_gaussians", eight_gaussians),
                                          ("toy_grid", grid), ("toy_custom", None)])
def test_toy_configs_build_their_mixture_by_target(name, preset):
    node = OmegaConf.load(CONF / "data" / f"{name}.yaml")
    assert node.mixture._target_.startswith("scorelab.data.toy.")
    check_stored_config({"data": OmegaConf.to_container(node)}, "a checkpoint")  # allowed in stored configs
    dm = instantiate(node)
    assert isinstance(dm.mixture, GaussianMixture)
    assert dm.sample_shape == (dm.mixture.dim,) and dm.num_classes == dm.mixture.n_components
    if preset is not None:
        args = {k: v for k, v in OmegaConf.to_container(node.mixture).items() if k != "_target_"}
        assert torch.equal(dm.mixture.means, preset(**args).means)
    else:
        assert dm.mixture.n_components == len(node.mixture.weights)


def test_toy_old_style_mixtures_still_work():
    """Configs stored in older checkpoints: a preset name, {preset: ..., kwargs} or the mixture's arguments."""
    assert torch.equal(ToyDataModule("grid").mixture.means, grid().means)
    old = ToyDataModule({"preset": "two_modes", "weights": [0.5, 0.5], "separation": 6.0, "std": 0.5})
    assert old.mixture.weights.tolist() == [0.5, 0.5] and old.mixture.means[1, 0] == 3.0
    custom = ToyDataModule(OmegaConf.create({"weights": [0.3, 0.7], "means": [[0.0], [2.0]], "stds": 0.1}))
    assert custom.sample_shape == (1,) and custom.num_classes == 2
    mixture = eight_gaussians()
    assert ToyDataModule(mixture).mixture is mixture
    assert ToyDataModule().mixture.weights.tolist() == pytest.approx([0.8, 0.2])  # the default: two_modes
    with pytest.raises(ValueError, match="unknown toy preset 'moons'"):
        ToyDataModule("moons")
