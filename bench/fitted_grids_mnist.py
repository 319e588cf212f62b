"""Fitted time grids on a trained MNIST model: fd_mnist of the checkpoint's own solver on its own grid and on grids
fitted by ``fit_grid.py``, at 6, 8 and 10 NFE.

For each step count ``fit_grid.py`` fits the grid of the checkpoint's sampler (``mnist_small``: DPM-Solver++(2M),
EDM grid, final denoising step, so NFE = steps + 1) into a copy of the checkpoint (``out=``; the original is never
written). Then ``sample.py ... eval.fid=true`` draws the same 2000 seeds with ``fitted_grids=false`` (the own grid)
and with the fitted grid, and reports fd_mnist, precision/recall and the sampling time. ``--sde-baseline`` adds the
40-NFE SDE-DPM-Solver++(2M) row the fd_mnist target compares with.

    python bench/fitted_grids_mnist.py --ckpt <run>/checkpoints/last.ckpt --data-dir <MNIST folder>
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from mnist_sampling import run_sampler  # noqa: E402

from scorelab.cli.smoke import smoke_cap  # noqa: E402


def fit(ckpt: Path, steps: int, args, log: Path) -> dict:
    """``fit_grid.py`` for ``steps`` steps, writing into ``ckpt``; its summary line and wall time."""
    cmd = [sys.executable, str(ROOT / "fit_grid.py"), f"ckpt_path={ckpt}", f"steps={steps}", f"n_fit={args.n_fit}",
           f"n_holdout={args.n_fit}", f"batch_size={args.n_fit}", f"max_evals={args.max_evals}",
           f"reference.steps={args.ref_steps}",
           f"paths.data_dir={args.data_dir}", f"hydra.run.dir={args.out / 'fit' / str(steps)}"]
    began = time.perf_counter()
    with log.open("a") as stream:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        stream.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"fit_grid.py steps={steps} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    line = next((x for x in proc.stdout.splitlines() if x.startswith("mean ")), "")
    return {"line": line, "seconds": time.perf_counter() - began, "written": "wrote the fitted grid" in proc.stdout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", type=Path, default=Path("bench_fitted_grids_mnist"))
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 8, 6])
    parser.add_argument("--n", type=int, default=2000, help="samples per fd_mnist")
    parser.add_argument("--n-fit", type=int, default=32, help="noise draws to fit on (as many held out)")
    parser.add_argument("--max-evals", type=int, default=60, help="solver runs per fit")
    parser.add_argument("--ref-steps", type=int, default=100,
                        help="reference: the same solver at this many steps on the log-SNR grid")
    parser.add_argument("--sde-baseline", action="store_true", help="also SDE-DPM-Solver++(2M) at 40 NFE")
    args = parser.parse_args()
    args.n, args.n_fit, args.max_evals = smoke_cap(args.n, 16), smoke_cap(args.n_fit, 8), smoke_cap(args.max_evals, 12)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "fitted.ckpt"
    if not ckpt.exists():
        shutil.copy(args.ckpt, ckpt)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    log = args.out / "fit.log"
    for nfe in args.nfe:
        steps = nfe - 1
        if f"fit/{nfe}" not in results:
            results[f"fit/{nfe}"] = fit(ckpt, steps, args, log)
            results_file.write_text(json.dumps(results, indent=1))
        for label, extra in (("own grid", "fitted_grids=false"), ("fitted grid", "fitted_grids=auto")):
            key = f"{label}/{nfe}"
            if key not in results:
                summary = run_sampler(f"dpmpp_2m sampler.grid=edm sampler.steps={steps} {extra}", str(ckpt), args.n,
                                      min(args.n, 500), args.data_dir, args.out / "samples" / label.replace(" ", "_"))
                run = summary["runs"][0]
                results[key] = {"nfe": run["nfe"], "fd_mnist": run["fd_mnist"], "seconds": run["seconds"],
                                "precision": run.get("precision_mnist"), "recall": run.get("recall_mnist")}
                results_file.write_text(json.dumps(results, indent=1))
            print(key, results[key], flush=True)
    if args.sde_baseline and "sde/40" not in results:
        summary = run_sampler("dpmpp_2m_sde sampler.steps=39", str(ckpt), args.n, min(args.n, 500), args.data_dir,
                              args.out / "samples" / "sde")
        run = summary["runs"][0]
        results["sde/40"] = {"nfe": run["nfe"], "fd_mnist": run["fd_mnist"], "seconds": run["seconds"],
                             "precision": run.get("precision_mnist"), "recall": run.get("recall_mnist")}
        results_file.write_text(json.dumps(results, indent=1))
    lines = [f"| solver | grid | NFE | fd_mnist | precision | recall | sampling s ({args.n} samples) | fit |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    for nfe in args.nfe:
        for label in ("own grid", "fitted grid"):
            r = results[f"{label}/{nfe}"]
            note = "-" if label == "own grid" else (f"{results[f'fit/{nfe}']['seconds']:.0f} s; "
                                                    + results[f"fit/{nfe}"]["line"].split(": ", 1)[-1])
            grid = "EDM rho=7" if label == "own grid" else "fitted"
            lines.append(f"| DPM-Solver++(2M) | {grid} | {r['nfe']} | {r['fd_mnist']:.2f} | {fmt(r['precision'])} | "
                         f"{fmt(r['recall'])} | {r['seconds']:.0f} | {note} |")
    if "sde/40" in results:
        r = results["sde/40"]
        lines.append(f"| SDE-DPM-Solver++(2M) | EDM rho=7, sigma_max 80 | {r['nfe']} | {r['fd_mnist']:.2f} | "
                     f"{fmt(r['precision'])} | {fmt(r['recall'])} | {r['seconds']:.0f} | - |")
    text = "\n".join(lines) + "\n"
    (args.out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
