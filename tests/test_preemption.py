"""Preemption: SIGTERM / SIGUSR1 write last.ckpt at the current step and exit 0; ckpt_path=auto continues the run."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from scorelab.cli import train
from scorelab.cli.errors import UserError
from scorelab.cli.resume import resolve_ckpt_path, run_checkpoints
from scorelab.lit.checkpointing import AtomicCheckpointIO

from .platform_utils import FAST, ROOT, make_cfg, python_command, snapshot

# An endless run (max_steps far away) that prints "step <n>" after every step.
ENDLESS = [o for o in FAST if not o.startswith("trainer.max_steps")] + [
    "trainer.max_steps=1000000", "logger=none", "+callbacks.marker._target_=tests.faults.StepMarker"]


def interrupt(tmp_path: Path, signum: int, after_step: int = 3) -> tuple[int, str, Path]:
    """Start ``train.py``, wait (reading its output, no sleep) until ``after_step`` steps are done, send ``signum``."""
    run = tmp_path / "run"
    env = dict(os.environ, WANDB_MODE="offline", HYDRA_FULL_ERROR="0")
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([*python_command(), str(ROOT / "train.py"), *ENDLESS, f"hydra.run.dir={run}"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            for line in proc.stdout:
                if line.startswith("step ") and int(line.split()[1]) >= after_step:
                    proc.send_signal(signum)
                    break
            proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    return proc.returncode, (tmp_path / "stderr.txt").read_text(), run


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_saves_last_checkpoint_exits_zero_and_auto_resume_continues(tmp_path, signum):
    code, stderr, run = interrupt(tmp_path, signum)
    assert code == 0, stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    k = saved["global_step"]
    assert 3 <= k < 1000, k
    assert f"{signal.Signals(signum).name}: saved {last} at step {k}" in stderr
    assert saved["state_dict"]["ema.n_averaged"] == k and saved["optimizer_states"][0]["state"][0]["step"] == k
    assert not (run / "final_metrics.json").exists()  # an interrupted run does not pose as a finished one

    # The requeued job: same command, same run folder, ckpt_path=auto.
    stale = run / "checkpoints" / ".last.ckpt.k1ll3d.tmp"  # what a write killed with SIGKILL leaves behind
    stale.write_bytes(b"half a checkpoint")
    resumed = make_cfg(tmp_path / "resumed", FAST + ["ckpt_path=auto", f"trainer.max_steps={k + 5}"])
    resumed.paths.output_dir = str(run)
    train(resumed)
    assert not stale.exists()
    after = torch.load(last, weights_only=True)
    assert after["global_step"] == k + 5
    assert after["state_dict"]["ema.n_averaged"] == k + 5
    assert float(after["optimizer_states"][0]["state"][0]["step"]) == k + 5

    # ...and lands where an uninterrupted run does.
    straight = make_cfg(tmp_path / "straight", FAST + [f"trainer.max_steps={k + 5}"])
    train(straight)
    reference = torch.load(Path(straight.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(after["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_final_checkpoint_is_on_disk_before_the_end_of_training_evaluations(tmp_path):
    from .faults import LastCheckpointProbe

    LastCheckpointProbe.seen.clear()
    # 12 steps: validation (and ModelCheckpoint) ran at step 8 only. A preemption during the final sampling and
    # metrics must not lose steps 9-12.
    probe = "+callbacks.probe._target_=tests.faults.LastCheckpointProbe"
    train(make_cfg(tmp_path, FAST + ["trainer.max_steps=12", probe]))
    assert LastCheckpointProbe.seen == [(12, 12)]


def test_best_checkpoint_uses_this_epochs_validation_and_last_is_never_versioned(tmp_path):
    import csv

    # 5 epochs of 8 steps, validation after epochs 1 and 3 only (as the default trainer validates every 8th):
    # a checkpoint saved at a train epoch's end would be ranked by a stale or missing val/loss.
    cfg = make_cfg(tmp_path, FAST + ["trainer.max_steps=40", "trainer.check_val_every_n_epoch=2", "logger=csv"])
    train(cfg)
    run = Path(cfg.paths.output_dir)
    with open(next((run / "csv").glob("*/metrics.csv"))) as f:
        val = {int(r["epoch"]): float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")}
    assert sorted(val) == [1, 3]
    best_epoch = min(val, key=val.get)
    # One best checkpoint, named after the epoch whose own validation loss is the lowest, and one last.ckpt.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"epoch_{best_epoch:04d}.ckpt", "last.ckpt"]
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    (mc,) = [v for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert float(mc["best_model_score"]) == pytest.approx(val[best_epoch], rel=1e-6)
    assert state["global_step"] == 40

    # A run that ends before its first validation: last.ckpt (written at the final step) is the only file.
    short = make_cfg(tmp_path / "short", FAST + ["trainer.check_val_every_n_epoch=8"])
    train(short)
    assert sorted(p.name for p in (Path(short.paths.output_dir) / "checkpoints").iterdir()) == ["last.ckpt"]


def test_a_signal_during_a_checkpoint_write_waits_for_the_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    seen = []

    def handler(signum, frame):  # what the signal finds when it is finally delivered
        seen.append(("signal", torch.load(path, weights_only=True)["global_step"]))

    previous = signal.signal(signal.SIGUSR2, handler)
    real_save = torch.save

    def save_with_a_signal_inside(obj, f):
        os.kill(os.getpid(), signal.SIGUSR2)  # arrives in the middle of the write
        seen.append("written")
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_with_a_signal_inside)
    try:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 7}, path)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen == ["written", ("signal", 7)]  # held back until the complete file was in place


def _fake_run(folder: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": {}, "global_step": i}, path)
        os.utime(path, ns=(10**18 + i, 10**18 + i))  # later names are newer


def test_ckpt_path_last_auto_and_run_folder_pick_the_newest_checkpoint(tmp_path):
    run = tmp_path / "run"
    _fake_run(run, ["checkpoints/epoch_0001.ckpt", "checkpoints/last.ckpt", "hpc_ckpt_1.ckpt"])
    (run / "checkpoints" / ".last.ckpt.x1y2.tmp").write_bytes(b"half a checkpoint")  # left by a killed write
    assert run_checkpoints(run) == [run / "hpc_ckpt_1.ckpt", run / "checkpoints" / "last.ckpt"]
    for value in ("last", "auto"):
        assert resolve_ckpt_path(value, run) == str(run / "hpc_ckpt_1.ckpt")
    assert resolve_ckpt_path(str(run), tmp_path / "elsewhere") == str(run / "hpc_ckpt_1.ckpt")
    assert resolve_ckpt_path(str(run / "checkpoints" / "epoch_0001.ckpt"), run).endswith("epoch_0001.ckpt")
    assert resolve_ckpt_path(None, run) is None
    assert resolve_ckpt_path("auto", tmp_path / "fresh") is None  # first submission: nothing to resume yet


@pytest.mark.parametrize("value, message", [
    ("last", "ckpt_path=last: no checkpoint in"),
    ("{tmp}/old", "is a folder without a resumable checkpoint"),
])
def test_nothing_to_resume_is_one_clear_error_and_touches_nothing(tmp_path, value, message):
    old = tmp_path / "old"
    _fake_run(old, ["metrics.json"])
    before = snapshot(tmp_path)
    cfg = make_cfg(tmp_path, FAST + [f"ckpt_path={value.format(tmp=tmp_path)}"])
    with pytest.raises(UserError, match=message):
        train(cfg)
    assert snapshot(tmp_path) == before
