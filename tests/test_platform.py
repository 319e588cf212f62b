"""The Lightning + Hydra platform: configs, training, resume, sampling, sweeps, loggers, error messages."""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from scorelab.cli import sample, train
from scorelab.cli.common import build_core, fill_from_data
from scorelab.cli.errors import UserError
from scorelab.sampling.grids import TimeGrid, as_grid

from .platform_utils import CONF, FAST, make_cfg

GROUP_OPTIONS = {
    group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    for group in ("data", "sde", "model", "loss", "sampler", "optimizer", "scheduler", "trainer", "logger", "callbacks")
}
TOY_MODELS = ["mlp", "noisy_classifier_mlp"]


def _assert_built_from(obj, node) -> None:
    """``obj`` is the class its config names and keeps the plain arguments the config gives it (at least one)."""
    assert type(obj).__name__ == node._target_.rsplit(".", 1)[-1]
    kept, compared = vars(obj), 0
    for key, value in node.items():
        if key.startswith("_") or key not in kept or not isinstance(value, (int, float, str, bool)):
            continue
        if isinstance(kept[key], Path):  # resolved against data_dir
            assert str(kept[key]).endswith(str(value)), f"{node._target_}.{key}: {value!r} became {kept[key]}"
        elif isinstance(kept[key], TimeGrid):  # samplers keep a grid name as the TimeGrid it stands for
            assert kept[key] == as_grid(value), f"{node._target_}.{key}: config {value!r}, object {kept[key]!r}"
        else:
            assert kept[key] == value, f"{node._target_}.{key}: config {value!r}, object {kept[key]!r}"
        compared += 1
    assert compared > 0, f"{node._target_} keeps none of its config values"


@pytest.mark.parametrize("group, option", [(g, o) for g, opts in GROUP_OPTIONS.items() for o in opts])
def test_every_config_option_composes_and_instantiates(tmp_path, group, option):
    overrides = [f"{group}={option}"]
    if group == "model" and option not in TOY_MODELS + ["oracle"]:
        overrides += ["data=cifar10"]  # image networks need image data (sample_shape only; no file is read)
    if group == "model" and option.startswith("noisy_classifier"):
        # a classifier trains in a classifier experiment (the default toy experiment configures a score model's
        # output); those experiments set the data's classes
        overrides += ["experiment=toy_eight_gaussians_classifier", "model.net.num_classes=10"]
    if group == "loss" and option == "ddpm":
        overrides += ["sde=vp"]
    cfg = make_cfg(tmp_path, overrides)
    node = cfg[group]
    if group == "model":
        if option == "oracle":  # the exact score of the toy data: a model with nothing to train
            parts = build_core(cfg)
            assert type(parts["score_model"]).__name__ == "OracleScore"
            assert not any(p.requires_grad for p in parts["score_model"].parameters())
            return
        # 100M-parameter presets are built on the meta device: shapes and counts without memory or init time.
        with torch.device("meta") if option not in TOY_MODELS else contextlib.nullcontext():
            parts = build_core(cfg)
        assert isinstance(parts["score_model"], torch.nn.Module)
        if option.startswith("noisy_classifier"):  # p(y | x_t, t): one logit per class
            assert parts["score_model"].net.num_classes == 10
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
        if group == "scheduler":  # both schedules start their linear warm-up at lr / warmup_steps
            scheduler = instantiate(node)(opt)
            assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
            assert opt.param_groups[0]["lr"] == pytest.approx(cfg.optimizer.lr / node.warmup_steps)
    elif group == "trainer":
        trainer = instantiate(node, accelerator="cpu", devices=1, strategy="auto", logger=False)
        if node.get("fast_dev_run"):  # Lightning replaces max_steps by the fast_dev_run batch count
            assert trainer.fast_dev_run == node.fast_dev_run and trainer.max_steps == node.fast_dev_run
        else:
            assert trainer.max_steps == cfg.trainer.max_steps
    else:
        kwargs = {"sde": instantiate(cfg.sde)} if group == "loss" else {}
        _assert_built_from(instantiate(node, **kwargs), node)


def test_train_writes_metrics_checkpoints_and_pictures(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    cfg = make_cfg(tmp_path, FAST)
    value = train(cfg)
    assert "weights_only` was not set" not in caplog.text  # reads like an unsafe load to users
    run = Path(cfg.paths.output_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    # The true mixture of 0.8 N((-2, 0), 0.25 I) + 0.2 N((2, 0), 0.25 I), 8 std apart: its entropy is that of the
    # weights plus that of one 2-D Gaussian, -(0.8 ln 0.8 + 0.2 ln 0.2) + ln(2 pi e 0.25) = 1.95199 nats.
    assert metrics["entropy"] == pytest.approx(1.95199, abs=5 * metrics["entropy_se"] + 2e-3)
    assert metrics["nll_gap"] == pytest.approx(metrics["exact_nll"] - metrics["entropy"])
    error = max(abs(w - t) for w, t in zip(metrics["mode_weights"], [0.8, 0.2], strict=True))
    assert value == pytest.approx(metrics["mode_weight_error"]) == pytest.approx(error)
    assert metrics["n_samples"] == 500 and metrics["global_step"] == 8
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

    # Without sampler=..., the sampler the model was trained with (the default SDE-DPM-Solver++(2M), FAST's 10
    # steps + the final denoising step).
    dcfg = make_cfg(tmp_path / "s0", [f"ckpt_path={ckpt}", "n_samples=50"], config_name="sample")
    assert int(np.load(sample(dcfg))["nfe"]) == 10 + 1
    assert (path.parent / "samples.png").is_file()

    # The exact score without sampler=...: the default few-step sampler (40 NFE) recovers the 0.8 / 0.2 mixture.
    default = make_cfg(tmp_path / "s3", ["model=oracle", "n_samples=4000"], config_name="sample")
    path = sample(default)
    metrics = json.loads((path.parent / "metrics.json").read_text())
    assert int(np.load(path)["nfe"]) == 40 and "DPMSolverPP" in metrics["sampler"]
    assert np.allclose(metrics["mode_weights"], [0.8, 0.2], atol=0.03)

    ocfg = make_cfg(tmp_path / "s2", ["model=oracle", "data=toy_eight_gaussians", "sampler=ode", "sampler.steps=20",
                                      "n_samples=4000"], config_name="sample")
    path = sample(ocfg)
    metrics = json.loads((path.parent / "metrics.json").read_text())
    assert np.allclose(metrics["mode_weights"], 1 / 8, atol=0.03)
    assert np.load(path)["x"].shape == (4000, 2)


class Flat(torch.nn.Module):
    """A network whose data contract names an argument no built-in network has."""

    def __init__(self, numel: int, width: int = 4):
        super().__init__()
        self.numel, self.width = numel, width

    @classmethod
    def data_arguments(cls, sample_shape):
        return {"numel": int(np.prod(sample_shape))}


def test_networks_declare_the_arguments_the_data_fix():
    flat = OmegaConf.create({"_target_": f"{__name__}.Flat", "numel": None, "width": 8})
    fill_from_data(flat, (3, 4, 5))
    assert flat.numel == 60 and flat.width == 8
    unet = OmegaConf.create({"_target_": "scorelab.models.ScoreUNet", "in_channels": None, "image_size": 16})
    fill_from_data(unet, (1, 28, 28))
    assert unet.in_channels == 1 and unet.image_size == 16  # a value given in config is kept
    mlp = OmegaConf.create({"_target_": "scorelab.models.ScoreMLP", "dim": None})
    fill_from_data(mlp, (3,))
    assert mlp.dim == 3
    with pytest.raises(UserError, match=r"ScoreMLP\) does not fit data of shape \(1, 28, 28\).*model=mlp"):
        fill_from_data(OmegaConf.create({"_target_": "scorelab.models.ScoreMLP", "dim": None}), (1, 28, 28))
    with pytest.raises(UserError, match=r"does not fit data of shape \(2,\)"):
        fill_from_data(OmegaConf.create({"_target_": "scorelab.models.ScoreUNet", "in_channels": None}), (2,))


def test_train_without_logger_and_resume_with_wrong_model(tmp_path):
    cfg = make_cfg(tmp_path / "a", FAST + ["logger=none"])
    train(cfg)  # the LR monitor must not demand a logger
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    other = make_cfg(tmp_path / "b", FAST + ["model.net.width=48", f"ckpt_path={last}"])
    with pytest.raises(UserError, match="does not fit the configured model"):
        train(other)


def _check_dimension(tmp_path, cfg, dim: int, entropy: float) -> None:
    """A trained toy run lives in ``dim`` dimensions: its data, network, samples and the true entropy say so."""
    run = Path(cfg.paths.output_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["entropy"] == pytest.approx(entropy, abs=5 * metrics["entropy_se"] + 2e-3)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["state_dict"]["score_model.net.inp.weight"].shape == (32, dim)
    scfg = make_cfg(tmp_path / "s", [f"ckpt_path={run}/checkpoints/last.ckpt", "n_samples=40"], config_name="sample")
    assert np.load(sample(scfg))["x"].shape == (40, dim)
    assert (run / "samples" / "final.png").is_file()


def test_one_dimensional_mixture(tmp_path):
    cfg = make_cfg(tmp_path, FAST + ["data=toy_custom", "data.mixture.weights=[0.7,0.3]",
                                     "data.mixture.means=[[-2],[2]]", "~data.mixture.covs", "+data.mixture.stds=0.5"])
    train(cfg)
    # Modes 8 std apart: -(0.7 ln 0.7 + 0.3 ln 0.3) + ln(2 pi e 0.25) / 2 = 1.33666 nats.
    _check_dimension(tmp_path, cfg, dim=1, entropy=1.33666)


def test_custom_mixture_from_yaml_in_3d(tmp_path):
    cfg = make_cfg(tmp_path, FAST + ["data=toy_custom", "data.mixture.weights=[0.6,0.4]",
                                     "data.mixture.means=[[0,0,0],[3,3,3]]", "~data.mixture.covs",
                                     "+data.mixture.stds=0.5"])
    train(cfg)
    # Modes 10 std apart: -(0.6 ln 0.6 + 0.4 ln 0.4) + 3 ln(2 pi e 0.25) / 2 = 2.85039 nats.
    _check_dimension(tmp_path, cfg, dim=3, entropy=2.85039)
