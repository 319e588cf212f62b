"""NaN/Inf in training (policy skip or stop) and in sampling; bugs inside a training step keep their traceback."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scorelab.cli import sample, train
from scorelab.cli.errors import run_or_exit
from scorelab.lit.nonfinite import NonFiniteTrainingError
from scorelab.sampling.seeded import NonFiniteSamplesError

from .platform_utils import FAST, make_cfg, snapshot

FAULTY = ["loss._target_=tests.faults.FaultyLoss"]


def _last(cfg) -> dict:
    return torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)


def test_skip_policy_skips_and_counts_nonfinite_steps(tmp_path):
    # Step 2: the loss is NaN; step 5: the loss is finite but the gradients are NaN.
    cfg = make_cfg(tmp_path, FAST + FAULTY + ["+loss.nan_loss_at=[2]", "+loss.nan_grad_at=[5]", "module.nonfinite=skip",
                                              "trainer.max_steps=10"])
    train(cfg)
    ckpt = _last(cfg)
    assert ckpt["global_step"] == 10 and ckpt["scorelab_nonfinite"]["skipped"] == 2
    assert ckpt["state_dict"]["ema.n_averaged"] == 8  # no EMA update on the two skipped steps
    assert float(ckpt["optimizer_states"][0]["state"][0]["step"]) == 8  # nor an optimizer update
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    with open(Path(cfg.paths.output_dir) / "csv" / "version_0" / "metrics.csv") as f:
        logged = [float(r["train/skipped_steps"]) for r in csv.DictReader(f) if r["train/skipped_steps"]]
    assert logged[:2] == [0.0, 0.0] and logged[2:5] == [1.0, 1.0, 1.0] and logged[-1] == 2.0


@pytest.mark.parametrize("fault", ["nan_loss_at", "nan_grad_at"])
def test_stop_policy_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, fault):
    first = make_cfg(tmp_path, FAST)  # 8 clean steps: last.ckpt at step 8
    train(first)
    run = Path(first.paths.output_dir)
    before = snapshot(run / "checkpoints")
    # Continue in the same folder; the 4th step after resuming (global step 11) goes wrong.
    again = make_cfg(tmp_path, FAST + FAULTY + [f"+loss.{fault}=[3]", "module.nonfinite=stop", "ckpt_path=auto",
                                                "trainer.max_steps=20"])
    what = "the loss was nan" if fault == "nan_loss_at" else "the gradients held NaN/Inf"
    with pytest.raises(NonFiniteTrainingError, match=rf"training stopped at step 11: {what}"):
        train(again)
    assert snapshot(run / "checkpoints") == before  # last.ckpt still holds step 8's finite weights
    assert _last(first)["global_step"] == 8


def test_skip_policy_gives_up_after_patience_steps_in_a_row(tmp_path):
    cfg = make_cfg(tmp_path, FAST + FAULTY + ["+loss.nan_loss_at=[3,4,5,6,7]", "module.nonfinite_patience=3"])
    with pytest.raises(NonFiniteTrainingError, match=r"step 5: the loss was nan \[3 steps in a row were not finite"):
        train(cfg)


def test_bad_policy_is_refused(tmp_path):
    with pytest.raises(Exception, match="module.nonfinite must be one of"):
        train(make_cfg(tmp_path, FAST + ["module.nonfinite=ignore"]))
    assert not (tmp_path / "run").exists()


def test_nan_samples_at_the_end_of_training_are_reported_not_written(tmp_path):
    cfg = make_cfg(tmp_path, FAST + ["sampler._target_=tests.faults.NaNSampler"])
    train(cfg)
    run = Path(cfg.paths.output_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    assert "mode_weights" not in metrics
    assert "NaNSampler(at_step=1) produced NaN/Inf at sampler step 1" in metrics["error"]
    assert "training step 8" in metrics["error"]
    assert not (run / "samples" / "final.png").exists()
    assert _last(cfg)["global_step"] == 8  # the trained model is still saved


def test_nan_samples_from_sample_py_are_not_written(tmp_path):
    trained = make_cfg(tmp_path / "t", FAST)
    train(trained)
    out = tmp_path / "s"
    scfg = make_cfg(out, [f"ckpt_path={trained.paths.output_dir}/checkpoints/last.ckpt", "n_samples=50",
                          "sampler=euler_maruyama", "sampler._target_=tests.faults.NaNSampler"], config_name="sample")
    (Path(scfg.paths.output_dir)).mkdir(parents=True)
    np.savez(Path(scfg.paths.output_dir) / "samples.npz", x=np.zeros((3, 2)))  # an earlier result
    before = snapshot(out)
    with pytest.raises(NonFiniteSamplesError, match=r"NaNSampler\(at_step=1\) produced NaN/Inf at step 1"):
        sample(scfg)
    assert snapshot(out) == before


def test_value_error_inside_a_training_step_keeps_its_traceback(tmp_path, capsys):
    cfg = make_cfg(tmp_path, FAST + FAULTY + ["+loss.raise_at=2"])
    with pytest.raises(ValueError, match="injected bug at training step 2") as info:
        run_or_exit(train, cfg)  # not turned into one line and exit status 2
    assert info.traceback[-1].path.name == "faults.py"
    err = capsys.readouterr().err
    assert "ValueError inside a training step at" in err and "faults.py:" in err and "a bug" in err


def test_value_error_from_a_config_value_is_still_one_line(tmp_path, capsys):
    cfg = make_cfg(tmp_path, FAST + ["module.ema_decay=1.5"])
    with pytest.raises(SystemExit) as info:
        run_or_exit(train, cfg)
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("error: ema decay must lie in [0, 1), got 1.5")


@pytest.mark.parametrize("scaler, skipped", [(None, True), (object(), False)], ids=["fp32", "fp16-scaler"])
def test_overflowing_gradients_are_left_to_the_fp16_loss_scaler(scaler, skipped):
    from types import SimpleNamespace

    from scorelab.lit.nonfinite import NonFiniteGuard

    weight = torch.nn.Parameter(torch.ones(2))
    weight.grad = torch.tensor([1.0, float("inf")])
    trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler), world_size=1, global_step=4,
                              checkpoint_callback=None)
    module = SimpleNamespace(trainer=trainer, device=torch.device("cpu"))
    guard = NonFiniteGuard("skip")
    guard.observe_loss(torch.tensor(0.5))
    assert guard.check(module, torch.optim.SGD([weight], lr=0.1)) is skipped
    assert (weight.grad is None) is skipped and guard.skipped == int(skipped)
    guard.observe_loss(torch.tensor(float("nan")))  # a NaN loss is caught with or without a scaler
    weight.grad = torch.ones(2)
    assert guard.check(module, torch.optim.SGD([weight], lr=0.1)) is True
