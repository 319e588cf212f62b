import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, os.cpu_count() or 1))

from scorelab.sde import VESDE, VPSDE, SubVPSDE  # noqa: E402


@pytest.fixture
def one_thread():
    """One torch thread for a test module of tiny batches: on a loaded 2-core machine OpenMP waits make each small
    op far slower with two. Use as ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def gen():
    """A seeded CPU generator: every random draw in a test is reproducible."""
    return torch.Generator().manual_seed(0)


ALL_SDES = [VPSDE(), SubVPSDE(), VESDE()]
SDE_IDS = ["vp", "subvp", "ve"]
