"""The console (issue 22, items 3 and 4): train.py ends with a summary that is also in train.log, the progress bar
counts global steps with an ETA, known third-party noise is filtered while real warnings stay, and sampling and
evaluations show their cost up front and progress per sampler step."""
from __future__ import annotations

import os
import re
import subprocess
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from scorelab.cli.console import training_summary
from scorelab.cli.sample import auto_batch_size, sample
from scorelab.cli.train import train
from scorelab.core.console import Progress, SamplingProgress, cost_line, format_seconds

from .platform_utils import FAST, ROOT, make_cfg, python_command

# What the issue lists as noise (each line of it must be gone from a default run's output)
NOISE = [
    "litlogger", "💡 Tip", "limit_train_batches=1.0", "limit_val_batches=1.0", "LeafSpec", "Total FLOPs", "FLOPs",
    "anonymous setting has no effect", "could not find the monitored key", "Epoch ", "/-2",
]
REAL_WARNING = "scorelab-test: a real warning that must stay"


class LoudCallback(L.Callback):
    """Raises a real warning of its own at the start of training (the filters must leave it alone)."""

    def on_train_start(self, trainer, pl_module):
        warnings.warn(REAL_WARNING, UserWarning, stacklevel=1)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """``python train.py`` on the toy default with few steps (a W&B logger too, offline), as a user would run it
    with its output going to a file (no terminal: progress as lines)."""
    root = tmp_path_factory.mktemp("console")
    run = root / "logs" / "train" / "runs" / "r"
    env = dict(os.environ, WANDB_MODE="offline", HYDRA_FULL_ERROR="0", SCORELAB_PROGRESS="lines")
    env.pop("WANDB_API_KEY", None)
    args = ["trainer.max_steps=50", "callbacks.toy_metrics.n_samples=1000", "callbacks.samples.n_samples=200",
            "sampler.steps=10", "logger=wandb", "+callbacks.loud._target_=tests.test_console.LoudCallback",
            f"hydra.run.dir={run}"]
    res = subprocess.run([*python_command(), str(ROOT / "train.py"), *args], cwd=root, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return root, run, res


def _summary_lines(text: str) -> list[str]:
    lines = text.splitlines()
    start = max(i for i, line in enumerate(lines) if "scorelab: training done" in line)
    return lines[start:start + 8]


def test_train_ends_with_a_summary_of_metrics_paths_and_the_next_command(toy_run):
    root, run, res = toy_run
    summary = "\n".join(_summary_lines(res.stdout))
    assert "scorelab: training done (50 steps," in summary
    weights = re.search(r"mode weights\s+([\d.]+) ([\d.]+)\s+\(true 0\.800 0\.200, max error ([\d.]+)\)", summary)
    assert weights, summary
    assert abs(float(weights.group(1)) + float(weights.group(2)) - 1) < 2e-3
    assert re.search(r"NLL gap\s+-?[\d.]+ nats", summary), summary
    picture = re.search(r"samples\s+(\S+\.png)", summary).group(1)
    checkpoint = re.search(r"checkpoint\s+(\S+\.ckpt)", summary).group(1)
    assert (root / picture).is_file() and (root / checkpoint).is_file(), summary  # relative to where it ran
    assert (root / checkpoint).name == "last.ckpt"
    assert re.search(rf"next +python sample\.py ckpt_path={re.escape(checkpoint)}$", summary, re.M), summary
    assert summary.strip().endswith(f"ckpt_path={checkpoint}")  # the last lines of the run (after W&B's own)
    assert res.stdout.rstrip().endswith(f"python sample.py ckpt_path={checkpoint}")


def test_train_log_holds_scorelab_and_lightning_messages_and_the_summary(toy_run):
    _, run, _ = toy_run
    log = (run / "train.log").read_text()
    assert log.strip(), "train.log is empty"
    for expected in ("run folder: ", "global batch 512 = 512 per device", "scorelab: training done (50 steps",
                     "mode weights", "python sample.py ckpt_path=", "`Trainer.fit` stopped: `max_steps=50` reached",
                     "training: 100% (step 50/50)"):
        assert expected in log, expected


def test_progress_counts_global_steps_out_of_max_steps_with_an_eta(toy_run):
    _, _, res = toy_run
    steps = re.findall(r"^training: +(\d+)% \(step (\d+)/50\), [^,]+(, ETA [^,]+)?", res.stdout, re.M)
    assert [int(s) for _, s, _ in steps] == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50], res.stdout
    assert all(eta for _, s, eta in steps if s != "50")  # an ETA until the end
    assert "\r" not in res.stdout + res.stderr  # no terminal bar written into a file


def test_known_noise_is_gone_and_real_warnings_stay(toy_run):
    _, run, res = toy_run
    output = res.stdout + res.stderr
    for noise in NOISE:
        assert noise not in output, noise
    assert REAL_WARNING in res.stderr
    assert "W&B: offline" in output  # scorelab's own W&B line stays


def test_no_monitor_warning_when_no_validation_runs(tmp_path, recwarn):
    """A run without validation keeps its newest checkpoint instead of warning that val/loss is missing."""
    cfg = make_cfg(tmp_path, FAST + ["trainer.limit_val_batches=0", "logger=none", "trainer.max_steps=9"])
    train(cfg)
    assert not [w for w in recwarn if "could not find the monitored key" in str(w.message)]
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()
    assert list((Path(cfg.paths.output_dir) / "checkpoints").glob("epoch_*.ckpt"))


def test_no_monitor_warning_when_training_stops_before_its_first_validation(tmp_path, recwarn):
    """check_val_every_n_epoch=1 with a run shorter than an epoch: no "best" to rank yet, no warning."""
    cfg = make_cfg(tmp_path, FAST + ["trainer.max_steps=5", "logger=none"])  # 8 steps per epoch
    train(cfg)
    assert not [w for w in recwarn if "could not find the monitored key" in str(w.message)]
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()


def test_summary_says_how_to_get_image_metrics_and_names_them_when_measured():
    common = dict(steps=10, seconds=3.0, toy=None, picture=None, checkpoint=None, images=True)
    assert "callbacks/fid=default" in training_summary(metrics={}, **common)
    text = training_summary(metrics={"fd_mnist@2000": 12.5, "bpd@256": 1.234}, **common)
    assert re.search(r"fd_mnist +12\.5 \(2000 samples", text) and re.search(r"bits/dim +1\.234 \(256 validation", text)


# --- progress and cost of sampling and evaluations -----------------------------------------------------------------
def test_progress_lines_every_ten_percent_with_eta(monkeypatch, capsys, caplog):
    monkeypatch.setenv("SCORELAB_PROGRESS", "lines")
    caplog.set_level("INFO", logger="scorelab")
    with Progress(20, "work", "batch", quiet_seconds=0) as bar:
        for _ in range(20):
            bar.update(1)
    out = capsys.readouterr()
    lines = [ln for ln in (caplog.text + out.out + out.err).splitlines() if "work:" in ln]
    assert len(lines) == 10 and "(2/20 batches)" in lines[0] and "ETA" in lines[0] and "100%" in lines[-1]


def test_sampling_progress_moves_per_sampler_step(monkeypatch):
    monkeypatch.setenv("SCORELAB_PROGRESS", "lines")
    bar = SamplingProgress(n=64, batches=1, steps=40, desc="sampling", enabled=False)
    for _ in range(10):
        bar.on_step({})
    assert bar.bar.n == 10 and bar.bar.total == 40  # a single batch of 64 images moves step by step
    for _ in range(31):
        bar.on_step({})
    bar.batch_done(64)  # the sampler called back 41 times: the total follows
    assert bar.steps == 41


def test_cost_line_names_the_cost_and_the_key_that_turns_it_off():
    line = cost_line("FID callback", "2000 samples x 40 sampler steps", 90, off="callbacks/fid=null")
    assert line == "FID callback: 2000 samples x 40 sampler steps, about 1 min 30 s (turn off: callbacks/fid=null)"
    assert format_seconds(4.2) == "4.2 s" and format_seconds(3725) == "1 h 02 min"


@pytest.mark.parametrize("shape, kind, device, expected", [
    ((2,), "points", "cpu", 10_000), ((1, 28, 28), "images", "cpu", 256), ((3, 32, 32), "images", "cpu", 256),
    ((3, 64, 64), "images", "cpu", 64), ((3, 32, 32), "images", "cuda", 1000),
])
def test_auto_batch_size_follows_the_data(shape, kind, device, expected):
    assert auto_batch_size(shape, kind, device) == expected


def test_auto_batch_size_is_the_default_and_changes_no_sample(tmp_path):
    cfg = make_cfg(tmp_path, ["model=oracle", "sampler=euler_maruyama", "sampler.steps=5", "n_samples=20",
                              "progress=false"], config_name="sample")
    assert cfg.batch_size == "auto"
    xs = {}
    for batch_size in ("auto", 7):
        with open_dict(cfg):
            cfg.batch_size = batch_size
            cfg.paths.output_dir = str(tmp_path / f"b{batch_size}")
        import numpy as np

        xs[batch_size] = np.load(sample(cfg))["x"]
    assert cfg.batch_size == 7
    assert torch.equal(torch.from_numpy(xs["auto"]), torch.from_numpy(xs[7]))


def test_image_sampling_says_its_cost_first_and_moves_per_step(tmp_path, tiny_image_run, monkeypatch, capsys, caplog):
    monkeypatch.setenv("SCORELAB_PROGRESS", "lines")
    caplog.set_level("INFO", logger="scorelab")
    cfg = make_cfg(tmp_path, [f"ckpt_path={tiny_image_run.ckpt}", "n_samples=6", "sampler=euler_maruyama",
                              "sampler.steps=4", "device=cpu"], config_name="sample")
    sample(cfg)
    out = capsys.readouterr()
    text = caplog.text + out.out + out.err
    assert "sampling 6 images: 1 batch of up to 256 (batch_size) x 4 sampler steps" in text, text
    assert "fewer: n_samples=" in text
    assert re.search(r"sampling seeds 0\.\.5: 100% \(4/4 steps\)", text), text
