"""Checkpoints of earlier scorelab versions keep loading and sampling the same (``tests/fixtures/runs/``).

The fixtures are today's checkpoints of three shipped experiments with tiny networks (the toy default, the
class-conditional MNIST recipe, the toy noisy classifier) and what ``sample.py`` drew from them when they were made
(``tests/fixtures/make_runs.py``). A move of a class, a renamed config key or a changed default that old checkpoints
depend on breaks these tests: the renamed-target table (``scorelab.cli.safety.RENAMED_TARGETS``) must carry them.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from .fixtures.make_runs import RUNS, sample_fixture
from .platform_utils import ROOT

FOLDER = ROOT / "tests" / "fixtures" / "runs"


@pytest.mark.parametrize("name", list(RUNS))
def test_a_fixture_run_samples_what_it_sampled_when_it_was_made(tmp_path, name):
    expected = np.load(FOLDER / "expected.npz")[name]
    got = sample_fixture(name, FOLDER, tmp_path, str(tmp_path / "no_data_needed"))
    assert got.shape == expected.shape and got.dtype == expected.dtype
    if got.dtype == np.uint8:  # images: the same pixels
        np.testing.assert_array_equal(got, expected)
    else:  # points: the same numbers (bit-identical on the machine that made them; 1e-5 allows another CPU's SIMD)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(RUNS))
def test_a_fixture_checkpoint_is_a_plain_file(name):
    ckpt = torch.load(FOLDER / f"{name}.ckpt", weights_only=True)  # tensors, numbers, strings, containers only
    assert ckpt["global_step"] > 0 and "scorelab_config" in ckpt
