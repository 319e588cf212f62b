"""The likelihood command: the exact toy score against the true mixture, torchrun, images, standard errors, errors."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scorelab.cli.errors import UserError
from scorelab.cli.likelihood import likelihood

from .platform_utils import ROOT, make_cfg, python_command

TOY = ["model=oracle", "data=toy_two_modes", "split=test", "device=cpu"]
# Gaussian probes: v^T J v has variance 2 tr(J_sym^2) > 0 for any J, so the seeds genuinely matter (Rademacher probes
# are exact on two_modes, whose score Jacobian is diagonal: its modes differ along one axis only).
HUTCHINSON = ["divergence=hutchinson", "probe=gaussian"]
TINY_UNET = ["model.net.ch=8", "model.net.num_res_blocks=1", "model.net.ch_mult=[1,2]",
             "model.net.attn_resolutions=[4]"]
NPZ = ["data=npz", "data.path=tiny.npz"]


pytestmark = pytest.mark.usefixtures("one_thread")


def run(tmp_path: Path, overrides: list[str]) -> tuple[dict, Path]:
    cfg = make_cfg(tmp_path, overrides, config_name="likelihood")
    return likelihood(cfg), Path(cfg.paths.output_dir)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> dict:
    """A 2-step tiny DDPM++ checkpoint on a 24-image 8x8 ``.npz`` (and a 6-image test file); the data is then moved
    to a second folder, so a likelihood run finds it only through this machine's ``paths.data_dir``."""
    from scorelab.cli import train

    root = tmp_path_factory.mktemp("images")
    trained_on, here = root / "trained_on", root / "here"
    trained_on.mkdir()
    rng = np.random.default_rng(0)
    np.savez(trained_on / "tiny.npz", x=rng.integers(0, 256, (24, 8, 8, 1), dtype=np.uint8))
    np.savez(trained_on / "tiny_test.npz", x=rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8))
    cfg = make_cfg(root / "train", [
        "experiment=mnist_small", "data=npz", f"paths.data_dir={trained_on}", "data.path=tiny.npz",
        "data.test_path=tiny_test.npz", "data.val_size=4", "data.batch_size=4", "data.num_workers=0",
        "trainer.max_steps=2", "trainer.max_time=null", "trainer.enable_progress_bar=false", "logger=none",
        "callbacks.samples.n_samples=2", "callbacks.fid=null", "sampler.steps=2", *TINY_UNET])
    train(cfg)
    shutil.move(trained_on, here)
    return {"ckpt": Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", "data_dir": here}


# --- acceptance ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("divergence", [["divergence=exact"], HUTCHINSON], ids=["exact", "hutchinson"])
def test_oracle_nll_matches_the_exact_nll_of_the_true_mixture(tmp_path, divergence):
    result, out = run(tmp_path, TOY + ["n=400", "batch_size=200", "repeats=2", *divergence])
    toy, diff = result["toy"], result["toy"]["model_minus_exact"]
    # prior=auto is the exact p_T for the oracle, so the paired difference holds the estimator's noise (its standard
    # error), the solver's error (rtol = atol = 1e-5) and log p_eps - log p_0 at eps = 1e-5 (VP: the variance grows by
    # ~1e-6): 4 standard errors plus 2e-3 nats bounds it.
    assert result["prior"] == "exact" and result["unit"] == "nats"
    assert abs(diff["mean"]) < 4 * diff["se"] + 2e-3, (result["mean"], toy["exact_nll"])
    assert result["mean"] - toy["exact_nll"]["mean"] == pytest.approx(diff["mean"], abs=1e-12)
    if divergence == HUTCHINSON:
        assert result["repeats"] == 2 and diff["se"] > 1e-4  # a genuinely stochastic estimate, still unbiased
    else:
        assert result["repeats"] == 1  # exact divergence on points is deterministic: repeats would be copies
    # Fresh points of the mixture: their exact NLL estimates the true entropy.
    entropy, exact = toy["entropy"], toy["exact_nll"]
    assert abs(exact["mean"] - entropy["mean"]) < 4 * math.hypot(exact["se"], entropy["se"])
    assert json.loads((out / "likelihood.json").read_text())["toy"] == toy
    saved = np.load(out / "likelihood_values.npz")
    assert saved["values"].shape == (400, result["repeats"])
    np.testing.assert_allclose(saved["exact_nll"].mean(), exact["mean"], rtol=1e-12)


def test_standard_error_is_std_over_sqrt_count_of_the_reported_values(tmp_path):
    result, out = run(tmp_path, ["model=oracle", "data=toy_eight_gaussians", "device=cpu", "n=60", "repeats=3",
                                 *HUTCHINSON])
    values = np.load(out / "likelihood_values.npz")["values"]
    assert values.shape == (60, 3)
    assert np.all(np.std(values, axis=1) > 0)  # each repeat draws its own probes
    per_example = values.mean(axis=1)
    assert result["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert result["se"] == pytest.approx(per_example.std(ddof=1) / math.sqrt(60), rel=1e-10)
    np.testing.assert_allclose(result["per_repeat_mean"], values.mean(axis=0), rtol=1e-12)
    assert result["se_between_repeats"] == pytest.approx(values.mean(axis=0).std(ddof=1) / math.sqrt(3), rel=1e-10)
    assert json.loads((out / "likelihood.json").read_text())["se"] == result["se"]


# --- several processes --------------------------------------------------------------------------------------------
def _cli(launcher: list[str], args: list[str], tmp: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp), HYDRA_FULL_ERROR="0",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([*launcher, str(ROOT / "likelihood.py"), *args], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_torchrun_two_processes_give_the_values_of_one_and_one_run_folder(tmp_path):
    args = TOY + ["n=96", "batch_size=16", "repeats=2", *HUTCHINSON]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = _cli(python_command(), args, tmp_path / "one")
    two = _cli([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], args,
               tmp_path / "two")
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    (run_one,) = (tmp_path / "one" / "logs" / "likelihood" / "runs").iterdir()
    (run_two,) = (tmp_path / "two" / "logs" / "likelihood" / "runs").iterdir()  # exactly one folder for the job
    assert not list((tmp_path / "two").glob("scorelab-rank*"))  # rank 1's temporary Hydra folder is gone
    assert two.stdout.count("model NLL") == 1  # only rank 0 reports
    res_one, res_two = (json.loads((r / "likelihood.json").read_text()) for r in (run_one, run_two))
    assert (res_one["world_size"], res_two["world_size"]) == (1, 2)
    v_one, v_two = (np.load(r / "likelihood_values.npz")["values"] for r in (run_one, run_two))
    np.testing.assert_allclose(v_two, v_one, rtol=0, atol=1e-12)  # same batches, same per-example seeds
    assert res_two["mean"] == pytest.approx(res_one["mean"], abs=1e-12)
    assert res_two["nfe"] == res_one["nfe"]


# --- images -------------------------------------------------------------------------------------------------------
def test_image_checkpoint_bits_per_dim_from_its_own_data_here(tmp_path, image_run):
    result, out = run(tmp_path, [f"ckpt_path={image_run['ckpt']}", f"paths.data_dir={image_run['data_dir']}",
                                 "split=test", "n=5", "batch_size=2", "repeats=2", "rtol=1e-3", "atol=1e-3",
                                 "device=cpu"])
    saved = json.loads((out / "likelihood.json").read_text())
    values = np.load(out / "likelihood_values.npz")["values"]
    assert saved["unit"] == "bits/dim" and saved["n"] == 5 and values.shape == (5, 2)
    assert np.isfinite(values).all() and math.isfinite(saved["mean"]) and saved["se"] > 0
    assert saved["divergence"] == "hutchinson" and saved["nfe"]["solves"] == 3 * 2  # 3 batches (2, 2, 1) x 2
    assert not np.array_equal(values[:, 0], values[:, 1])  # fresh dequantisation noise and probes per repeat


# --- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["ckpt_path={tmp}/missing.ckpt"], "checkpoint not found"),
    (TOY + ["split=holdout"], "split must be one of"),
    (TOY + ["repeats=0"], "repeats must be a positive integer"),
    (TOY + ["eps=1.5"], "eps must be smaller than the SDE's end time"),
    (["split=test"], "nothing to evaluate"),
    (["model=oracle", "data=npz", "data.path={data}/tiny.npz"], "needs toy data"),
    (["ckpt_path={ckpt}", "data=toy_two_modes"], "was trained on (1, 8, 8)"),
    (["ckpt_path={ckpt}", *NPZ, "data.data_range=[0.0,1.0]"], "data.data_range=[-1.0, 1.0]"),
    (["ckpt_path={ckpt}", *NPZ, "split=test"], "has no test split"),
], ids=["missing-ckpt", "unknown-split", "repeats", "eps", "no-model", "oracle-images", "shape", "range",
        "absent-split"])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, image_run, overrides, message):
    fill = {"tmp": tmp_path, "ckpt": image_run["ckpt"], "data": image_run["data_dir"]}
    overrides = [o.format(**fill) for o in overrides] + [f"paths.data_dir={image_run['data_dir']}", "device=cpu"]
    with pytest.raises(UserError, match=re.escape(message)):
        run(tmp_path, overrides)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args", [["split=holdout"], ["ckpt_path=missing.ckpt"]], ids=["split", "ckpt"])
def test_command_line_errors_are_one_line_with_status_2(tmp_path, args):
    res = _cli(python_command(), TOY + args, tmp_path)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert not list(tmp_path.glob("logs/**/likelihood.json"))
