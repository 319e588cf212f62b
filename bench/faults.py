"""Fault drill: inject the faults of long shared-cluster runs into the real commands and print what was lost.

Every row runs ``train.py`` / ``sample.py`` as a subprocess on the toy default (a few seconds each), injects one
fault, then checks from the outside what is on disk: exit code, the message the user sees, whether the previous
checkpoint still loads with ``weights_only=True``, and whether a resumed run continues the step count.

    python bench/faults.py [--out FILE]      # prints a Markdown table (~3 minutes on 2 CPU cores)

The unit tests hold each of these behaviours (tests/test_preemption.py, test_atomic_writes.py, test_safety.py,
test_nonfinite.py); this script shows them end to end, through the command line, in one table.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TOY = ["trainer.enable_progress_bar=false", "data.n_train=4096", "data.n_val=512", "data.batch_size=512",
       "sampler.steps=10", "callbacks.samples.n_samples=256", "logger=none"]
MARKER = ["+callbacks.marker._target_=tests.faults.StepMarker"]


def _env() -> dict:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, WANDB_MODE="offline", HYDRA_FULL_ERROR="0", PYTHONPATH=path)


def _run(script: str, args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


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
        ]
    lines = ["| fault | what happened | lost | note |", "| --- | --- | --- | --- |"]
    lines += [f"| {fault} | {what} | {lost} | {note} |" for fault, (what, lost, note) in rows]
    lines.append(f"\nWhole drill: {time.perf_counter() - began:.0f} s, torch {torch.__version__}.")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
