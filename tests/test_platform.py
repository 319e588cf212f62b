"""The Lightning + Hydra platform: configs, training, resume, sampling, sweeps, loggers, error messages."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from scorelab.cli import sample, train
from scorelab.cli.common import build_core
from scorelab.cli.errors import UserError

from .platform_utils import CONF, FAST, make_cfg

GROUP_OPTIONS = {
    group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    for group in ("data", "sde", "model", "loss", "sampler", "optimizer", "scheduler", "trainer", "logger", "callbacks")
}
TOY_MODELS = ["mlp"]


@pytest.mark.parametrize("group, option", [(g, o) for g, opts in GROUP_OPTIONS.items() for o in opts])
def test_every_config_option_composes_and_instantiates(tmp_path, group, option):
    overrides = [f"{group}={option}"]
    if group == "model" and option not in TOY_MODELS + ["oracle"]:
        overrides += ["data=cifar10"]  # image networks need image data (sample_shape only; no file is read)
    if group == "loss" and option == "ddpm":
        overrides += ["sde=vp"]
    cfg = make_cfg(tmp_path, overrides)
    node = cfg[group]
    if group == "model":
        if option == "oracle":
            assert node.oracle is True
            return
        # 100M-parameter presets are built on the meta device: shapes and counts without memory or init time.
        with torch.device("meta") if option not in TOY_MODELS else contextlib.nullcontext():
            parts = build_core(cfg)
        assert isinstance(parts["score_model"], torch.nn.Module)
    elif group in ("logger", "callbacks"):
        objs = [instantiate(c) for c in (node or {}).values()]
        targets = {c._target_.rsplit(".", 1)[-1] for c in (node or {}).values()}
        assert {type(o).__name__ for o in objs} <= targets | {"WandbLogger"} and len(objs) == len(node or {})
    elif group in ("optimizer", "scheduler"):
        if not node:
            assert option == "none"
            return
        opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))])
        assert isinstance(opt, torch.optim.Optimizer)
        if group == "scheduler":
            assert instantiate(node)(opt) is not None
    elif group == "trainer":
        trainer = instantiate(node, accelerator="cpu", devices=1, strategy="auto", logger=False)
        assert trainer.max_steps == cfg.trainer.max_steps
    else:
        kwargs = {"sde": instantiate(cfg.sde)} if group == "loss" else {}
        assert instantiate(node, **kwargs) is not None


def test_train_writes_metrics_checkpoints_and_pictures(tmp_path):
    cfg = make_cfg(tmp_path, FAST)
    value = train(cfg)
    run = Path(cfg.paths.output_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"mode_weights", "exact_nll", "entropy", "energy_distance", "nll_gap"}
    assert len(metrics["mode_weights"]) == 2 and sum(metrics["mode_weights"]) == pytest.approx(1.0)
    assert value == pytest.approx(metrics["mode_weight_error"])
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "samples" / "final.png").stat().st_size > 1000
    logged = (run / "csv" / "version_0" / "metrics.csv").read_text()
    assert "train/loss" in logged and "val/score_error_t0.5" in logged


LR = ["scheduler=none", "optimizer.lr=1e-2"]  # large enough that any divergence shows


@pytest.mark.parametrize("stop", [16, 12], ids=["epoch-end", "mid-epoch"])
def test_resume_restores_step_optimizer_and_ema(tmp_path, stop):
    # 8 steps per epoch; validation (and so ModelCheckpoint's own saves) only every 3rd epoch, so last.ckpt must
    # come from the final save at step `stop`.
    every3 = ["trainer.check_val_every_n_epoch=3"]
    cfg = make_cfg(tmp_path / "a", FAST + [f"trainer.max_steps={stop}"] + LR + every3)
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)  # our own checkpoints load safely
    assert first["global_step"] == stop

    resumed = make_cfg(tmp_path / "b", FAST + ["trainer.max_steps=24", f"ckpt_path={last}"] + LR + every3)
    train(resumed)
    second = torch.load(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert second["global_step"] == 24
    assert second["state_dict"]["ema.n_averaged"] == first["state_dict"]["ema.n_averaged"] + 24 - stop
    adam_step = second["optimizer_states"][0]["state"][0]["step"]
    assert float(adam_step) == 24

    # An uninterrupted 24-step run lands on the same weights: same data order, noise, optimizer and EMA.
    straight = make_cfg(tmp_path / "c", FAST + ["trainer.max_steps=24"] + LR + every3)
    train(straight)
    third = torch.load(Path(straight.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    for key in ("score_model.net.inp.weight", "ema.module.net.inp.weight"):
        torch.testing.assert_close(second["state_dict"][key], third["state_dict"][key], rtol=1e-4, atol=1e-5)


def test_sample_from_checkpoint_and_oracle(tmp_path):
    cfg = make_cfg(tmp_path / "train", FAST)
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    scfg = make_cfg(tmp_path / "s1", [f"ckpt_path={ckpt}", "sampler=pc", "sampler.steps=5", "n_samples=300",
                                      "batch_size=128"], config_name="sample")
    path = sample(scfg)
    data = np.load(path)
    assert data["x"].shape == (300, 2) and int(data["nfe"]) == 5 + 4  # 5 predictor + 4 corrector steps

    # Without sampler=..., the sampler the model was trained with (FAST: Euler–Maruyama, 10 steps).
    dcfg = make_cfg(tmp_path / "s0", [f"ckpt_path={ckpt}", "n_samples=50"], config_name="sample")
    assert int(np.load(sample(dcfg))["nfe"]) == 10
    assert (path.parent / "samples.png").is_file()

    ocfg = make_cfg(tmp_path / "s2", ["model=oracle", "data=toy_eight_gaussians", "sampler=ode", "sampler.steps=20",
                                      "n_samples=4000"], config_name="sample")
    path = sample(ocfg)
    metrics = json.loads((path.parent / "metrics.json").read_text())
    assert np.allclose(metrics["mode_weights"], 1 / 8, atol=0.03)
    assert np.load(path)["x"].shape == (4000, 2)


def test_train_without_logger_and_resume_with_wrong_model(tmp_path):
    cfg = make_cfg(tmp_path / "a", FAST + ["logger=none"])
    train(cfg)  # the LR monitor must not demand a logger
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    other = make_cfg(tmp_path / "b", FAST + ["model.net.width=48", f"ckpt_path={last}"])
    with pytest.raises(UserError, match="does not fit the configured model"):
        train(other)


def test_one_dimensional_mixture(tmp_path):
    cfg = make_cfg(tmp_path, FAST + ["data=toy_custom", "data.mixture.weights=[0.7,0.3]",
                                     "data.mixture.means=[[-2],[2]]", "~data.mixture.covs", "+data.mixture.stds=0.5"])
    train(cfg)
    run = Path(cfg.paths.output_dir)
    assert len(json.loads((run / "metrics.json").read_text())["mode_weights"]) == 2
    assert (run / "samples" / "final.png").is_file()


def test_custom_mixture_from_yaml_in_3d(tmp_path):
    cfg = make_cfg(tmp_path, FAST + ["data=toy_custom", "data.mixture.weights=[0.6,0.4]",
                                     "data.mixture.means=[[0,0,0],[3,3,3]]", "~data.mixture.covs",
                                     "+data.mixture.stds=0.5"])
    train(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert len(metrics["mode_weights"]) == 2
