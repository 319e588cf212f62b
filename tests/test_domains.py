"""The kind of data is modelled, not guessed: every data module carries a domain, and only the domains ask what
the data are."""
from __future__ import annotations

import re

import pytest
import torch

from scorelab.core.errors import UserError
from scorelab.data import two_modes
from scorelab.domains import Images, Points
from scorelab.sde import VPSDE

from .platform_utils import ROOT, make_cfg

GUESSES = re.compile(r'getattr\([^)]*"(mixture|dataset_name)"|hasattr\([^)]*"(images|mixture|points)"|'
                     r'dataset_name\s*(==|!=)|len\((shape|sample_shape)\)\s*(==|!=|in)|\.get\("oracle"')


def test_no_command_callback_or_picture_guesses_the_kind_of_data():
    """The guesses of the issue (getattr(dm, "mixture"), shape and dataset-name tests, the oracle flag) are gone from
    everything but the domains; networks may still declare the shapes they take (data_arguments)."""
    found = []
    for path in sorted((ROOT / "src" / "scorelab").rglob("*.py")):
        if path.name == "domains.py" or path.parent.name == "models":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if GUESSES.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_every_data_module_carries_its_domain(tmp_path):
    from hydra.utils import instantiate

    for name, kind in [("toy_two_modes", "points"), ("toy_grid", "points"), ("mnist", "images"),
                       ("cifar10", "images")]:
        dm = instantiate(make_cfg(tmp_path, [f"data={name}"]).data)
        assert dm.domain.kind == kind and dm.domain.unit == {"points": "nats", "images": "bits/dim"}[kind]
    assert instantiate(make_cfg(tmp_path, ["data=mnist"]).data).domain.default_features() == "mnist"
    assert instantiate(make_cfg(tmp_path, ["data=cifar10"]).data).domain.default_features() == "inception"


def test_points_of_a_known_mixture_answer_exactly_and_images_refuse():
    sde, mixture = VPSDE(), two_modes()
    points = Points(2, mixture)
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.full((5,), 0.3, dtype=torch.float64)
    torch.testing.assert_close(points.exact_score(sde)(x, t), mixture.oracle(sde)(x, t))
    torch.testing.assert_close(points.exact_nll(x), -mixture.log_prob(x))
    assert points.measures_samples and points.label_judge("cpu").num_classes == 2
    assert not Points(2).measures_samples and Points(2).exact_nll(x) is None
    images = Images("cifar10", (-1.0, 1.0))
    with pytest.raises(UserError, match="needs toy data"):
        images.exact_score(sde)
    with pytest.raises(UserError, match="prior=exact needs toy data"):
        images.exact_prior(sde)
    assert images.sample_metrics(torch.zeros(2, 3, 4, 4), 0) is None and images.label_judge("cpu") is None
    assert images.accepts_features(None) and not images.accepts_features("mnist")
    assert Images("mnist", (-1.0, 1.0)).accepts_features("mnist")


def test_the_oracle_is_a_model_config_with_a_target(tmp_path):
    """model=oracle is the exact score built like any model (conf/model/oracle.yaml has a _target_)."""
    from scorelab.cli.common import build_core

    cfg = make_cfg(tmp_path, ["model=oracle", "data=toy_eight_gaussians"], config_name="sample")
    assert cfg.model._target_ == "scorelab.data.toy.exact_score"
    parts = build_core(make_cfg(tmp_path, ["model=oracle", "data=toy_eight_gaussians"]))
    x, t = torch.randn(4, 2), torch.full((4,), 0.5)
    torch.testing.assert_close(parts["score_model"](x, t), parts["datamodule"].domain.exact_score(parts["sde"])(x, t))
