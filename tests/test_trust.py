"""What users run works as typed: sweeps survive a failed job, resume never silently restarts, a full or unwritable
disk is one line, and a setting means one thing in every command."""
from __future__ import annotations

import csv
import errno
import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from scorelab.cli.errors import UserError, describe
from scorelab.cli.resume import resolve_ckpt_path

from .platform_utils import FAST, ROOT, make_cfg, run_script

FAST_CLI = FAST + ["callbacks.samples.n_samples=100", "callbacks.toy_metrics.n_samples=300", "logger=none"]


def _errors(res) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]


# --- sweeps -------------------------------------------------------------------------------------------------------
def _sweep_rows(tmp_path, task="train"):
    (sweep,) = list((tmp_path / "logs" / task / "multiruns").iterdir())
    with (sweep / "summary.csv").open() as f:
        return sweep, list(csv.DictReader(f))


def test_the_readme_sweep_runs_as_typed(tmp_path):
    """The mission's headline command, with nothing but the README's own overrides and a short job."""
    res = run_script("train.py", ["-m", "sde.beta_min=0.05,0.1", "sde.beta_max=10,20", *FAST_CLI], cwd=tmp_path,
                     timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    sweep, rows = _sweep_rows(tmp_path)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert sweep.parent == tmp_path / "logs" / "train" / "multiruns"  # ./logs of the folder it ran in


def test_a_failed_sweep_job_is_recorded_and_the_others_run(tmp_path):
    res = run_script("train.py", ["-m", "sde.beta_max=20,-1,10", *FAST_CLI], cwd=tmp_path, timeout=600)
    assert res.returncode == 2, res.stderr[-3000:]  # non-zero at the end, after every job ran
    sweep, rows = _sweep_rows(tmp_path)
    assert [r["status"] for r in rows] == ["ok", "failed (config)", "ok"]
    assert "beta_max must be a positive finite number, got -1" in rows[1]["error"]
    assert (sweep / "2" / "final_metrics.json").is_file()  # the job after the failure ran to the end
    assert json.loads((sweep / "1" / "job.json").read_text())["status"] == "failed"
    assert "failed (config)" in (sweep / "summary.md").read_text()
    last = _errors(res)[-1]
    assert "1 of 3 sweep jobs failed (job 1: sde: beta_max must be" in last and "summary.md" in last


def test_a_failed_sample_sweep_job_does_not_stop_the_study(tmp_path):
    res = run_script("sample.py", ["-m", "model=oracle", "sampler=ipndm_toy10", "sampler.steps=2,3,10",
                                   "n_samples=200"], cwd=tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    sweep, rows = _sweep_rows(tmp_path, "sample")
    assert [r["status"] for r in rows] == ["failed (config)", "ok", "ok"]
    assert "steps = 2 is too few" in rows[0]["error"] and float(rows[2]["nfe"]) == 10
    assert (sweep / "2" / "samples.npz").is_file()


def test_a_failed_job_under_the_submitit_local_executor_is_recorded_too(tmp_path):
    """submitit runs each job in its own process: the record travels through the job folder, not memory."""
    args = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "sde.beta_max=-1,10", *FAST_CLI,
            "trainer.max_steps=2"]
    res = run_script("train.py", args, cwd=tmp_path, timeout=400)
    assert res.returncode == 2, res.stderr[-3000:]
    sweep, rows = _sweep_rows(tmp_path)
    assert [r["status"] for r in rows] == ["failed (config)", "ok"]
    assert torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


# --- resume -------------------------------------------------------------------------------------------------------
def test_a_dangling_last_checkpoint_is_refused_not_restarted(tmp_path):
    run = tmp_path / "logs" / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").symlink_to(tmp_path / "scratch" / "last.ckpt")  # scratch not mounted
    with pytest.raises(UserError, match="last.ckpt is a link to .*which does not exist"):
        resolve_ckpt_path("auto", run)
    res = run_script("train.py", [*FAST_CLI, f"hydra.run.dir={run}", "ckpt_path=auto"], cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and len(_errors(res)) == 1 and "which does not exist" in _errors(res)[0]
    assert (run / "checkpoints" / "last.ckpt").is_symlink()  # the link is left as it was: nothing was replaced
    assert not (run / "final_metrics.json").exists()


def test_an_unreadable_last_checkpoint_is_refused_not_restarted(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    cfg = make_cfg(tmp_path, FAST_CLI + ["ckpt_path=auto"])
    cfg.paths.output_dir = str(run)
    from scorelab.cli.train import train

    with pytest.raises(UserError, match="last.ckpt cannot be read"):
        train(cfg)
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"PK\x03\x04 truncated"


# --- the disk -----------------------------------------------------------------------------------------------------
def test_a_full_disk_is_one_line_that_keeps_what_was_written(tmp_path, monkeypatch, capsys):
    """ENOSPC from the middle of a job: one line with what to do, exit 2, the files already written kept."""
    import importlib

    from scorelab.cli import entry

    train_module = importlib.import_module("scorelab.cli.train")  # the module (scorelab.cli.train is the function)

    cfg = make_cfg(tmp_path, FAST_CLI)
    real = train_module.write_text_atomic

    def full_disk(path, text):
        if str(path).endswith("final_metrics.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, text)

    monkeypatch.setattr(train_module, "write_text_atomic", full_disk)
    with pytest.raises(SystemExit) as info:
        entry.run_job(train_module.train, cfg)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: No space left on device: ") and "the disk is full" in err[0]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()  # the checkpoint written before it stays


def test_os_errors_are_described_with_what_to_do():
    assert "no permission" in describe(PermissionError(errno.EACCES, "Permission denied", "/x/y"))
    assert "read-only" in describe(OSError(errno.EROFS, "Read-only file system", "/x"))
    assert describe(OSError(errno.ENOSPC, "No space left on device")).startswith("No space left on device; the disk")


# --- one meaning per setting ----------------------------------------------------------------------------------------
def test_every_reader_of_data_follows_one_data_folder(tmp_path):
    cfg = make_cfg(tmp_path, ["experiment=mnist_small", "data.data_dir=/elsewhere", "features=mnist"])
    assert cfg.data.data_dir == "/elsewhere" and cfg.features.data_dir == "/elsewhere"  # the fd_mnist classifier
    cfg = make_cfg(tmp_path, ["experiment=mnist_small", "paths.data_dir=/moved"])
    assert cfg.data.data_dir == "/moved" and cfg.features.data_dir == "/moved"
    from scorelab.cli.restore import data_folder

    sample_cfg = make_cfg(tmp_path, ["paths.data_dir=/moved"], config_name="sample")
    assert data_folder(sample_cfg) == "/moved"  # what a restored run's data module reads (tasks, FID reference)


def test_missing_data_names_the_data_folder_setting_and_the_download_key(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORELAB_CACHE", str(tmp_path / "cache"))  # with or without a cached fd_mnist classifier
    res = run_script("train.py", ["experiment=mnist_small", f"paths.data_dir={tmp_path / 'empty'}"], cwd=tmp_path,
                     timeout=120)
    assert res.returncode == 2 and len(_errors(res)) == 1, res.stderr[-2000:]
    line = _errors(res)[0]
    assert "data.data_dir" in line and "paths.data_dir" in line and "data.download=true" in line
    assert not (tmp_path / "logs" / "train").exists()  # no empty run folder is left behind


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    from scorelab.cli.train import train

    root = tmp_path_factory.mktemp("toyrun")
    cfg = make_cfg(root, FAST_CLI)
    train(cfg)
    return root / "run"


@pytest.mark.parametrize("form", ["file", "folder", "last", "auto"])
def test_ckpt_path_takes_the_same_forms_in_sample_py_as_in_train_py(tmp_path, toy_run, form):
    from scorelab.cli.sample import sample

    value = {"file": toy_run / "checkpoints" / "last.ckpt", "folder": toy_run}.get(form, form)
    cfg = make_cfg(tmp_path, [f"ckpt_path={value}", "n_samples=50", "+sampler.steps=5"], config_name="sample")
    if form in ("last", "auto"):  # relative to the command's own run folder, as in train.py
        cfg.paths.output_dir = str(toy_run)
    out = sample(cfg)
    assert out.name == "samples.npz" and out.is_file()


def test_sample_py_auto_with_nothing_to_read_is_one_line(tmp_path):
    from scorelab.cli.sample import sample

    cfg = make_cfg(tmp_path, ["ckpt_path=auto"], config_name="sample")
    with pytest.raises(UserError, match="ckpt_path=auto: no checkpoint in"):
        sample(cfg)


def test_stored_module_keys_unknown_here_are_one_line(tmp_path, toy_run):
    from scorelab.cli.sample import load_trained

    ckpt = torch.load(toy_run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["scorelab_config"]["module"]["warp_drive"] = True
    torch.save(ckpt, tmp_path / "future.ckpt")
    with pytest.raises(UserError, match="warp_drive"):
        load_trained(str(tmp_path / "future.ckpt"))


def test_paths_have_no_hydra_runtime_interpolation():
    """Hydra resolves hydra.sweep.dir before HydraConfig exists: nothing it reads may need HydraConfig."""
    node = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "paths" / "default.yaml"), resolve=False)
    assert "hydra:" not in node["root_dir"] + node["log_dir"] + node["data_dir"]


# --- damaged files through the commands: one line, exit 2 -------------------------------------------------------------
def _fid_setup(tmp_path):
    """An offline fd_mnist extractor file and sane reference statistics of it (fid.py needs both)."""
    import numpy as np

    from scorelab.metrics.mnist_classifier import MNISTClassifier, MNISTFeatures, save_mnist_classifier

    torch.manual_seed(0)
    net = MNISTClassifier(channels=(4, 8, 8), num_features=8)
    clf = save_mnist_classifier(net, tmp_path / "clf.pt", test_accuracy=0.0)
    ex = MNISTFeatures(net)
    f = np.random.default_rng(1).standard_normal((40, 8))
    np.savez(tmp_path / "ref.npz", format=np.array("scorelab-feature-stats-v1"), mu=f.mean(0),
             sigma=np.cov(f, rowvar=False), count=np.array(40), extractor_id=np.array(ex.extractor_id),
             preprocessing=np.array(ex.preprocessing), dataset=np.array("mnist"), split=np.array("train"))
    return [f"ref={tmp_path / 'ref.npz'}", "features=mnist", f"feature_extractor_weights_path={clf}",
            "progress=false", f"cache_dir={tmp_path / 'cache'}"]


def _png_samples(tmp_path, bad) -> str:
    import numpy as np
    from PIL import Image

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((28, 28), 60 * (i + 1), np.uint8)).save(folder / f"00000{i}.png")
    bad(folder / "000002.png")
    return str(folder)


def _bomb(path):
    from PIL import Image

    Image.new("1", (30000, 30000)).save(path)  # small on disk, 900 megapixels once decoded


def _truncated_npz(tmp_path) -> str:
    import numpy as np

    np.savez(tmp_path / "full.npz", x=np.zeros((64, 28, 28), np.uint8))
    data = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    return str(tmp_path / "cut.npz")


@pytest.mark.parametrize("case, expected", [
    ("corrupt png", "000002.png cannot be read"),
    ("decompression bomb", "000002.png is refused as a decompression bomb"),
    ("truncated npz", "cut.npz cannot be read"),
])
def test_damaged_sample_files_are_one_line_with_status_2(tmp_path, case, expected):
    make = {"corrupt png": lambda: _png_samples(tmp_path, lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 64)),
            "decompression bomb": lambda: _png_samples(tmp_path, _bomb),
            "truncated npz": lambda: _truncated_npz(tmp_path)}[case]
    res = run_script("fid.py", [f"samples={make()}", *_fid_setup(tmp_path)], cwd=tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(_errors(res)) == 1 and expected in _errors(res)[0] and "Traceback" not in res.stderr
    assert not list(tmp_path.glob("*_fd_mnist.json"))


@pytest.mark.parametrize("case, expected", [
    ("extra key", "backdoor.weight"),
    ("non-tensor value", "not a tensor"),
    ("config stored as a list", "stored scorelab_config is a list"),
    ("unknown module key", "warp_drive"),
])
def test_malformed_checkpoints_are_one_line_with_status_2(tmp_path, toy_run, case, expected):
    ckpt = torch.load(toy_run / "checkpoints" / "last.ckpt", weights_only=True)
    first = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    if case == "extra key":
        ckpt["state_dict"]["backdoor.weight"] = torch.ones(1)
    elif case == "non-tensor value":
        ckpt["state_dict"][first] = [1.0, 2.0]
    elif case == "config stored as a list":
        ckpt["scorelab_config"] = [1, 2]
    else:
        ckpt["scorelab_config"]["module"]["warp_drive"] = True
    torch.save(ckpt, tmp_path / "bad.ckpt")
    res = run_script("sample.py", [f"ckpt_path={tmp_path / 'bad.ckpt'}", "n_samples=10"], cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(_errors(res)) == 1 and expected in _errors(res)[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "logs" / "sample").exists()  # no empty run folder left behind
