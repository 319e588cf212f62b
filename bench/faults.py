"""Fault drill: inject faults and bad input into the real commands and print what was lost.

Every row runs ``train.py`` / ``sample.py`` / ``fid.py`` / ``python -m scorelab.convert`` as a subprocess on the toy
default (a few seconds each), injects one fault (a signal, a hostile or damaged file, a mistake on the command line, a
full or unwritable disk, a failing sweep job), then checks from the outside what is on disk: exit code, the message the
user sees, whether earlier files (a previous checkpoint, a victim file) are intact, whether a payload ran, and whether
the work that should go on (a resume, the other jobs of a sweep) did.

    python bench/faults.py [--out FILE]      # prints a Markdown table (~6 minutes on 2 CPU cores)

The unit tests hold each of these behaviours (tests/test_preemption.py, test_atomic_writes.py, test_safety.py,
test_nonfinite.py, test_trust.py, test_validated_inputs.py, test_cli.py); this script shows them end to end, through
the command line, in one table.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TOY = ["trainer.enable_progress_bar=false", "data.n_train=4096", "data.n_val=512", "data.batch_size=512",
       "sampler.steps=10", "callbacks.samples.n_samples=256", "logger=none"]
MARKER = ["+callbacks.marker._target_=tests.faults.StepMarker"]


def _env() -> dict:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, WANDB_MODE="offline", HYDRA_FULL_ERROR="0", PYTHONPATH=path)


def _run(script: str, args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", script] if not script.endswith(".py") else [sys.executable, str(ROOT / script)]
    return subprocess.run([*command, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _message(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("error:", "SIGTERM", "SIGUSR1"))]
    text = lines[-1] if lines else (proc.stderr.strip().splitlines() or ["(none)"])[-1]
    return text if len(text) < 110 else text[:107] + "..."


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*")) if p.is_file()}


def _step(ckpt: Path) -> int:
    return int(torch.load(ckpt, weights_only=True, map_location="cpu")["global_step"])


def _signal_mid_run(tmp: Path, signum: int, after: int = 5) -> tuple[int, str, Path]:
    run = tmp / f"run_{signum}"
    with open(tmp / "err.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *TOY, *MARKER, "trainer.max_steps=100000",
                                 f"hydra.run.dir={run}"], cwd=tmp, env=_env(), stdout=subprocess.PIPE, stderr=err,
                                text=True)
        for line in proc.stdout:
            if line.startswith("step ") and int(line.split()[1]) >= after:
                proc.send_signal(signum)
                break
        proc.communicate(timeout=300)
    return proc.returncode, (tmp / "err.txt").read_text(), run


def preemption(tmp: Path, signum: int) -> tuple[str, str, str]:
    code, err, run = _signal_mid_run(tmp, signum)
    last = run / "checkpoints" / "last.ckpt"
    k = _step(last)
    resumed = _run("train.py", [*TOY, f"hydra.run.dir={run}", "ckpt_path=auto", f"trainer.max_steps={k + 4}"], tmp)
    k2 = _step(last)
    said = [ln for ln in err.splitlines() if "saved" in ln]
    return (f"exit {code}; {said[-1].split(': ')[0] if said else 'no message'}: last.ckpt at step {k}; "
            f"`ckpt_path=auto` resumed (exit {resumed.returncode}) to step {k2}",
            "nothing" if code == 0 and k2 == k + 4 else "LOST", "")


def killed(tmp: Path) -> tuple[str, str, str]:
    """SIGKILL (no chance to save): what survives is the last periodic checkpoint, intact."""
    first = tmp / "killed"
    _run("train.py", [*TOY, "trainer.max_steps=8", f"hydra.run.dir={first}"], tmp)
    before = _step(first / "checkpoints" / "last.ckpt")
    with open(tmp / "err.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *TOY, *MARKER, "trainer.max_steps=100000",
                                 "ckpt_path=auto", f"hydra.run.dir={first}"], cwd=tmp, env=_env(),
                                stdout=subprocess.PIPE, stderr=err, text=True)
        for line in proc.stdout:
            if line.startswith("step ") and int(line.split()[1]) >= before + 3:
                proc.kill()
                break
        proc.wait()
    after = _step(first / "checkpoints" / "last.ckpt")
    return (f"SIGKILL at step {before + 3}: last.ckpt still loads (step {after}), `ckpt_path=auto` resumes from it",
            f"the {before + 3 - after} steps since the last checkpoint",
            "a kill cannot be caught: `callbacks.model_checkpoint.every_n_train_steps` bounds it")


def _sample_refuses(tmp: Path, ckpt: Path, marker: Path | None = None) -> tuple[str, str, str]:
    out = tmp / "sample_out"
    out.mkdir(exist_ok=True)
    (out / "keep.txt").write_text("earlier results")
    before = _digest(out)
    proc = _run("sample.py", [f"ckpt_path={ckpt}", "n_samples=16", f"hydra.run.dir={out}"], tmp)
    ran = marker is not None and marker.exists()
    kept = _digest(out) == before or all(out.joinpath(k).exists() for k in before)
    return (f"exit {proc.returncode}: {_message(proc)}" + ("; PAYLOAD RAN" if ran else "; payload did not run"
                                                           if marker else ""),
            "nothing" if kept and not ran else "LOST", "")


class _TouchOnUnpickle:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def hostile_pickle(tmp: Path) -> tuple[str, str, str]:
    marker, path = tmp / "pwned", tmp / "hostile.ckpt"
    torch.save({"state_dict": {}, "payload": _TouchOnUnpickle(marker)}, path)
    return _sample_refuses(tmp, path, marker)


def hostile_target(tmp: Path, good: Path) -> tuple[str, str, str]:
    ckpt, marker = torch.load(good, weights_only=True), tmp / "pwned_target"
    ckpt["scorelab_config"]["sde"] = {"_target_": "pathlib.Path.touch", "_args_": [str(marker)]}
    path = tmp / "target.ckpt"
    torch.save(ckpt, path)
    return _sample_refuses(tmp, path, marker)


def truncated(tmp: Path, good: Path) -> tuple[str, str, str]:
    path = tmp / "truncated.ckpt"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return _sample_refuses(tmp, path)


def nonfinite(tmp: Path, policy: str) -> tuple[str, str, str]:
    run = tmp / f"nan_{policy}"
    _run("train.py", [*TOY, "trainer.max_steps=8", f"hydra.run.dir={run}"], tmp)
    before = _digest(run / "checkpoints")
    proc = _run("train.py", [*TOY, "loss._target_=tests.faults.FaultyLoss", "+loss.nan_loss_at=[2]",
                             "+loss.nan_grad_at=[4]", f"module.nonfinite={policy}", "ckpt_path=auto",
                             "trainer.max_steps=16", f"hydra.run.dir={run}"], tmp)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    finite = all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    if policy == "skip":
        what = (f"exit {proc.returncode}; run finished at step {ckpt['global_step']}, "
                f"{ckpt['scorelab_nonfinite']['skipped']} steps skipped and logged, weights finite: {finite}")
        return what, "the 2 bad batches (by policy)", ""
    kept = _digest(run / "checkpoints") == before
    return (f"exit {proc.returncode}: {_message(proc)}", "nothing" if kept and finite else "LOST",
            "last.ckpt unchanged (step 8)" if kept else "")


def nan_samples(tmp: Path, good: Path) -> tuple[str, str, str]:
    out = tmp / "nan_samples"
    proc = _run("sample.py", [f"ckpt_path={good}", "n_samples=16", "sampler._target_=tests.faults.NaNSampler",
                              f"hydra.run.dir={out}"], tmp)
    written = list(out.glob("*.npz"))
    return f"exit {proc.returncode}: {_message(proc)}", "nothing" if not written else "NaNs WRITTEN", ""


def bad_input(tmp: Path, good_run: Path, args: list[str], script: str = "train.py") -> tuple[str, str, str]:
    before = _digest(good_run / "checkpoints")
    proc = _run(script, args, tmp)
    return (f"exit {proc.returncode}: {_message(proc)}",
            "nothing" if _digest(good_run / "checkpoints") == before else "LOST", "")



# --- hostile stored configs: nothing in a file chooses code ------------------------------------------------------
VICTIM = b"precious bytes\n"


def _victim(tmp: Path, name: str) -> Path:
    path = tmp / f"victim_{name}.txt"
    path.write_bytes(VICTIM)
    return path


def _planted(good: Path, tmp: Path, name: str, where: str, value) -> Path:
    ckpt = torch.load(good, weights_only=True)
    node = ckpt["scorelab_config"]
    *parents, last = where.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    path = tmp / f"{name}.ckpt"
    torch.save(ckpt, path)
    return path


def hostile_stored(tmp: Path, good: Path, name: str, where: str, value_of) -> tuple[str, str, str]:
    """A stored config that would write ``marker`` or truncate a victim file if anything in it were built."""
    marker, victim = tmp / f"pwned_{name}", _victim(tmp, name)
    path = _planted(good, tmp, name, where, value_of(marker, victim))
    what, lost, note = _sample_refuses(tmp, path, marker)
    intact = victim.read_bytes() == VICTIM
    leaked = os.environ.get("HOME", "\0") in what
    return (what + ("" if intact else "; VICTIM TRUNCATED") + ("; HOME PRINTED" if leaked else ""),
            lost if intact and not leaked else "LOST", note)


def _open_for_writing(victim: Path) -> str:
    return "{_target_: builtins.open, _args_: ['" + str(victim) + "', w]}"


def hostile_converter_input(tmp: Path) -> tuple[str, str, str]:
    victim = _victim(tmp, "convert")
    source = tmp / "reference.pth"
    torch.save({"state_dict": {"all_modules.0.weight": torch.zeros(2)},
                "config": {"nf": {"_target_": "builtins.open", "_args_": [str(victim), "w"]}}}, source)
    proc = _run("scorelab.convert", [str(source), "--config", "sde=vp", "--weights", "raw", "--out",
                                      str(tmp / "converted.ckpt")], tmp)
    ok = victim.read_bytes() == VICTIM and not (tmp / "converted.ckpt").exists()
    return f"exit {proc.returncode}: {_message(proc)}", "nothing" if ok else "LOST", ""


# --- poisoned statistics, damaged sample files (fid.py) ----------------------------------------------------------
def _extractor(tmp: Path):
    """A small fd_mnist classifier file (random weights) and its extractor: fid.py runs offline with it."""
    from scorelab.metrics.mnist_classifier import MNISTClassifier, MNISTFeatures, save_mnist_classifier

    path = tmp / "classifier.pt"
    torch.manual_seed(0)
    net = MNISTClassifier(channels=(4, 8, 8), num_features=8)
    if not path.exists():
        save_mnist_classifier(net, path, test_accuracy=0.0)
    return path, MNISTFeatures(net)


def _fid(tmp: Path, samples: Path, ref: Path) -> subprocess.CompletedProcess:
    clf, _ = _extractor(tmp)
    return _run("fid.py", [f"samples={samples}", f"ref={ref}", "features=mnist",
                           f"feature_extractor_weights_path={clf}", "progress=false",
                           f"cache_dir={tmp / 'cache'}"], tmp)


def _digits(tmp: Path, n: int = 8) -> Path:
    path = tmp / "digits.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8))
    return path


def poisoned_stats(tmp: Path, name: str, change) -> tuple[str, str, str]:
    """A reference-statistics file of the right extractor whose numbers are poisoned."""
    _, ex = _extractor(tmp)
    f = np.random.default_rng(1).standard_normal((40, ex.num_features))
    arrays = {"format": np.array("scorelab-feature-stats-v1"), "mu": f.mean(0), "sigma": np.cov(f, rowvar=False),
              "count": np.array(40), "extractor_id": np.array(ex.extractor_id),
              "preprocessing": np.array(ex.preprocessing), "dataset": np.array("mnist"), "split": np.array("train")}
    arrays.update(change(arrays))
    ref = tmp / f"ref_{name}.npz"
    np.savez(ref, **arrays)
    samples = _digits(tmp)
    proc = _fid(tmp, samples, ref)
    result = samples.with_name("digits_fd_mnist.json")
    wrote = result.exists()
    result.unlink(missing_ok=True)
    crashed = proc.returncode not in (0, 2)
    return (f"exit {proc.returncode}: {_message(proc)}", "nothing" if not wrote and not crashed else "WRONG RESULT",
            "no segmentation fault" if name == "NaN covariance" and proc.returncode != 139 else "")


def bad_samples(tmp: Path, name: str, make) -> tuple[str, str, str]:
    """A samples file or folder that is damaged or hostile, scored by fid.py against sane statistics."""
    _, ex = _extractor(tmp)
    f = np.random.default_rng(1).standard_normal((40, ex.num_features))
    ref = tmp / "ref_sane.npz"
    np.savez(ref, format=np.array("scorelab-feature-stats-v1"), mu=f.mean(0), sigma=np.cov(f, rowvar=False),
             count=np.array(40), extractor_id=np.array(ex.extractor_id), preprocessing=np.array(ex.preprocessing),
             dataset=np.array("mnist"), split=np.array("train"))
    samples = make(tmp / f"samples_{name.replace(' ', '_')}")
    proc = _fid(tmp, samples, ref)
    return f"exit {proc.returncode}: {_message(proc)}", "nothing" if proc.returncode == 2 else "LOST", ""


def _npz(array) -> callable:
    def make(path: Path) -> Path:
        np.savez(path.with_suffix(".npz"), x=array)
        return path.with_suffix(".npz")
    return make


def _truncated_npz(path: Path) -> Path:
    full = _digits(path.parent, 64)
    out = path.with_suffix(".npz")
    out.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    return out


def _png_folder(write) -> callable:
    """A folder of two good digits and, last, one bad file written by ``write``."""
    def make(path: Path) -> Path:
        from PIL import Image

        path.mkdir(exist_ok=True)
        for i in range(2):
            Image.fromarray(np.full((28, 28), 60 * (i + 1), np.uint8)).save(path / f"00000{i}.png")
        write(path / "000002.png")
        return path
    return make


def _bomb(path: Path) -> None:
    from PIL import Image

    Image.new("1", (30000, 30000)).save(path)  # 112 KB on disk, 900 megapixels decoded


# --- damaged weights (sample.py) ----------------------------------------------------------------------------------
def damaged_weights(tmp: Path, good: Path, name: str, damage) -> tuple[str, str, str]:
    ckpt = torch.load(good, weights_only=True)
    damage(ckpt)
    path = tmp / f"weights_{name.replace(' ', '_')}.ckpt"
    torch.save(ckpt, path)
    return _sample_refuses(tmp, path)


def _first_weight(ckpt: dict) -> str:
    return next(k for k, v in ckpt["state_dict"].items() if torch.is_tensor(v) and v.is_floating_point())


# --- lost work: sweeps and resume ---------------------------------------------------------------------------------
def failing_sweep(tmp: Path, script: str, args: list[str], task: str) -> tuple[str, str, str]:
    cwd = tmp / f"sweep_{task}"
    cwd.mkdir(exist_ok=True)
    proc = _run(script, ["-m", *args], cwd)
    (sweep,) = list((cwd / "logs" / task / "multiruns").iterdir())
    with (sweep / "summary.csv").open() as f:
        statuses = [row["status"] for row in csv.DictReader(f)]
    ran = sum(s == "ok" for s in statuses)
    return (f"exit {proc.returncode}: jobs {', '.join(statuses)}; {_message(proc)}",
            "nothing" if ran == len(statuses) - 1 else "LOST", "the failure is in summary.md and its job.json")


def dangling_last(tmp: Path, good_run: Path) -> tuple[str, str, str]:
    run = tmp / "dangling"
    shutil.copytree(good_run, run)
    (run / "checkpoints" / "last.ckpt").unlink()
    (run / "checkpoints" / "last.ckpt").symlink_to(tmp / "scratch_not_mounted" / "last.ckpt")
    proc = _run("train.py", [*TOY, f"hydra.run.dir={run}", "ckpt_path=auto", "trainer.max_steps=16"], tmp)
    still = (run / "checkpoints" / "last.ckpt").is_symlink() and not (run / "final_metrics.json").exists() or \
        (run / "final_metrics.json").stat().st_mtime <= (good_run / "final_metrics.json").stat().st_mtime
    return f"exit {proc.returncode}: {_message(proc)}", "nothing" if proc.returncode == 2 and still else "LOST", \
        "not restarted from step 0; the link is left as it was"


# --- mistakes on the command line and full or unwritable disks ------------------------------------------------------
def mistake(tmp: Path, script: str, args: list[str]) -> tuple[str, str, str]:
    cwd = tmp / "mistakes"
    cwd.mkdir(exist_ok=True)
    proc = _run(script, args, cwd)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    one = len(lines) == 1 and lines[0].startswith("error:")
    left = list((cwd / "logs").rglob("*")) if (cwd / "logs").exists() else []
    return (f"exit {proc.returncode}: {_message(proc)}", "nothing" if not left else f"{len(left)} files left",
            "" if one else f"{len(lines)} lines of output")


def full_disk(tmp: Path, good: Path, free_kib: int) -> tuple[str, str, str]:
    """A 1 MiB tmpfs as the output folder with ``free_kib`` left (needs root to mount: otherwise the row says so)."""
    mount = tmp / f"tiny_disk_{free_kib}"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        return "not run: mounting a 1 MiB tmpfs needs root", "-", "tests/test_trust.py injects ENOSPC instead"
    try:
        (mount / "keep.txt").write_text("earlier results")
        (mount / "filler").write_bytes(b"\0" * ((1024 - free_kib) * 1024 - 8192))
        proc = _run("sample.py", [f"ckpt_path={good}", "n_samples=40000", f"hydra.run.dir={mount / 'run'}"], tmp)
        kept = (mount / "keep.txt").read_text() == "earlier results"
        partial = [p.name for p in (mount / "run").glob("samples.npz")] if (mount / "run").exists() else []
        return (f"exit {proc.returncode}: {_message(proc)}", "nothing" if kept and not partial else "LOST",
                "no truncated samples.npz" if not partial else "")
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def wrong_data_folder(tmp: Path, empty: Path) -> tuple[str, str, str]:
    cwd = tmp / "data_folder"
    cwd.mkdir(exist_ok=True)
    proc = _run("train.py", ["experiment=mnist_small", f"data.data_dir={empty}"], cwd)
    left = list((cwd / "logs").rglob("*")) if (cwd / "logs").exists() else []
    names = all(k in proc.stderr for k in ("data.data_dir", "paths.data_dir", "data.download=true"))
    return (f"exit {proc.returncode}: {_message(proc)}", "nothing" if not left else f"{len(left)} files left",
            "the message names the data folder setting and the download key" if names else "SETTINGS NOT NAMED")


HEADER = """# Fault drill: what each fault and bad input costs

`python bench/faults.py --out docs/faults.md` runs `train.py`, `sample.py`, `fid.py` and `python -m scorelab.convert`
as subprocesses on the toy default, injects one fault per row (a signal, a hostile or damaged file, a mistake on the
command line, a full or unwritable disk, a failing sweep job), and checks from the outside what is left: the exit
status, the message a user sees, whether earlier files and a victim file are intact, whether a payload ran, whether
the work that should go on did. The unit tests hold each behaviour separately (`tests/test_preemption.py`,
`tests/test_atomic_writes.py`, `tests/test_safety.py`, `tests/test_nonfinite.py`, `tests/test_trust.py`,
`tests/test_validated_inputs.py`, `tests/test_cli.py`); this table shows them end to end. Messages are cut at ~100
characters; `/tmp/...` are the drill's temporary folders.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        good_run = tmp / "good"
        _run("train.py", [*TOY, "trainer.max_steps=8", f"hydra.run.dir={good_run}"], tmp)
        good = good_run / "checkpoints" / "last.ckpt"
        empty = tmp / "no_data"
        empty.mkdir()
        rows = [
            ("SIGTERM during training", preemption(tmp, signal.SIGTERM)),
            ("SIGUSR1 during training (SLURM)", preemption(tmp, signal.SIGUSR1)),
            ("SIGKILL during training", killed(tmp)),
            ("checkpoint with a pickle payload, to sample.py", hostile_pickle(tmp)),
            ("checkpoint config naming `pathlib.Path.touch` as `_target_`", hostile_target(tmp, good)),
            ("truncated checkpoint, to sample.py", truncated(tmp, good)),
            ("NaN loss + NaN gradients, `module.nonfinite=skip`", nonfinite(tmp, "skip")),
            ("NaN loss + NaN gradients, `module.nonfinite=stop`", nonfinite(tmp, "stop")),
            ("sampler produces NaN, sample.py", nan_samples(tmp, good)),
            ("MNIST with no files in `paths.data_dir`",
             bad_input(tmp, good_run, ["experiment=mnist_small", f"paths.data_dir={empty}",
                                       f"hydra.run.dir={good_run}"])),
            ("`ckpt_path` that does not exist", bad_input(tmp, good_run, [*TOY, "ckpt_path=/nonexistent/last.ckpt",
                                                                       f"hydra.run.dir={good_run}"])),
            ("VP with `sampler.eps=0`", bad_input(tmp, good_run, [f"ckpt_path={good}", "sampler.eps=0",
                                                                  "n_samples=8"], "sample.py")),
            # nothing in a file chooses code
            ("stored config: a scorelab function with a side effect (`scorelab.core.io.write_text_atomic`) as `data`",
             hostile_stored(tmp, good, "function", "data", lambda m, v: {
                 "_target_": "scorelab.core.io.write_text_atomic", "path": str(m), "text": "pwned"})),
            ("stored config: a shipped target outside its section (the MNIST extractor as `data`)",
             hostile_stored(tmp, good, "elsewhere", "data", lambda m, v: {
                 "_target_": "scorelab.metrics.mnist_classifier.mnist_features", "path": str(m)})),
            ("stored config: `${oc.create:{_target_: builtins.open, ...}}` in `model.net`",
             hostile_stored(tmp, good, "oc_create", "model.net",
                            lambda m, v: "${oc.create:" + _open_for_writing(v) + "}")),
            ("stored config: `${oc.decode:...}` in a list (`model.net.ch_mult`)",
             hostile_stored(tmp, good, "oc_decode", "model.net.ch_mult",
                            lambda m, v: [1, "${oc.decode:\"" + _open_for_writing(v) + "\"}"])),
            ("stored config: `${oc.env:HOME}` in `data.seed`",
             hostile_stored(tmp, good, "oc_env", "data.seed", lambda m, v: "${oc.env:HOME}")),
            ("converter input whose config value is `{_target_: builtins.open, ...}`", hostile_converter_input(tmp)),
            # poisoned statistics
            ("statistics file with a NaN covariance, to fid.py",
             poisoned_stats(tmp, "NaN covariance", lambda a: {"sigma": np.where(np.eye(len(a["mu"])) > 0, np.nan,
                                                                                 a["sigma"])})),
            ("statistics file with a negative covariance (FID was -396)",
             poisoned_stats(tmp, "negative", lambda a: {"sigma": -np.eye(len(a["mu"])) * 100})),
            ("statistics file with an asymmetric covariance",
             poisoned_stats(tmp, "asymmetric", lambda a: {"sigma": a["sigma"] + np.triu(np.ones_like(a["sigma"]))})),
            ("statistics file of another dimension",
             poisoned_stats(tmp, "dimension", lambda a: {"mu": np.zeros(5), "sigma": np.eye(5)})),
            ("statistics file with count 0", poisoned_stats(tmp, "count", lambda a: {"count": np.array(0)})),
            ("statistics file with a 2-D mean", poisoned_stats(tmp, "2-D mean", lambda a: {"mu": a["mu"][None]})),
            # damaged sample files
            ("`.npz` samples holding 0 images", bad_samples(tmp, "no images", _npz(np.zeros((0, 28, 28), np.uint8)))),
            ("`.npz` samples of 0 x 0 images", bad_samples(tmp, "0x0", _npz(np.zeros((4, 0, 0, 1), np.uint8)))),
            ("`.npz` samples with 5 channels",
             bad_samples(tmp, "5 channels", _npz(np.zeros((4, 28, 28, 5), np.uint8)))),
            ("truncated `.npz` samples", bad_samples(tmp, "truncated", _truncated_npz)),
            ("a corrupt PNG among the samples",
             bad_samples(tmp, "corrupt png",
                         _png_folder(lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))))),
            ("a decompression-bomb PNG (30000 x 30000)", bad_samples(tmp, "bomb", _png_folder(_bomb))),
            # damaged weights
            ("checkpoint whose weights are all NaN",
             damaged_weights(tmp, good, "nan", lambda c: c["state_dict"].update(
                 {k: torch.full_like(v, float("nan")) for k, v in c["state_dict"].items() if v.is_floating_point()}))),
            ("checkpoint with int64 weights",
             damaged_weights(tmp, good, "int64", lambda c: c["state_dict"].update(
                 {_first_weight(c): c["state_dict"][_first_weight(c)].long()}))),
            ("checkpoint with an extra state-dict key",
             damaged_weights(tmp, good, "extra key",
                             lambda c: c["state_dict"].update({"backdoor.weight": torch.ones(1)}))),
            ("checkpoint with a non-tensor value in its state dict",
             damaged_weights(tmp, good, "non-tensor",
                             lambda c: c["state_dict"].update({_first_weight(c): [1.0, 2.0]}))),
            ("checkpoint whose stored config is a list",
             damaged_weights(tmp, good, "config list", lambda c: c.update(scorelab_config=[1, 2]))),
            ("checkpoint with an unknown `module` key",
             damaged_weights(tmp, good, "module key", lambda c: c["scorelab_config"]["module"].update(warp=1))),
            # lost work
            ("sweep whose middle job fails (`sde.beta_max=20,-1,10`)",
             failing_sweep(tmp, "train.py", [*TOY, "trainer.max_steps=4", "sde.beta_max=20,-1,10"], "train")),
            ("sampler study with a refused step count (`sampler.steps=2,3,10`)",
             failing_sweep(tmp, "sample.py", ["model=oracle", "sampler=ipndm_toy10", "sampler.steps=2,3,10",
                                              "n_samples=500"], "sample")),
            ("`ckpt_path=auto` with `last.ckpt` a dangling link (scratch not mounted)", dangling_last(tmp, good_run)),
            # mistakes: one line, exit 2, nothing created
            ("`sampler=doesnotexist`", mistake(tmp, "train.py", ["sampler=doesnotexist"])),
            ("a typo'd group `datta=toy_grid`", mistake(tmp, "train.py", ["datta=toy_grid"])),
            ("a typo'd key `trainer.max_step=5`", mistake(tmp, "train.py", ["trainer.max_step=5"])),
            ("a sweep without `-m` (`sde.beta_min=0.05,0.1`)", mistake(tmp, "train.py", ["sde.beta_min=0.05,0.1"])),
            ("an output folder that cannot be created (`paths.log_dir` under a file)",
             mistake(tmp, "train.py", [f"paths.log_dir={good}/logs"])),
            ("a full disk before sampling starts", full_disk(tmp, good, 32)),
            ("a disk that fills up while sampling (`samples.npz` of 40,000 points)", full_disk(tmp, good, 256)),
            ("`data.data_dir` without MNIST (the fd_mnist classifier follows it)", wrong_data_folder(tmp, empty)),
        ]
    lines = [HEADER, "| fault | what happened | lost | note |", "| --- | --- | --- | --- |"]
    lines += [f"| {fault} | {what} | {lost} | {note} |" for fault, (what, lost, note) in rows]
    lines.append(f"\nWhole drill: {time.perf_counter() - began:.0f} s on {os.cpu_count()} CPU cores, "
                 f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}.")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
