import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Two cores: one torch thread per pytest-xdist worker (``make test`` runs two), two without xdist; under xdist the
# commands a test starts (train.py, DDP ranks, the README's) get one thread too, so two workers never ask for more
# threads than there are cores.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, os.cpu_count() or 1) // _WORKERS)
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))



@pytest.fixture
def one_thread():
    """One torch thread for a test module of tiny batches: on a loaded 2-core machine OpenMP waits make each small
    op far slower with two. Use as ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network (any connection attempt fails) and an empty torch hub cache."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network unreachable (simulated by the test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture
def gen():
    """A seeded CPU generator: every random draw in a test is reproducible."""
    return torch.Generator().manual_seed(0)


def _shipped_sdes() -> tuple[list, list[str]]:
    """Every ``conf/sde/*.yaml``, instantiated: a new SDE joins the oracle tests by its config alone."""
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    paths = sorted((Path(__file__).resolve().parents[1] / "conf" / "sde").glob("*.yaml"))
    return [instantiate(OmegaConf.load(p)) for p in paths], [p.stem for p in paths]


ALL_SDES, SDE_IDS = _shipped_sdes()
assert {"vp", "subvp", "ve", "edm", "rectified_flow"} <= set(SDE_IDS), SDE_IDS


@pytest.fixture(scope="session")
def tiny_image_run(tmp_path_factory):
    """The one tiny image checkpoint the suite shares: a 3-channel 16x16 ``unet_small`` (8 channels) trained for two
    steps on 40 random images (``real.npz``), with a 4-image test split (``test.npz``). Tests only read it: each
    writes its samples into its own ``tmp_path``.

    Returns:
        ``SimpleNamespace(root, data, test, ckpt)``.
    """
    from types import SimpleNamespace

    from scorelab.cli import train

    from .evaluation_utils import TINY_IMAGE_RUN, write_images_npz
    from .platform_utils import make_cfg

    root = tmp_path_factory.mktemp("tiny_image_run")
    data = write_images_npz(root / "real.npz", 40)
    test = write_images_npz(root / "test.npz", 4, seed=1)
    train(make_cfg(root, TINY_IMAGE_RUN + [f"data.path={data}", f"data.test_path={test}"]))
    return SimpleNamespace(root=root, data=data, test=test, ckpt=root / "run" / "checkpoints" / "last.ckpt")
