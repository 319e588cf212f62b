"""Scale: trainer presets, the global batch, data-parallel training that equals one process, distributed sampling,
sweeps of DDP jobs and the SLURM launcher configs.

DDP runs here use 2 CPU processes with gloo. ``strategy=ddp`` is never used inside pytest (rank 1 would re-run the
pytest session): those runs start ``train.py`` / ``torchrun sample.py`` as subprocesses with a timeout.
"""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from scorelab.cli import sample, train
from scorelab.cli.errors import UserError
from scorelab.cli.sample import my_batches
from scorelab.lit.toy_datamodule import EpochSeededSampler

from .platform_utils import FAST, ROOT, make_cfg, run_script

# A toy run small enough for 2 CPU processes: 1024 points, 128 per device (global batch 256), 4 steps per epoch.
SMALL = [o for o in FAST if not o.startswith(("data.", "trainer.max_steps"))] + [
    "data.n_train=1024", "data.n_val=256", "callbacks.samples.n_samples=100", "callbacks.toy_metrics.n_samples=300",
    "trainer.max_steps=1"]
DDP2 = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
STATE_KEYS = ("state_dict", "optimizer_states", "global_step")


def _ckpt(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def _assert_same_training_state(a: dict, b: dict, atol: float) -> None:
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in b["state_dict"].items():
        torch.testing.assert_close(a["state_dict"][key].float(), value.float(), rtol=0, atol=atol, msg=key)
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values(),
                      strict=True):
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sa[name], sb[name], rtol=0, atol=atol, msg=name)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One step of a 2-process DDP toy run (128 per device, W&B offline): its log folder and the command output."""
    root = tmp_path_factory.mktemp("ddp")
    args = SMALL + DDP2 + ["data.batch_size=128", "logger=wandb"]
    res = run_script("train.py", args, cwd=root, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return root, res.stdout + res.stderr


def _only_run(root: Path) -> Path:
    runs = [p for p in (root / "logs" / "train" / "runs").iterdir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_one_ddp_step_equals_one_process_with_the_same_global_batch(ddp_run, tmp_path):
    """2 ranks x 128 examples and 1 process x 256 make the same step, up to float rounding of the all-reduce.

    Two things make this exact rather than equal in distribution: the sampler deals the epoch's permutation out by
    position (rank r takes r, r + 2, ...), so the union of the ranks' batches is the 1-process batch; and the loss
    noise (t and z) of an example is that of its position in the *global* batch (every rank draws the noise of all
    256 from the step's generator and keeps its rows), not of a per-rank stream, which would give other noise.
    """
    root, output = ddp_run
    two = _ckpt(_only_run(root))
    assert two["global_step"] == 1
    one_cfg = make_cfg(tmp_path, SMALL + ["data.batch_size=256", "logger=none"])
    train(one_cfg)
    one = _ckpt(Path(one_cfg.paths.output_dir))
    _assert_same_training_state(two, one, atol=1e-6)
    assert any(bool(state["exp_avg"].abs().sum() > 0) for state in two["optimizer_states"][0]["state"].values())
    assert "global batch 256 = 128 per device x 2 device(s) x 1 node(s) x 1 accumulation step(s)" in output


def test_ddp_run_has_one_folder_one_logger_run_and_one_set_of_pictures(ddp_run):
    root, _ = ddp_run
    run = _only_run(root)
    assert [p.name for p in (run / "csv").iterdir()] == ["version_0"]
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    assert [p.name for p in (run / "samples").iterdir()] == ["final.png"]
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 1


def test_ddp_resume_continues_the_step_count(ddp_run, tmp_path):
    root, _ = ddp_run
    run = _only_run(root)
    first = _ckpt(run)
    args = SMALL[:-1] + DDP2 + ["data.batch_size=128", "logger=csv", "trainer.max_steps=3", "ckpt_path=auto",
                                f"hydra.run.dir={run}"]
    res = run_script("train.py", args, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    after = _ckpt(run)
    assert first["global_step"] == 1 and after["global_step"] == 3
    assert after["state_dict"]["ema.n_averaged"] == 3
    assert float(after["optimizer_states"][0]["state"][0]["step"]) == 3
    assert _only_run(root) == run  # resumed in place: still one run folder


def test_gradient_accumulation_equals_the_whole_batch_at_once(tmp_path):
    """128 x 2 micro-batches per step make the step of one batch of 256: the data and the noise of the global batch
    are dealt out by position, and Lightning averages the micro-batch losses."""
    runs = {}
    for name, extra in (("acc", ["data.batch_size=128", "trainer.accumulate_grad_batches=2"]),
                        ("whole", ["data.batch_size=256"])):
        cfg = make_cfg(tmp_path / name, SMALL + extra + ["logger=none"])
        train(cfg)
        runs[name] = _ckpt(Path(cfg.paths.output_dir))
    _assert_same_training_state(runs["acc"], runs["whole"], atol=1e-6)


def test_sharded_sampler_deals_the_one_process_batches_out_by_position():
    consumed = {"n": 0}
    one = list(EpochSeededSampler(40, seed=1, position_fn=lambda: consumed["n"], epoch_size=40))
    ranks = [list(EpochSeededSampler(40, seed=1, position_fn=lambda: consumed["n"], epoch_size=40, rank=r, world=2))
             for r in range(2)]
    assert ranks[0] == one[0::2] and ranks[1] == one[1::2]
    consumed["n"] = 48  # mid-epoch 2: both ranks skip the 8 samples the global batches already took
    one = list(EpochSeededSampler(40, seed=1, position_fn=lambda: consumed["n"], epoch_size=40))
    rank1 = list(EpochSeededSampler(40, seed=1, position_fn=lambda: consumed["n"], epoch_size=40, rank=1, world=2))
    assert len(one) == 32 and rank1 == one[1::2]


def test_training_set_smaller_than_the_global_batch_is_one_clear_error():
    from types import SimpleNamespace

    from scorelab.lit.toy_datamodule import train_sampler

    trainer = SimpleNamespace(world_size=2, global_rank=0, global_step=0, accumulate_grad_batches=1)
    with pytest.raises(UserError, match=r"smaller than one global batch \(64 per device x 2 devices\)"):
        train_sampler(trainer, 100, 64, seed=0)
    assert len(train_sampler(trainer, 128, 64, seed=0)) == 64


# --- distributed sampling ------------------------------------------------------------------------------------------
def test_batches_of_a_seed_range_are_dealt_out_without_gaps_or_repeats():
    for n, batch, world in ((23, 4, 2), (5, 8, 3), (100, 7, 4)):
        shards = [my_batches(range(10, 10 + n), batch, r, world) for r in range(world)]
        seeds = sorted(s for shard in shards for _, chunk in shard for s in chunk)
        assert seeds == list(range(10, 10 + n))
        assert sorted(start for shard in shards for start, _ in shard) == list(range(0, n, batch))


def test_torchrun_sampling_on_two_processes_equals_one_process(tmp_path):
    args = ["model=oracle", "sampler=euler_maruyama", "sampler.steps=5", "n_samples=23", "batch_size=4",
            "progress=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(ROOT / "sample.py"), *args]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = list((tmp_path / "logs" / "sample" / "runs").iterdir())  # one run folder for the job
    two = np.load(run / "samples.npz")
    cfg = make_cfg(tmp_path / "one", args, config_name="sample")
    one = np.load(sample(cfg))
    assert two["x"].shape == (23, 2) and two["seeds"].tolist() == list(range(23))  # n exactly, no repeated seed
    np.testing.assert_allclose(two["x"], one["x"], rtol=0, atol=1e-6)
    assert int(two["nfe"]) == 5 and int(two["nfe_total"]) == int(one["nfe_total"]) == 5 * math.ceil(23 / 4)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["batches"] == 6


# --- sweeps -------------------------------------------------------------------------------------------------------
def test_multirun_of_two_ddp_jobs_writes_two_job_folders_and_nothing_else(tmp_path):
    """``-m ... trainer=ddp``: each job's rank 1 joins that job (no re-run of the sweep, no extra folders)."""
    args = ["-m"] + SMALL + DDP2 + ["data.batch_size=128", "trainer.max_steps=2", "logger=csv",
                                    "sde.beta_min=0.05,0.1"]
    res = run_script("train.py", args, cwd=tmp_path, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [p.name for p in (tmp_path / "logs" / "train").iterdir()] == ["multiruns"]
    (sweep,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]
    for job in jobs:
        ckpt = torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == 2
        assert ckpt["scorelab_config"]["sde"]["beta_min"] == (0.05, 0.1)[int(job)]
    with (sweep / "summary.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2


# --- presets and configuration --------------------------------------------------------------------------------------
def test_debug_preset_is_deterministic_detects_anomalies_and_runs_two_batches(tmp_path):
    cfg = make_cfg(tmp_path, SMALL[:-1] + ["trainer=debug", "data.batch_size=128", "logger=none"])
    assert cfg.trainer.deterministic is True and cfg.trainer.detect_anomaly is True
    assert cfg.trainer.fast_dev_run == 2 and cfg.trainer.max_steps == 3000  # the experiment's 3000 does not apply
    train(cfg)
    final = json.loads((Path(cfg.paths.output_dir) / "final_metrics.json").read_text())
    assert final["global_step"] == 2


@pytest.mark.parametrize("preset", ["gpu", "ddp"])
@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
def test_gpu_presets_take_the_three_precisions(tmp_path, preset, precision):
    cfg = make_cfg(tmp_path, [f"trainer={preset}", f"trainer.precision={precision}"])
    assert cfg.trainer.accelerator == "gpu" and str(cfg.trainer.precision) == precision
    from scorelab.cli.train import check_trainer_config

    check_trainer_config(cfg.trainer)  # accepted


def test_ddp_preset_takes_the_node_count_from_slurm(tmp_path, monkeypatch):
    assert make_cfg(tmp_path, ["trainer=ddp"]).trainer.num_nodes == 1
    monkeypatch.setenv("SLURM_NNODES", "2")
    assert make_cfg(tmp_path, ["trainer=ddp"]).trainer.num_nodes == 2


@pytest.mark.parametrize("args, expected", [
    (["trainer.precision=fp8"], "trainer.precision must be one of 32, bf16-mixed, 16-mixed, got 'fp8'"),
    (["trainer.precision=16-mixed"], "trainer.precision=16-mixed needs a GPU"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches must be a positive integer, got 0"),
    (["trainer.num_nodes=0"], "trainer.num_nodes must be a positive integer, got 0"),
])
def test_bad_trainer_values_are_refused_before_training(tmp_path, args, expected):
    cfg = make_cfg(tmp_path, SMALL + args)
    with pytest.raises(UserError) as info:
        train(cfg)
    assert expected in str(info.value)
    assert not (tmp_path / "run").exists()


def test_bad_precision_on_the_command_line_is_one_error_line(tmp_path):
    res = run_script("train.py", ["trainer.precision=fp8"], cwd=tmp_path,
                     timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "trainer.precision must be one of 32, bf16-mixed, 16-mixed" in lines[0]


@pytest.mark.parametrize("launcher, nodes", [("slurm_1x8", 1), ("slurm_2x8", 2)])
def test_slurm_launcher_configs_compose(tmp_path, launcher, nodes):
    res = run_script("train.py", [f"hydra/launcher={launcher}", "trainer=ddp", "--cfg", "hydra"], cwd=tmp_path,
                     timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    conf = yaml.safe_load(res.stdout)["hydra"]["launcher"]
    assert conf["_target_"].endswith("SlurmLauncher")
    assert conf["nodes"] == nodes and conf["tasks_per_node"] == 8 and conf["gpus_per_node"] == 8
    for key in ("partition", "timeout_min", "cpus_per_task", "mem_gb", "signal_delay_s", "max_num_timeout"):
        assert conf[key] is not None, key


def test_submitit_local_executor_runs_a_sweep_job(tmp_path):
    """The submitit plugin end to end on this machine: its local executor runs the job in a child process."""
    args = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"] + SMALL + [
        "data.batch_size=256", "trainer.max_steps=2", "logger=csv"]
    res = run_script("train.py", args, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert torch.load(sweep / "0" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert (sweep / ".submitit").is_dir() and (sweep / "summary.csv").is_file()


def test_a_requeue_handler_runs_only_after_last_ckpt_is_written(tmp_path):
    """submitit requeues and exits from its SIGUSR2 handler; it must find last.ckpt of the current step on disk."""
    seen = []
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"

    def requeue(signum, frame):  # stands in for submitit's handler (not Lightning's: runs after the save)
        seen.append(torch.load(last, weights_only=True)["global_step"] if last.exists() else None)

    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        cfg = make_cfg(tmp_path, SMALL + ["data.batch_size=128", "trainer.max_steps=1000", "logger=none",
                                          "+callbacks.signal._target_=tests.faults.SignalAtStep",
                                          "+callbacks.signal.step=3", "+callbacks.signal.signum=12"])
        with pytest.raises(SystemExit):
            train(cfg)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen == [3]


def test_help_names_the_presets_and_the_scale_page(tmp_path):
    res = run_script("train.py", ["--help"], cwd=tmp_path, timeout=120)
    assert res.returncode == 0
    assert "trainer=debug" in res.stdout and "hydra/launcher=slurm_2x8" in res.stdout and "docs/scale.md" in res.stdout
    trainer_line = next(line for line in res.stdout.splitlines() if line.startswith("trainer:"))
    assert all(name in trainer_line for name in ("cpu", "ddp", "debug", "gpu"))
