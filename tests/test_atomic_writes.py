"""A crash, a full disk or a kill in the middle of a write leaves the previous file in place, loadable."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import scorelab.core.io
from scorelab.cli import sample, train
from scorelab.cli.sweep import write_summary
from scorelab.lit.checkpointing import AtomicCheckpointIO, NonFiniteWeightsError

from .platform_utils import FAST, make_cfg, snapshot

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def _half_written_then(error: BaseException):
    """A ``torch.save`` that writes half the file and then fails (a full disk mid-write)."""
    real_save = torch.save

    def save(obj, f):
        real_save(obj, f)
        size = os.path.getsize(f)
        with open(f, "r+b") as handle:
            handle.truncate(size // 2)
        raise error

    return save


@pytest.mark.parametrize("where", ["torch.save", "fsync", "rename"])
def test_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    path, io = tmp_path / "last.ckpt", AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    before = path.read_bytes()
    if where == "torch.save":
        monkeypatch.setattr(torch, "save", _half_written_then(ENOSPC))
    elif where == "fsync":
        monkeypatch.setattr(scorelab.core.io.os, "fsync", lambda fd: (_ for _ in ()).throw(ENOSPC))
    else:
        monkeypatch.setattr(scorelab.core.io.os, "replace",
                            lambda a, b: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    with pytest.raises(OSError):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_process_killed_inside_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    before = path.read_bytes()
    script = f"""
import os, signal, torch
from scorelab.lit.checkpointing import AtomicCheckpointIO
real_save = torch.save
def killed_mid_write(obj, f):
    real_save(obj, f)
    with open(f, "r+b") as handle:
        handle.truncate(64)
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = killed_mid_write
AtomicCheckpointIO().save_checkpoint({{"state_dict": {{"w": torch.zeros(3)}}, "global_step": 2}}, {str(path)!r})
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert path.read_bytes() == before and torch.load(path, weights_only=True)["global_step"] == 1


def test_checkpoint_with_nonfinite_weights_is_refused(tmp_path):
    path, io = tmp_path / "last.ckpt", AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    before = snapshot(tmp_path)
    with pytest.raises(NonFiniteWeightsError, match=r"refused to write .*last.ckpt at step 2: weight w holds NaN"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan")])}, "global_step": 2}, path)
    assert snapshot(tmp_path) == before


def _failing_rename(name: str):
    """``os.replace`` that fails (disk full) when the target is called ``name`` and works otherwise."""
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    return replace


@pytest.mark.parametrize("name", ["last.ckpt", "metrics.json", "final_metrics.json"])
def test_a_training_run_that_cannot_write_keeps_the_previous_results(tmp_path, monkeypatch, name):
    first = make_cfg(tmp_path, FAST)
    train(first)
    run = Path(first.paths.output_dir)
    path = next(run.rglob(name))
    before = path.read_bytes()
    again = make_cfg(tmp_path, FAST + ["ckpt_path=auto", "trainer.max_steps=16"])  # continues in the same folder
    monkeypatch.setattr(scorelab.core.io.os, "replace", _failing_rename(name))
    with pytest.raises(OSError, match="No space left"):
        train(again)
    monkeypatch.undo()
    assert path.read_bytes() == before
    if name.endswith(".json"):
        assert json.loads(path.read_text())["global_step"] == 8
    else:
        assert torch.load(path, weights_only=True)["global_step"] == 8
    assert not list(run.rglob("*.tmp"))


def test_sweep_summary_and_samples_survive_a_failed_rewrite(tmp_path, monkeypatch):
    (tmp_path / "0").mkdir()
    write_summary(tmp_path, [{"job": "0", "sde.beta_min": "0.1", "toy/nll": 1.5}])
    oracle = ["model=oracle", "sampler=ode", "sampler.steps=5"]
    npz = sample(make_cfg(tmp_path / "s", oracle + ["n_samples=64"], config_name="sample"))
    before = snapshot(tmp_path)
    monkeypatch.setattr(scorelab.core.io.os, "fsync", lambda fd: (_ for _ in ()).throw(ENOSPC))
    with pytest.raises(OSError, match="No space left"):
        write_summary(tmp_path, [{"job": "0", "sde.beta_min": "0.2", "toy/nll": 9.9}])
    with pytest.raises(OSError, match="No space left"):
        sample(make_cfg(tmp_path / "s", oracle + ["n_samples=32"], config_name="sample"))
    monkeypatch.undo()
    assert snapshot(tmp_path) == before
    assert "0.1" in (tmp_path / "summary.csv").read_text() and np.load(npz)["x"].shape == (64, 2)


def test_atomic_files_get_the_permissions_of_an_ordinary_file(tmp_path):
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "global_step": 1}, tmp_path / "last.ckpt")
    scorelab.core.io.write_text_atomic(tmp_path / "metrics.json", "{}")
    (tmp_path / "plain.txt").write_text("")  # what the process's umask gives a file written in place
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes["last.ckpt"] == modes["metrics.json"] == modes["plain.txt"]  # colleagues can read checkpoints
