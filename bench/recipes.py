"""Training recipes at equal compute on MNIST: which model samples best in 10, 20 and 40 network evaluations.

Each recipe is ``experiment=mnist_small`` (the same 1.03M-parameter network, batch, optimizer, EMA and data) with a
few overrides, trained for the same number of optimizer steps: ``mnist_small``'s ``trainer.max_steps`` (3000), which
it reaches within its 30-minute budget on 2 CPU cores as typed (29.5 minutes measured; a fixed step count keeps the
comparison fair whatever else the machine is doing). Every run also writes post-hoc EMA snapshots
(``callbacks/posthoc_ema=default``), so the EMA length of the winner can be chosen afterwards with ``ema.py``.
The recipes:

* ``vp_dsm``: the former default, VP SDE, noise prediction, DSM with lambda = s(t)^2 (Song et al. 2021);
* ``edm``: EDM's sigma(t) = t process, its preconditioning, log-normal noise levels and lambda(sigma)
  (Karras et al. 2022);
* ``flow``: the rectified-flow path with a velocity network and the flow-matching loss (Lipman et al. 2023;
  Liu et al. 2023), ``mnist_small``'s default since this benchmark;
* ``vp_v_minsnr``: VP with v-prediction (Salimans & Ho 2022) and min-SNR-5 weighting (Hang et al. 2023).

Then each recipe's checkpoint is sampled as a user would (``sample.py ... eval.fid=true``, 2000 samples, seeds
0..1999): first with each candidate few-step solver at 10 NFE, then with the best of them (lowest fd_mnist) at 20
and 40 NFE. Every row reports fd_mnist (against the 60000 training digits), precision and recall (k = 3, on the
same classifier features), the sampling seconds and the histogram of predicted digits.

    python bench/recipes.py [--out-dir logs/bench/recipes] [--data-dir DIR] [--steps 3000] [--recipes edm flow]
    python bench/recipes.py --phase report --table docs/bench_recipes.md --plot docs/bench_recipes.png

Then (``--phase fitted``) the default recipe's best solver gets time grids fitted to its checkpoint by
``fit_grid.py`` at 10, 8 and 6 NFE, each sampled next to the solver's own grid at that NFE, with the 40-NFE
SDE-DPM-Solver++(2M) row that the fitted grids' target compares with; these rows go to a second table.

Last, the best recipe at 10 NFE is sampled again with post-hoc EMA lengths rebuilt from its snapshots by ``ema.py``
(``--phase ema``): the EMA length chosen by looking, without retraining.

Runs are cached in ``--out-dir`` (a checkpoint per recipe, ``results.json`` per sampling row): an interrupted bench
resumes where it stopped. With ``SCORELAB_SMOKE=1`` it is a smoke run (3 steps, 16 samples); its numbers mean
nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from scorelab.cli.smoke import smoke_active, smoke_cap
from scorelab.metrics.mnist_classifier import class_deviation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_sampling import reference, run_sampler  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES: dict[str, tuple[str, list[str]]] = {
    "vp_dsm": ("VP, eps-prediction, DSM (s(t)^2)", ["sde=vp", "model.output=eps", "loss=dsm"]),
    "edm": ("EDM: sigma(t) = t, preconditioning, log-normal sigma, lambda(sigma)",
            ["sde=edm", "model.output=edm", "loss=edm"]),
    "flow": ("rectified flow, velocity, flow matching", ["sde=rectified_flow", "model.output=velocity",
                                                         "loss=flow_matching"]),
    "vp_v_minsnr": ("VP, v-prediction, min-SNR-5", ["sde=vp", "model.output=v", "loss=min_snr"]),
}
# candidate solvers (config, overrides); NFE = steps + 1 (a final denoising step) for each of them
SOLVERS: dict[str, list[str]] = {
    "dpmpp_2m": ["sampler=dpmpp_2m"],
    "dpmpp_2m_edm": ["sampler=dpmpp_2m", "sampler.grid=edm"],
}
NFES = (10, 20, 40)
FIT_NFES = (10, 8, 6)  # fitted grids of the default recipe (DEFAULT_RECIPE, mnist_small's)
FIT = {"n_fit": 32, "max_evals": 60, "reference.steps": 100}  # fit_grid.py options (docs/fitted_grids.md)
SDE_BASELINE = ("dpmpp_2m_sde", ["sampler=dpmpp_2m_sde"], 40)  # the fitted grids' target row
SIGMA_RELS = (0.05, 0.08, 0.12)  # post-hoc EMA lengths tried on the winner (0.03 and 0.18 fit badly)


def train(recipe: str, steps: int, out: Path, data_dir: str) -> Path:
    """Train one recipe to ``steps`` optimizer steps; returns the checkpoint. A run that stopped earlier (interrupted,
    or trained with a smaller ``--steps``) resumes from its ``last.ckpt``: the learning rate is warm-up then
    constant and the training noise of step k is seeded by k, so resuming equals training straight through."""
    run_dir = out / recipe
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    done = int(torch.load(ckpt, map_location="cpu", weights_only=False).get("global_step", 0)) if ckpt.exists() else 0
    if done >= steps:
        return ckpt
    cmd = [sys.executable, str(ROOT / "train.py"), "experiment=mnist_small", *RECIPES[recipe][1],
           f"trainer.max_steps={steps}", "trainer.max_time=null", "~callbacks/fid",
           "callbacks.samples.every_n_epochs=0", "callbacks.samples.n_samples=16", "logger=csv",
           "callbacks/posthoc_ema=default", *([f"ckpt_path={ckpt}"] if done else []),
           f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}"]
    secs = run_dir / "train_seconds.txt"
    before = float(secs.read_text()) if done and secs.exists() else 0.0
    began = time.perf_counter()
    log = out / f"{recipe}.train.log"
    with log.open("a" if done else "w") as stream:
        proc = subprocess.run(cmd, stdout=stream, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not ckpt.exists():
        raise SystemExit(f"{recipe}: train.py failed (exit {proc.returncode}); see {log}")
    secs.write_text(f"{before + time.perf_counter() - began:.1f}\n")
    return ckpt


def sample_row(recipe: str, solver: str, nfe: int, ckpt: Path, n: int, data_dir: str, out: Path,
               results: dict) -> dict:
    """fd_mnist, precision/recall, seconds and classes of ``n`` samples at ``nfe`` evaluations (cached)."""
    key = f"{recipe}/{solver}/{nfe}/{n}"
    if key not in results:
        spec = " ".join([*SOLVERS[solver], f"sampler.steps={nfe - 1}"]).removeprefix("sampler=")
        summary = run_sampler(spec, str(ckpt), n, min(n, 500), data_dir, out / "samples" / recipe)
        run = summary["runs"][0]
        results[key] = {"recipe": recipe, "solver": solver, "nfe": run["nfe"], "n": n,
                        "fd_mnist": run["fd_mnist"], "precision": run.get("precision_mnist"),
                        "recall": run.get("recall_mnist"), "seconds": run["seconds"],
                        "classes": run.get("class_histogram", [])}
        (out / "results.json").write_text(json.dumps(results, indent=1))
    return results[key]


def evaluate(recipes: list[str], out: Path, n: int, data_dir: str, nfes: tuple[int, ...]) -> dict:
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    for recipe in recipes:
        ckpt = out / recipe / "checkpoints" / "last.ckpt"
        if not ckpt.exists():
            print(f"{recipe}: no checkpoint yet, skipped", flush=True)
            continue
        first = [sample_row(recipe, s, nfes[0], ckpt, n, data_dir, out, results) for s in SOLVERS]
        best = min(first, key=lambda r: r["fd_mnist"])["solver"]
        for nfe in nfes[1:]:
            sample_row(recipe, best, nfe, ckpt, n, data_dir, out, results)
        print(f"{recipe}: best solver at {nfes[0]} NFE is {best}", flush=True)
    return results


def _best_solver(results: dict, recipe: str, n: int, nfe: int) -> str | None:
    rows = [r for r in results.values() if r["recipe"] == recipe and r["n"] == n and r["nfe"] == nfe
            and "sigma_rel" not in r and "grid" not in r]
    return min(rows, key=lambda r: r["fd_mnist"])["solver"] if rows else None


def _record(recipe: str, solver: str, run: dict, n: int, **extra) -> dict:
    return {"recipe": recipe, "solver": solver, "nfe": run["nfe"], "n": n, "fd_mnist": run["fd_mnist"],
            "precision": run.get("precision_mnist"), "recall": run.get("recall_mnist"), "seconds": run["seconds"],
            "classes": run.get("class_histogram", []), **extra}


def fit_grid(ckpt: Path, solver: str, steps: int, out: Path, data_dir: str) -> dict:
    """``fit_grid.py`` for ``solver`` at ``steps`` steps, written into ``ckpt`` (a copy of the recipe's
    checkpoint); its summary line, whether the grid was written, and its wall time."""
    cmd = [sys.executable, str(ROOT / "fit_grid.py"), f"ckpt_path={ckpt}", *SOLVERS[solver], f"steps={steps}",
           f"n_fit={smoke_cap(FIT['n_fit'], 4)}", f"n_holdout={smoke_cap(FIT['n_fit'], 4)}",
           f"batch_size={smoke_cap(FIT['n_fit'], 4)}", f"max_evals={smoke_cap(FIT['max_evals'], 6)}",
           f"reference.steps={smoke_cap(FIT['reference.steps'], 8)}", "progress=false",
           f"paths.data_dir={data_dir}", f"hydra.run.dir={out / 'fit' / ckpt.parent.name / str(steps)}"]
    began = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"fit_grid.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    line = next((x for x in proc.stdout.splitlines() if x.startswith("mean ")), "")
    return {"line": line, "written": "wrote the fitted grid" in proc.stdout,
            "seconds": time.perf_counter() - began}


def fitted_rows(recipes: list[str], results: dict, out: Path, n: int, data_dir: str, nfes: tuple[int, ...],
                fit_nfes: tuple[int, ...] = FIT_NFES) -> None:
    """Rows of each recipe's best solver on a grid fitted to its checkpoint (cached in ``results.json``)."""
    save = lambda: (out / "results.json").write_text(json.dumps(results, indent=1))  # noqa: E731
    for recipe in [r for r in recipes if r == DEFAULT_RECIPE]:
        ckpt = out / recipe / "checkpoints" / "last.ckpt"
        solver = _best_solver(results, recipe, n, nfes[0])
        if not ckpt.exists() or solver is None:
            print(f"{recipe}: not evaluated yet, no fitted rows", flush=True)
            continue
        copy = out / "fitted" / recipe / "fitted.ckpt"
        if not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ckpt, copy)
        for nfe in fit_nfes:
            spec = " ".join([*SOLVERS[solver], f"sampler.steps={nfe - 1}"]).removeprefix("sampler=")
            own = f"{recipe}/{solver}/{nfe}/{n}/own"
            if f"{recipe}/{solver}/{nfe}/{n}" not in results and own not in results:  # not in the main table
                run = run_sampler(spec + " fitted_grids=false", str(ckpt), n, min(n, 500), data_dir,
                                  out / "samples" / recipe)["runs"][0]
                results[own] = _record(recipe, solver, run, n, grid="own")
                save()
            fit_key, key = f"{recipe}/{solver}/{nfe}/fit", f"{recipe}/{solver}/{nfe}/{n}/fitted"
            if fit_key not in results:
                results[fit_key] = {"recipe": recipe, "fit": fit_grid(copy, solver, nfe - 1, out, data_dir),
                                    "nfe": nfe, "n": None}
                save()
            if key not in results:
                run = run_sampler(spec + " fitted_grids=auto", str(copy), n, min(n, 500), data_dir,
                                  out / "samples" / f"{recipe}_fitted")["runs"][0]
                results[key] = _record(recipe, solver, run, n, grid="fitted", fit=results[fit_key]["fit"])
                save()
        name, overrides, nfe = SDE_BASELINE
        key = f"{recipe}/{name}/{nfe}/{n}/baseline"
        if key not in results:
            spec = " ".join([*overrides, f"sampler.steps={nfe - 1}"]).removeprefix("sampler=")
            run = run_sampler(spec, str(ckpt), n, min(n, 500), data_dir, out / "samples" / recipe)["runs"][0]
            results[key] = _record(recipe, name, run, n, grid="own (SDE baseline)")
            save()


def class_span(classes: list) -> str:
    """The smallest and largest share of the predicted classes, as ``"8.3-12.2 %"`` (``"-"`` when unknown)."""
    share = torch.tensor(classes, dtype=torch.float64)
    if not len(share):
        return "-"
    share = share / share.sum()
    return f"{100 * share.min():.1f}-{100 * share.max():.1f} %"


def fitted_table(results: dict, n: int) -> list[str]:
    """The second table: per recipe and NFE its best solver on its own grid and on the fitted one, then the SDE
    baseline."""
    extra = [r for r in results.values() if r.get("n") == n and "grid" in r]
    if not extra:
        return []
    lines = ["", "Time grids fitted to the default recipe's checkpoint (`fit_grid.py`, docs/fitted_grids.md: "
             f"{FIT['n_fit']} noise draws, as many held out, {FIT['max_evals']} solver runs, against the same solver "
             f"at {FIT['reference.steps']} log-SNR steps). fit s: the whole `fit_grid.py` command; held-out: the mean "
             "distance to that reference, own grid -> fitted grid.", "",
             "| recipe | solver | grid | NFE | fd_mnist | precision | recall | sampling s | class share min-max "
             "| fit s | held-out |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for recipe in RECIPES:
        fitted = sorted((r for r in extra if r["recipe"] == recipe and r["grid"] == "fitted"), key=lambda r: -r["nfe"])
        ordered = []
        for r in fitted:
            own = [x for x in results.values() if x.get("n") == n and x["recipe"] == recipe and
                   x["solver"] == r["solver"] and x["nfe"] == r["nfe"] and x.get("grid", "own") == "own"
                   and "sigma_rel" not in x]
            ordered += [dict(own[0], grid="own")] if own else []
            ordered.append(r)
        ordered += [r for r in extra if r["recipe"] == recipe and r["grid"].startswith("own (")]
        for x in ordered:
            span = class_span(x["classes"])
            fit = x.get("fit")
            fit_cells = f"{fit['seconds']:.0f} | {fit['line'].split(': ', 1)[-1] or '-'}" if fit else "- | -"
            lines.append(f"| {recipe} | {x['solver']} | {x['grid']} | {x['nfe']} | {x['fd_mnist']:.2f} | "
                         f"{fmt(x['precision'])} | {fmt(x['recall'])} | {x['seconds']:.1f} | {span} | {fit_cells} |")
    return lines


def ema_sweep(results: dict, out: Path, n: int, data_dir: str, nfe: int) -> list[dict]:
    """The winner at ``nfe`` (lowest fd_mnist over recipes and solvers) with post-hoc EMA lengths rebuilt by
    ``ema.py`` from its snapshots: no retraining. Cached in ``results.json`` like the other rows."""
    rows = [r for r in results.values() if r["nfe"] == nfe and r["n"] == n and "sigma_rel" not in r
            and "grid" not in r]
    if not rows:
        return []
    best = min(rows, key=lambda r: r["fd_mnist"])
    recipe, solver = best["recipe"], best["solver"]
    run_dir = out / recipe
    sweep = []
    for sigma_rel in SIGMA_RELS:
        key = f"{recipe}/{solver}/{nfe}/{n}/ema{sigma_rel}"
        if key not in results:
            ckpt = run_dir / "checkpoints" / f"ema_sigma{sigma_rel:.3f}.ckpt"
            if not ckpt.exists():
                proc = subprocess.run([sys.executable, str(ROOT / "ema.py"), f"ckpt_path={run_dir}",
                                       f"sigma_rel={sigma_rel}", f"hydra.run.dir={out / 'ema' / str(sigma_rel)}"],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"ema.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            residual = torch.load(ckpt, map_location="cpu", weights_only=False)["scorelab_posthoc_ema"]["residual"]
            spec = " ".join([*SOLVERS[solver], f"sampler.steps={nfe - 1}"]).removeprefix("sampler=")
            run = run_sampler(spec, str(ckpt), n, min(n, 500), data_dir,
                              out / "samples" / f"{recipe}_ema{sigma_rel}")["runs"][0]
            results[key] = {"recipe": recipe, "solver": solver, "nfe": run["nfe"], "n": n, "sigma_rel": sigma_rel,
                            "residual": residual, "fd_mnist": run["fd_mnist"],
                            "precision": run.get("precision_mnist"), "recall": run.get("recall_mnist"),
                            "seconds": run["seconds"], "classes": run.get("class_histogram", [])}
            (out / "results.json").write_text(json.dumps(results, indent=1))
        sweep.append(results[key])
    return sweep


def report(results: dict, out: Path, n: int, data_dir: str, table: Path | None, plot: Path | None) -> str:
    """The markdown table (every row) and, with ``plot``, fd_mnist against NFE for each recipe's best solver."""
    train_counts, floor = reference(n, data_dir)
    lines = [f"## Recipes at equal compute on MNIST (n = {n} samples, torch {torch.__version__}, "
             f"{platform.processor() or 'cpu'})", "",
             f"Real test digits: fd_mnist {floor['fd']:.2f}, class gap "
             f"{class_deviation(floor['hist'], train_counts):.3f}. Every recipe trains the same network for the same "
             "number of optimizer steps (train steps); train min is the wall time on the shared 2-core machine, which "
             "ran other work at times. Sampling seconds are for the 2000 images, in batches of 500.", "",
             "| recipe | train steps | train min | solver | NFE | fd_mnist | precision | recall | sampling s "
             "| class share min-max | predicted classes 0-9 |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    best: dict[str, list[dict]] = {}
    for recipe in RECIPES:
        rows = [r for r in results.values() if r["recipe"] == recipe and r["n"] == n and "sigma_rel" not in r
                and "grid" not in r]
        if not rows:
            continue
        secs = out / recipe / "train_seconds.txt"
        minutes = f"{float(secs.read_text()) / 60:.1f}" if secs.exists() else "-"
        steps = _trained_steps(out / recipe)
        first = [r for r in rows if r["nfe"] == min(x["nfe"] for x in rows)]
        winner = min(first, key=lambda r: r["fd_mnist"])["solver"]
        best[recipe] = sorted((r for r in rows if r["solver"] == winner), key=lambda r: r["nfe"])
        for r in sorted(rows, key=lambda r: (r["nfe"], r["solver"])):
            span = class_span(r["classes"])
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            lines.append(f"| {recipe} | {steps} | {minutes} | {r['solver']}{' (best)' if r['solver'] == winner else ''}"
                         f" | {r['nfe']} | {r['fd_mnist']:.2f} | {fmt(r['precision'])} | {fmt(r['recall'])} | "
                         f"{r['seconds']:.1f} | {span} | {' '.join(str(int(c)) for c in r['classes'])} |")
    lines += fitted_table(results, n)
    sweep = sorted((r for r in results.values() if "sigma_rel" in r and r["n"] == n), key=lambda r: r["sigma_rel"])
    if sweep:
        lines += ["", f"Post-hoc EMA of `{sweep[0]['recipe']}` ({sweep[0]['solver']}, {sweep[0]['nfe']} NFE): the same "
                  "run, EMA lengths rebuilt by `ema.py` from its snapshots (sigma_rel 0.05 and 0.10 every 200 "
                  "steps), no retraining. The trained run's own EMA is `module.ema_decay` of the experiment.", "",
                  "| sigma_rel | kernel residual | fd_mnist | precision | recall |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        for r in sweep:
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            lines.append(f"| {r['sigma_rel']:.2f} | {r['residual']:.1e} | {r['fd_mnist']:.2f} | "
                         f"{fmt(r['precision'])} | {fmt(r['recall'])} |")
    lines += ["", "Recipes: " + "; ".join(f"`{k}`: {v[0]} (`{' '.join(v[1]) or 'the defaults'}`)"
                                          for k, v in RECIPES.items()) + "."]
    text = "\n".join((["(smoke run: numbers mean nothing)", ""] if smoke_active() else []) + lines) + "\n"
    if table:
        table.write_text(text)
    if plot and best:
        import matplotlib.pyplot as plt

        fig = plot_figure(best, floor["fd"], n)
        fig.savefig(plot, dpi=120)
        plt.close(fig)
    return text


DEFAULT_RECIPE = "flow"  # mnist_small's default since this benchmark: drawn boldly


def plot_figure(best: dict[str, list[dict]], floor_fd: float, n: int):
    """fd_mnist against NFE (log axes), one line per recipe (its best solver), each named at its right end (no legend
    over the data; names pushed apart where lines are close), the default recipe in bold, the real-digit floor
    dashed; returns the figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    colours = plt.get_cmap("tab10")
    solvers = {rows[0]["solver"] for rows in best.values()}
    ends = []
    for k, (recipe, rows) in enumerate(best.items()):
        bold = recipe == DEFAULT_RECIPE
        xs, ys = [r["nfe"] for r in rows], [r["fd_mnist"] for r in rows]
        ax.plot(xs, ys, marker="o", color=colours(k), lw=3.0 if bold else 1.6, ms=7 if bold else 5,
                zorder=3 if bold else 2)
        name = recipe + (" (default)" if bold else "") + ("" if len(solvers) == 1 else f", {rows[0]['solver']}")
        ends.append((ys[-1], xs[-1], name, colours(k), bold))
    ax.axhline(floor_fd, color="grey", linestyle="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    nfes = sorted({r["nfe"] for rows in best.values() for r in rows})
    ax.set_xticks(nfes, [str(v) for v in nfes])
    ax.minorticks_off()
    top = max(y for rows in best.values() for y in (r["fd_mnist"] for r in rows))
    ax.set_ylim(0.7 * min(floor_fd, *(e[0] for e in ends)), 1.6 * top)
    ticks = [v for v in (5, 10, 20, 50, 100, 200, 500, 1000) if ax.get_ylim()[0] <= v <= ax.get_ylim()[1]]
    ax.set_yticks(ticks, [str(v) for v in ticks])
    ax.set_xlabel("network evaluations (NFE)", fontsize=12)
    ax.set_ylabel("fd_mnist (log scale, lower is better)", fontsize=12)
    ax.tick_params(labelsize=11)
    what = f"\neach recipe with its best solver, {solvers.pop()}" if len(solvers) == 1 else ""
    ax.set_title(f"MNIST, equal training compute, {n} samples{what}", fontsize=12)
    ax.grid(True, alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.subplots_adjust(right=0.75)  # room for the names at the lines' ends
    # the names at the lines' ends, at least 16 points apart (in display space, bottom up)
    to_pixels, gap = ax.transData, 16 * fig.dpi / 72
    placed = []
    for y, x, name, colour, bold in sorted(ends):
        py = to_pixels.transform((x, y))[1]
        py = max(py, placed[-1] + gap) if placed else py
        placed.append(py)
        where = fig.transFigure.inverted().transform((ax.transAxes.transform((1.0, 0))[0] + 8, py))
        ax.annotate(name, (x, y), xytext=tuple(where), textcoords="figure fraction",
                    va="center", fontsize=11, color=colour, fontweight="bold" if bold else "normal",
                    annotation_clip=False)
    ax.annotate("real test digits", (1.0, floor_fd), xycoords=("axes fraction", "data"), xytext=(-4, 4),
                textcoords="offset points", ha="right", va="bottom", fontsize=11, color="grey")
    return fig


def _trained_steps(run_dir: Path) -> str:
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        return "-"
    return str(torch.load(ckpt, map_location="cpu", weights_only=False).get("global_step", "-"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("logs/bench/recipes"))
    parser.add_argument("--data-dir", default=os.environ.get("SCORELAB_DATA") or "./data",
                        help="folder holding MNIST/raw (default: $SCORELAB_DATA or ./data)")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps per recipe (mnist_small's "
                        "trainer.max_steps, which it reaches in its 30 minutes on 2 cores)")
    parser.add_argument("--n", type=int, default=2000, help="samples per row (seeds 0..n-1)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--phase", choices=("all", "train", "evaluate", "fitted", "ema", "report"), default="all")
    parser.add_argument("--table", type=Path, help="write the markdown table here")
    parser.add_argument("--plot", type=Path, help="write the PNG (fd_mnist against NFE) here")
    args = parser.parse_args(argv)
    nfes = NFES
    if smoke_active():
        args.steps, args.n, nfes = smoke_cap(args.steps, 3), smoke_cap(args.n, 16), (3, 4)
        print("SCORELAB_SMOKE=1: a smoke run, its numbers mean nothing", flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.phase in ("all", "train"):
        for recipe in args.recipes:
            print(f"{recipe}: training {args.steps} steps", flush=True)
            train(recipe, args.steps, args.out_dir, args.data_dir)
    results = {}
    if args.phase in ("all", "evaluate"):
        results = evaluate(args.recipes, args.out_dir, args.n, args.data_dir, nfes)
    if not results and (args.out_dir / "results.json").exists():
        results = json.loads((args.out_dir / "results.json").read_text())
    fit_nfes = FIT_NFES
    if smoke_active():
        fit_nfes = nfes[:2]  # (3, 4): grids of 2 and 3 steps
    if args.phase in ("all", "fitted"):
        fitted_rows(args.recipes, results, args.out_dir, args.n, args.data_dir, nfes, fit_nfes)
    if args.phase in ("all", "ema"):
        ema_sweep(results, args.out_dir, args.n, args.data_dir, nfes[0])
    if args.phase in ("all", "report"):
        print(report(results, args.out_dir, args.n, args.data_dir, args.table, args.plot))


if __name__ == "__main__":
    main()
