"""Helpers for platform tests: compose configs the way train.py does, with fast settings."""
from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Small, fast settings shared by platform tests (tiny step counts, few samples).
FAST = [
    "trainer.max_steps=8",  # one epoch of 4096 / 512
    "trainer.check_val_every_n_epoch=1",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "data.n_train=4096",
    "data.n_val=512",
    "data.batch_size=512",
    "sampler.steps=10",
    "callbacks.samples.n_samples=200",
    "callbacks.toy_metrics.n_samples=500",
    "model.net.width=32",
    "model.net.depth=1",
]


def make_cfg(tmp_path: Path, overrides: list[str], config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` and point every path into ``tmp_path``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


# What the fork server imports once for every command a test runs (tests/readme_harness/forkserver.py).
PRELOAD = ["numpy", "torch", "torchvision", "lightning", "hydra", "omegaconf", "matplotlib.pyplot", "scipy.linalg",
           "torchdiffeq", "torchmetrics", "scorelab.cli.entry", "scorelab.cli.train", "scorelab.cli.sample",
           "scorelab.cli.likelihood", "scorelab.cli.fid", "scorelab.tasks.images"]
_SERVER: list = []


def python_command() -> list[str]:
    """The interpreter a test's ``python ...`` subprocess runs with.

    By default the shim of a fork server (started on first use, stopped when the test session ends) that has
    imported torch, Lightning and scorelab once: the same interpreter, code and command line as a fresh
    ``python``, without ~5 s of imports per command. ``SCORELAB_TEST_REAL_PYTHON=1`` starts a fresh interpreter
    instead. A process started from inside the command (DDP ranks, ``torchrun`` workers) is always a real one.
    """
    if os.environ.get("SCORELAB_TEST_REAL_PYTHON") == "1":
        return [sys.executable]
    if not _SERVER:
        from .readme_harness.forkserver import serve

        stack = contextlib.ExitStack()
        _SERVER.append(stack.enter_context(serve(PRELOAD, Path(tempfile.mkdtemp(prefix="scorelab-tests-fs-")))))
        atexit.register(stack.close)
    return [str(_SERVER[0].bin_dir / "python")]


def run_script(script: str, args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python <script> args`` as a user would, offline W&B, with a timeout."""
    env = dict(os.environ, WANDB_MODE=os.environ.get("WANDB_MODE", "offline"), HYDRA_FULL_ERROR="0")
    env.pop("WANDB_API_KEY", None)
    return subprocess.run([*python_command(), str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def snapshot(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``: to show that a failure left files as they were."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def load_bench(name: str):
    """``bench/<name>.py`` imported as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
