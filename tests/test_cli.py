"""The command line as a user runs it: --help, multirun sweeps with a summary, W&B offline, one-line errors."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scorelab.cli import train

from .platform_utils import FAST, make_cfg, run_script, snapshot

FAST_CLI = [o for o in FAST] + ["callbacks.samples.n_samples=100", "callbacks.toy_metrics.n_samples=300"]


def test_help_lists_the_config_groups(tmp_path):
    res = run_script("train.py", ["--help"], cwd=tmp_path, timeout=120)
    assert res.returncode == 0
    for group in ("data", "sde", "model", "loss", "sampler", "optimizer", "scheduler", "trainer", "logger",
                  "callbacks", "experiment", "paths", "hparams_search"):
        assert f"{group}:" in res.stdout, group


def test_multirun_2x2_writes_one_folder_per_job_and_a_summary(tmp_path):
    args = ["-m"] + FAST_CLI + ["sde.beta_min=0.05,0.1", "sde.beta_max=10,20"]
    res = run_script("train.py", args, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir())
    assert len(jobs) == 4 and all((job / "metrics.json").is_file() for job in jobs)
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["sde.beta_min"], r["sde.beta_max"]) for r in rows} == {("0.05", "10"), ("0.05", "20"),
                                                                      ("0.1", "10"), ("0.1", "20")}
    for row in rows:  # the table holds each job's own final metrics
        job_metrics = json.loads((sweep / row["job"] / "metrics.json").read_text())
        assert float(row["toy/mode_weight_error"]) == pytest.approx(job_metrics["mode_weight_error"])
    assert "| sde.beta_min |" in (sweep / "summary.md").read_text().replace("| job | ", "| ")


def test_wandb_offline_run_writes_files_without_network(tmp_path):
    """Offline W&B gets what an online run would: evaluation curves (here nll@<n> of the likelihood callback, as
    fid@<n> for images), the sample pictures, the toy metrics and the config, in the run file `wandb sync` uploads."""
    args = FAST_CLI + ["logger=wandb", "callbacks/likelihood=default",
                       "callbacks.likelihood.n=16", "callbacks.likelihood.rtol=1e-3", "callbacks.likelihood.atol=1e-3"]
    res = run_script("train.py", args, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = list((tmp_path / "logs" / "train" / "runs").iterdir())
    (offline,) = list((run / "wandb").glob("offline-run-*"))
    (events,) = list(offline.glob("*.wandb"))
    assert "wandb sync" in res.stdout + res.stderr
    assert (run / "metrics.json").is_file()
    recorded = events.read_bytes()
    for key in (b"nll@16", b"toy/mode_weight_error", b"samples", b"beta_min"):  # curve, metric, picture, config
        assert key in recorded, key
    assert list((offline / "files" / "media").rglob("*.png")), "no sample picture in the offline run"


def test_optuna_search_returns_the_metric(tmp_path):
    args = FAST_CLI + ["hparams_search=toy_optuna", "hydra.sweeper.n_trials=2"]
    res = run_script("train.py", args, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    best = (sweep / "optimization_results.yaml").read_text()
    assert "best_value" in best and "sde.beta_max" in best


@pytest.mark.parametrize(
    "args, expected",
    [
        (["sde.beta_min=-1"], "beta_min must be a positive finite number"),
        (["sde.beta_min=30"], "beta_min must be smaller than beta_max"),
        (["sde=cosine"], "sde=cosine: no such option (did you mean vp_cosine?); sde is one of: edm, rectified_flow, "
                         "subvp, ve, vp, vp_cosine"),
        (["ckpt_path=/nonexistent/last.ckpt"], "checkpoint not found: /nonexistent/last.ckpt"),
        (["data.batch_size=0"], "batch_size must be a positive integer"),
        (["sampler.steps=0"], "steps must be a positive integer"),
        (["sampler.eps=0"], "eps must lie in (0, T=1.0), got 0"),
        (["module.nonfinite=ignore"], "module.nonfinite must be one of ('skip', 'stop'), got 'ignore'"),
        (["ckpt_path=last"], "ckpt_path=last: no checkpoint in"),
    ],
)
def test_bad_input_ends_in_one_clear_line(tmp_path, args, expected):
    earlier = tmp_path / "logs" / "train" / "runs" / "earlier"  # an earlier run's results must stay as they are
    (earlier / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 3}, earlier / "checkpoints" / "last.ckpt")
    (earlier / "metrics.json").write_text('{"global_step": 3}')
    before = snapshot(earlier)
    res = run_script("train.py", args, cwd=tmp_path, timeout=120)
    assert res.returncode != 0
    assert expected in res.stderr
    assert "Traceback" not in res.stderr
    assert snapshot(earlier) == before


@pytest.mark.parametrize("script, args, expected", [
    ("train.py", ["sampler=doesnotexist"], "sampler=doesnotexist: no such option; sampler is one of: ald, ancestral"),
    ("train.py", ["datta=toy_grid"], "datta: no such setting; did you mean data?"),
    ("train.py", ["trainer.max_step=5"], "trainer.max_step: no such setting; did you mean trainer.max_steps"),
    ("train.py", ["sde.beta_min=0.05,0.1"], "a comma-separated list is a sweep; run it with -m"),
    ("train.py", ["model.net.width=[1,2"], "cannot read the command line"),
    ("train.py", ["-m", "sde=vp,vpp"], "sde=vpp: no such option (did you mean vp?)"),  # every value of a sweep
    ("sample.py", ["sampler=doesnotexist"], "sampler=doesnotexist: no such option"),
    ("sample.py", ["task=colour"], "task=colour: no such option (did you mean colorize?); task is one of: colorize, "),
    # keys that became options of a task (conf/task/) say where they went
    ("sample.py", ["label=3"], "label: no such setting; it is an option of task=labels: write task=labels "
                               "task.label=3"),
    ("sample.py", ["teach=true"], "teach is an option of the group task: write task=teach"),
    ("sample.py", ["image=a.png"], "it is an option of task=colorize, task=inpaint, task=interpolate: write "
                                   "task.image=a.png with one of them"),
    ("train.py", ["lr=0.1"], "lr: no such setting; did you mean optimizer.lr?"),
    ("sample.py", ["teaching.points=3"], "teaching is now task=teach: write task=teach task.paths=3"),
    ("sample.py", ["task.guidance=2"], "task.guidance: no such setting; it is an option of task=labels: write "
                                       "task=labels task.guidance=2"),
    ("train.py", ["sde.max_beta=0.5"], "it is an option of sde=vp_cosine: write sde=vp_cosine sde.max_beta=0.5"),
    ("train.py", ["sde.beta_max=5", "sde=ve"], "it is an option of sde=subvp, sde=vp: write sde.beta_max=5 with one"),
    ("likelihood.py", ["splitt=test"], "splitt: no such setting; did you mean split?"),
    ("fid.py", ["featurs=mnist"], "featurs: no such setting; did you mean features?"),
    ("train.py", ["hydra.run.dir=/etc/hostname/run"], "/etc/hostname is a file, not a folder"),
])
def test_composition_mistakes_are_one_line_with_status_2_and_create_nothing(tmp_path, script, args, expected):
    res = run_script(script, args, cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.stderr
    assert "+" not in lines[0].split("error: ", 1)[1].split(";")[1]  # never the advice to append a key
    assert not (tmp_path / "logs").exists()  # stopped before Hydra made a folder


def test_a_mistake_found_by_the_job_leaves_no_empty_run_folder(tmp_path):
    pinned = tmp_path / "logs" / "pinned"  # an earlier run's folder, given again: kept as it was
    (pinned / ".hydra").mkdir(parents=True)
    (pinned / "train.log").write_text("earlier\n")
    for extra in ([], [f"hydra.run.dir={pinned}"]):
        res = run_script("train.py", ["sde.beta_max=-1", *extra], cwd=tmp_path, timeout=120)
        assert res.returncode == 2 and "beta_max must be a positive finite number" in res.stderr
    assert not (tmp_path / "logs" / "train").exists()  # the fresh run folder was removed again
    assert (pinned / "train.log").read_text() == "earlier\n"


def test_corrupt_checkpoint_is_reported_and_left_alone(tmp_path):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"not a checkpoint")
    res = run_script("sample.py", [f"ckpt_path={bad}"], cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and "cannot be read" in res.stderr and "Traceback" not in res.stderr
    assert bad.read_bytes() == b"not a checkpoint"


def test_sample_cli_with_oracle(tmp_path):
    args = ["model=oracle", "sampler=ode", "sampler.steps=10", "n_samples=2000"]
    res = run_script("sample.py", args, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = list((tmp_path / "logs" / "sample" / "runs").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["mode_weights"] == pytest.approx([0.8, 0.2], abs=0.03)
    assert (run / "samples.png").is_file() and (run / "samples.npz").is_file()


def test_ddp_on_two_cpu_processes_writes_one_run(tmp_path):
    # strategy=ddp relaunches the script for rank 1 (never inside pytest itself: rank 1 would re-run the pytest
    # session); Lightning passes the Hydra run dir to the child, so both ranks share one folder.
    args = FAST_CLI + ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    res = run_script("train.py", args, cwd=tmp_path, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1
    assert json.loads((runs[0] / "metrics.json").read_text())["global_step"] == 8
    ckpt = torch.load(runs[0] / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 8 and ckpt["state_dict"]["ema.n_averaged"] == 8


def test_sampler_keys_change_the_checkpoints_own_sampler(tmp_path):
    cfg = make_cfg(tmp_path / "train", FAST + ["sampler=pc", "sampler.steps=7"])
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"

    def run(*args):
        out = tmp_path / f"sample_{len(list(tmp_path.iterdir()))}"
        res = run_script("sample.py", [f"ckpt_path={ckpt}", "n_samples=16", f"hydra.run.dir={out}", *args],
                         cwd=tmp_path, timeout=120)
        return res, out

    # The stored PC sampler (7 steps), now with 3: N predictor steps and a Langevin step after each but the last.
    res, out = run("sampler.steps=3")
    assert res.returncode == 0, res.stderr[-2000:]
    saved = np.load(out / "samples.npz")
    assert int(saved["nfe"]) == 3 + (3 - 1) * 1
    assert "PCSampler" in json.loads((out / "metrics.json").read_text())["sampler"]
    res, out = run("sampler=ddim", "sampler.steps=4")  # a named sampler replaces the stored one (4 steps + denoise)
    assert res.returncode == 0 and int(np.load(out / "samples.npz")["nfe"]) == 4 + 1, res.stderr[-2000:]
    res, out = run("sampler.stepz=3")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "sampler.stepz: the checkpoint's sampler (scorelab.sampling.PCSampler) has no option 'stepz'" in res.stderr
    assert not (out / "samples.npz").exists()


def test_sampler_keys_become_appends_only_without_a_sampler_choice():
    from scorelab.cli.sample import sampler_keys_as_appends

    assert sampler_keys_as_appends(["s.py", "sampler.steps=3", "n=2"]) == ["s.py", "+sampler.steps=3", "n=2"]
    assert sampler_keys_as_appends(["s.py", "sampler=pc", "sampler.steps=3"]) == ["s.py", "sampler=pc",
                                                                                   "sampler.steps=3"]
