"""Few-step samplers with the exact score against 1000-step PC on the 2-D mixtures (``bench/samplers.py --fast``).

With the oracle score every error left is the sampler's. For each SDE and mixture this script

1. measures the quality bar: 1000-step PC (reverse diffusion + Langevin, snr 0.16; 1999 NFE), the exact
   probability-flow map of the same prior noise (dopri5, tolerance 1e-6: the limit of every deterministic sampler),
   and fresh true samples (the noise floor);
2. sweeps each few-step sampler over increasing NFE and reports the fewest NFE at which it matches PC-1000 on all
   three measures: mode-weight error, energy distance to a reference set, and |NLL - H| (mean exact NLL of the
   samples minus the true entropy). "Matches" allows Monte Carlo noise: mode err <= max(PC, flow) + one standard
   error of a weight, ED <= max(PC, flow) + the exact-sample floor, |NLL - H| <= max(|PC|, |flow|) + 2 standard errors
   of the mean NLL;
3. checks the issue's targets at <= 10 NFE on fresh seeds (not those the grids were tuned on): mode err <= 0.01,
   |NLL - H| <= 0.05, ED <= 2x the mean ED between independent true sets at the same n;
4. writes a PNG of the three measures against NFE (log axes): the default sampler (SDE-DPM-Solver++(2M), as
   ``conf/sampler/dpmpp_2m_sde.yaml`` configures it) in bold, five others in colour, the rest in grey; its data go
   to ``logs/bench/fast_samplers/curves.json``, from which ``bench/samplers.py --fast --plot-only`` redraws it
   (sweeping the first SDE's two mixtures only when that file is missing).

Energy distances use every point (``energy_distance_2d``: the V-statistic in O(n log n)). The V-statistic of two
independent exact sets is about ``2 E|X - X'| / n``, so the ED target tightens as n grows (see the report).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from scorelab.cli.smoke import smoke_active
from scorelab.data import eight_gaussians, two_modes
from scorelab.metrics import energy_distance_2d, exact_nll, mode_weight_error
from scorelab.sampling import (
    DDIMSampler,
    DEISSampler,
    DPMSolverPP,
    EDMSampler,
    Langevin,
    ODESampler,
    PCSampler,
    ReverseDiffusion,
    TimeGrid,
    UniPCSampler,
)
from scorelab.sampling.fitted import FittedGrid, fit_time_grid, reference_solution
from scorelab.sde import VESDE, VPSDE, SubVPSDE

SDES = {"vp": (VPSDE, 1e-3), "subvp": (SubVPSDE, 1e-3), "ve": (VESDE, 1e-5)}
MIXTURES = {"two_modes": two_modes, "eight_gaussians": eight_gaussians}
# Grids. FLOW trims only the top of the log-SNR range (the prior is still drawn at T; the first step jumps to
# sigma = 20, where the denoiser of unit-scale data is nearly linear) and converges as NFE grows. FEW also jumps
# from sigma = 0.1 to sigma(eps) at the end: tuned at 10 NFE on seed 0 over sigma_min in {0.05, 0.08, 0.1, 0.15}
# x sigma_max in {5, 8, 12, 20, sigma(T)} x {logsnr, edm}; it does not converge (its last step stays large).
FLOW = TimeGrid("logsnr", sigma_max=20.0)
FEW = TimeGrid("logsnr", sigma_min=0.1, sigma_max=8.0)
EDM80 = TimeGrid("edm", rho=7.0, sigma_max=80.0)  # Karras et al.'s sigma_max
NFES = (4, 5, 6, 8, 10, 12, 16, 20, 25, 30, 40, 50, 70, 100, 150, 200, 300)

# name -> (NFE per step, NFE added at the end, factory(steps, eps, grid), its sweep grid); few-step samplers end
# at x(eps) without the final denoising NFE, except EDM Heun, whose final Euler step to sigma = 0 is its recipe.
Lineup = dict[str, tuple[int, int, Callable, object]]
DEFAULT = "SDE-DPM-Solver++(2M) (default)"  # conf/sampler/dpmpp_2m_sde.yaml: train.yaml's and model=oracle's sampler
LINEUP: Lineup = {
    # the default sampler as configured (EDM grid from sigma = 80, final denoising NFE), drawn boldly in the plot
    DEFAULT: (1, 1, lambda k, e, g: DPMSolverPP(k, "2m_sde", eps=e, grid=g, denoise=True), EDM80),
    "DDIM": (1, 0, lambda k, e, g: DDIMSampler(k, eps=e, grid=g, denoise=False), FLOW),
    "DDIM eta=1": (1, 0, lambda k, e, g: DDIMSampler(k, eta=1.0, eps=e, grid=g, denoise=False), FLOW),
    "DPM-Solver++(2M)": (1, 0, lambda k, e, g: DPMSolverPP(k, "2m", eps=e, grid=g, denoise=False), FLOW),
    "DPM-Solver++(3M)": (1, 0, lambda k, e, g: DPMSolverPP(k, "3m", eps=e, grid=g, denoise=False), FLOW),
    "DPM-Solver++(2S)": (2, 0, lambda k, e, g: DPMSolverPP(k, "2s", eps=e, grid=g, denoise=False), FLOW),
    "UniPC-3": (1, 0, lambda k, e, g: UniPCSampler(k, 3, eps=e, grid=g, denoise=False), FLOW),
    "DEIS rhoAB-3": (1, 0, lambda k, e, g: DEISSampler(k, 3, "rhoab", eps=e, grid=g, denoise=False), FLOW),
    "iPNDM-4": (1, 0, lambda k, e, g: DEISSampler(k, 4, "ipndm", eps=e, grid=g, denoise=False), FLOW),
    "iPNDM-4 (FEW grid)": (1, 0, lambda k, e, g: DEISSampler(k, 4, "ipndm", eps=e, grid=g, denoise=False), FEW),
    "EDM Heun": (2, 1, lambda k, e, g: EDMSampler(k, eps=e, grid=g, denoise=True), EDM80),
    "EDM churn=10": (2, 1, lambda k, e, g: EDMSampler(k, s_churn=10.0, eps=e, grid=g, denoise=True), EDM80),
    # the best sampler scorelab had before, for context (its own uniform-t grid)
    "ODE RK4 (uniform t)": (4, 0, lambda k, e, g: ODESampler("rk4", steps=k, eps=e), "uniform"),
}
# Samplers whose grid is also fitted to each mixture in the targets table (``fit_grid.py``'s fit, docs/fitted_grids.md):
# from their sweep grid, on FIT_DRAWS prior draws of their own (seeds 1000 / 1001 held out), at most FIT_EVALS solver
# runs. The fitted grids are the sampler's at 10 NFE only (a grid is fitted for one step count).
FITTED = ("DPM-Solver++(2M)", "DPM-Solver++(3M)", "UniPC-3", "iPNDM-4")
FIT_DRAWS, FIT_EVALS = 2048, 600
GRID_STUDY = {  # the grids at 10 NFE for two samplers
    "uniform": "uniform", "quadratic": "quadratic", "logsnr": "logsnr", "edm rho=7": "edm",
    "logsnr sigma <= 20 (FLOW)": FLOW, "logsnr sigma in [0.1, 8] (FEW)": FEW,
    "edm rho=7, sigma in [0.1, 8]": TimeGrid("edm", rho=7.0, sigma_min=0.1, sigma_max=8.0),
}


class Problem:
    """One (SDE, mixture, n, seed): the oracle, the reference set, H, the floors and the PC-1000 / flow bars."""

    def __init__(self, sde_name: str, mix_name: str, n: int, seed: int, with_bars: bool = True):
        sde_cls, self.eps = SDES[sde_name]
        self.sde, self.mixture, self.n, self.seed = sde_cls(), MIXTURES[mix_name](), n, seed
        self.name = f"{sde_name} / {mix_name}"
        self.oracle = self.mixture.oracle(self.sde)
        self.reference = self.mixture.sample(n, generator=torch.Generator().manual_seed(seed + 1))
        self.entropy, self.entropy_se = self.mixture.entropy(generator=torch.Generator().manual_seed(seed + 2))
        exact = [self.mixture.sample(n, generator=torch.Generator().manual_seed(seed + 10 + k)) for k in range(3)]
        self.floor = {key: sum(m[key] for m in map(self.measure, exact)) / len(exact) for key in ("mode", "ed", "gap")}
        self.pc = self.flow = None
        if with_bars:
            self.pc = self.measure(self.sample(PCSampler(ReverseDiffusion(), Langevin(snr=0.16), steps=1000,
                                                         eps=self.eps))[0])
            self.flow = self.measure(self.sample(ODESampler("dopri5", eps=self.eps, rtol=1e-6, atol=1e-6))[0])

    def sample(self, sampler) -> tuple[torch.Tensor, int, float]:
        """Samples, NFE and wall time for one sampler; the prior noise is the same for every sampler (``seed``)."""
        start = time.perf_counter()
        x, nfe = sampler(self.oracle, self.sde, (self.n, 2), generator=torch.Generator().manual_seed(self.seed))
        return x, nfe, time.perf_counter() - start

    def measure(self, x: torch.Tensor) -> dict:
        """Mode-weight error, energy distance to the reference set and NLL - H; all inf if ``x`` is not finite."""
        if not torch.isfinite(x).all():
            return {"mode": math.inf, "ed": math.inf, "gap": math.inf}
        return {"mode": mode_weight_error(self.mixture, x), "ed": energy_distance_2d(x, self.reference),
                "gap": exact_nll(self.mixture, x) - self.entropy}

    def matches_pc(self, m: dict) -> bool:
        """Whether measures ``m`` are as good as PC-1000 up to Monte Carlo noise (see the module docstring)."""
        se_weight = float((self.mixture.weights * (1 - self.mixture.weights) / self.n).sqrt().max())
        se_nll = 2.0 / math.sqrt(self.n)  # the per-sample NLL of these mixtures has a std of about 1 nat
        return (m["mode"] <= max(self.pc["mode"], self.flow["mode"]) + se_weight
                and m["ed"] <= max(self.pc["ed"], self.flow["ed"]) + self.floor["ed"]
                and abs(m["gap"]) <= max(abs(self.pc["gap"]), abs(self.flow["gap"])) + se_nll)


def steps_for(nfe: int, per_step: int, extra: int) -> int:
    return max(1, (nfe - extra) // per_step)


def sweep(problem: Problem, lineup: Lineup, nfes=NFES, patience: int = 2) -> dict:
    """``{sampler: [(nfe, measures, matches), ...]}``; a sampler stops after ``patience`` NFE values in a row that
    match PC-1000, except on the non-convergent FEW grid, which runs to 50 NFE to show where it stops improving."""
    curves = {}
    for name, (per_step, extra, make, grid) in lineup.items():
        curve, streak, done = [], 0, set()
        few = grid is FEW
        for target in [n for n in nfes if n <= 50] if few else nfes:
            steps = steps_for(target, per_step, extra)
            try:
                sampler = make(steps, problem.eps, grid)
                x, nfe, _ = problem.sample(sampler)
            except ValueError:  # too few steps for the grid
                continue
            if nfe in done:
                continue
            done.add(nfe)
            m = problem.measure(x)
            ok = problem.matches_pc(m)
            curve.append((nfe, m, ok))
            streak = streak + 1 if ok else 0
            if streak >= patience and not few:
                break
        curves[name] = curve
    return curves


def first_match(curve) -> int | None:
    """The fewest NFE from which every larger NFE in the sweep also matches PC-1000."""
    best = None
    for nfe, _, ok in reversed(curve):
        if not ok:
            break
        best = nfe
    return best


def at_nfe(curve, nfe: int):
    """Measures of the largest NFE <= ``nfe`` in a sweep curve, or None."""
    rows = [(n, m) for n, m, _ in curve if n <= nfe]
    return rows[-1] if rows else None


# --- reports ------------------------------------------------------------------------------------------------
def row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def cells(m: dict | None) -> list[str]:
    if m is None:
        return ["-"] * 3
    return [f"{m['mode']:.4f}", f"{m['ed'] * 1e4:.2f}", f"{m['gap']:+.3f}"]


def report_sweep(problems: list[Problem], curves: dict, emit) -> None:
    """The summary table (fewest NFE matching PC-1000) and one detail table per problem."""
    emit("### Fewest NFE that matches 1000-step PC (reverse diffusion + Langevin 0.16, 1999 NFE)")
    emit("")
    emit(row(["sampler"] + [p.name for p in problems]))
    emit(row(["---"] + ["---:"] * len(problems)))
    for name in LINEUP:
        emit(row([name] + [str(first_match(curves[p.name][name]) or f"> {curves[p.name][name][-1][0]}")
                           for p in problems]))
    emit("")
    for p in problems:
        emit(f"#### {p.sde!r} / {p.name.split(' / ')[1]}: n = {p.n}, seed = {p.seed}, eps = {p.eps:g}, "
             f"H = {p.entropy:.3f} ± {p.entropy_se:.3f}")
        emit("")
        emit(row(["sampler", "NFE to match PC", "mode err", "ED ×1e4", "NLL - H", "NFE", "mode err", "ED ×1e4",
                  "NLL - H"]))
        emit(row(["---"] + ["---:"] * 8))
        emit(row(["exact samples (floor)", "-"] + cells(p.floor) + ["-"] * 4))
        emit(row(["PC-1000 (the bar)", "1999"] + cells(p.pc) + ["-"] * 4))
        emit(row(["exact flow map (dopri5 1e-6)", "-"] + cells(p.flow) + ["-"] * 4))
        for name in LINEUP:
            curve = curves[p.name][name]
            match = first_match(curve)
            m_match = next((m for n, m, _ in curve if n == match), None)
            ten = at_nfe(curve, 10)
            emit(row([name, match or "-"] + cells(m_match) + ([ten[0]] + cells(ten[1]) if ten else ["-"] * 4)))
        emit("")


def target_cells(p: Problem, sampler) -> tuple[int, list[str], bool]:
    """NFE, the three target cells ``value ✓/✗`` and whether all hold, for one sampler on one problem."""
    x, nfe, _ = p.sample(sampler)
    m = p.measure(x)
    ratio = m["ed"] / p.floor["ed"]
    oks = (m["mode"] <= 0.01, abs(m["gap"]) <= 0.05, ratio <= 2.0)
    marks = ["✓" if ok else "✗" for ok in oks]
    return nfe, [f"{m['mode']:.4f} {marks[0]}", f"{m['gap']:+.3f} {marks[1]}", f"{ratio:.2f} {marks[2]}"], all(oks)


def fitted_grid(p: Problem, sampler, fit_draws: int = FIT_DRAWS, max_evals: int = FIT_EVALS) -> tuple:
    """``sampler``'s grid fitted to problem ``p``'s exact score (noise seeds 1000 to fit, 1001 held out; never the
    seeds of the table), and a note: held-out distance before -> after, solver runs and seconds."""
    if not hasattr(p, "fit_data"):
        x_fit, x_hold = (p.sde.prior_sampling((fit_draws, 2), generator=torch.Generator().manual_seed(s),
                                              dtype=torch.float64) for s in (1000, 1001))
        p.fit_data = [(x, reference_solution(p.oracle, p.sde, x, p.eps, False, 1e-7, 1e-7)) for x in (x_fit, x_hold)]
    (x_fit, ref_fit), (x_hold, ref_hold) = p.fit_data
    result = fit_time_grid(sampler, p.oracle, p.sde, x_fit, ref_fit, x_hold, ref_hold, max_evals=max_evals)
    note = (f"{result.holdout_before:.2e} -> {result.holdout_after:.2e} ({result.evaluations} runs, "
            f"{result.seconds:.0f} s)")
    return FittedGrid(result.ts), note


def report_targets(sde_names, n: int, seed: int, emit, budgets=(8, 10, 12), fitted=FITTED,
                   fit_draws: int = FIT_DRAWS, fit_evals: int = FIT_EVALS) -> list[str]:
    """Every sampler at 10 NFE on its sweep grid and on the tuned FEW grid, on fresh seeds, against the targets,
    and the samplers in ``fitted`` on a grid fitted to each mixture; the rows where all targets hold are repeated at
    ``budgets`` NFE (not the fitted ones: a fitted grid has one step count). Returns the labels where all hold."""
    held = []
    for sde_name in sde_names:
        problems = [Problem(sde_name, m, n, seed, with_bars=False) for m in MIXTURES]
        emit(f"### Targets at 10 NFE, {problems[0].sde!r} (n = {n}, prior seed {seed}; FEW was tuned on seed 0)")
        emit("")
        emit("Targets: mode err <= 0.01; |NLL - H| <= 0.05 nats; ED <= 2 x the mean ED of independent exact sets "
             "(3 sets) at the same n. Each cell: value ✓ (holds) / ✗.")
        emit("")
        header = ["sampler", "grid", "NFE"] + [f"{p.name.split(' / ')[1]}: {k}" for p in problems
                                               for k in ("mode err", "NLL - H", "ED / floor")]
        emit(row(header))
        emit(row(["---", "---"] + ["---:"] * (len(header) - 2)))
        emit(row(["exact samples", "-", "-"] + [c for p in problems for c in (
            f"{p.floor['mode']:.4f}", f"{p.floor['gap']:+.3f}", "1.00")]))
        # The exact flow map of the same prior noise: what any deterministic sampler converges to. It starts, as they
        # do, from the SDE's prior N(0, c^2 I) instead of the true p_T (mean a(T) E[x0]), which costs ED at large n.
        flow = [target_cells(p, ODESampler("dopri5", eps=p.eps, rtol=1e-6, atol=1e-6)) for p in problems]
        emit(row(["exact flow map (dopri5 1e-6)", "-", flow[0][0]] + [c for f in flow for c in f[1]]))
        passing, fit_notes = [], []
        for name, (per_step, extra, make, grid) in LINEUP.items():
            if grid is FEW:  # the FEW row of the sampler itself
                continue
            for glabel, g in (("sweep", grid), ("FEW", FEW)) + ((("fitted", None),) if name in fitted else ()):
                if glabel == "FEW" and name.startswith("ODE"):
                    continue
                out, ok_all, nfe = [], True, None
                for p in problems:
                    steps = steps_for(10, per_step, extra)
                    if glabel == "fitted":
                        g, note = fitted_grid(p, make(steps, p.eps, grid), fit_draws, fit_evals)
                        fit_notes.append(f"{name} on {p.name.split(' / ')[1]}: held-out distance {note}; times "
                                         + ", ".join(f"{t:.4g}" for t in g.points))
                    nfe, cells_, ok = target_cells(p, make(steps, p.eps, g))
                    out += cells_
                    ok_all &= ok
                emit(row([name, glabel, nfe] + out))
                if ok_all and glabel == "fitted":
                    held.append(f"{name} (fitted grid, {sde_name})")
                elif ok_all:
                    passing.append((name, glabel, per_step, extra, make, g))
        emit("")
        if fit_notes:
            emit(f"Fitted grids (`fit_time_grid` from the sweep grid, {fit_draws} prior draws of seed 1000, held out "
                 f"on seed 1001, {fit_evals} solver runs at most):")
            emit("")
            emit("\n".join(f"- {note}" for note in fit_notes))
            emit("")
        if passing:
            emit("Rows where every target holds, at neighbouring budgets (is 10 NFE a plateau or a crossing?):")
            emit("")
            emit(row(header))
            emit(row(["---", "---"] + ["---:"] * (len(header) - 2)))
            for name, glabel, per_step, extra, make, g in passing:
                held.append(f"{name} ({glabel} grid, {sde_name})")
                for budget in budgets:
                    out, nfe = [], None
                    for p in problems:
                        nfe, cells_, _ = target_cells(p, make(steps_for(budget, per_step, extra), p.eps, g))
                        out += cells_
                    emit(row([name, glabel, nfe] + out))
            emit("")
    return held


def smoke_fit() -> dict:
    """Fewer fitting draws and runs in a smoke run (``SCORELAB_SMOKE=1``)."""
    return {"fit_draws": 64, "fit_evals": 12} if smoke_active() else {}


def report_grids(problems: list[Problem], emit) -> None:
    """Two samplers at 10 NFE on every grid: what the grid alone does."""
    emit("### Grids at 10 NFE (mode err / ED ×1e4 / NLL - H; n and seed as the sweep)")
    emit("")
    emit(row(["sampler", "grid"] + [p.name for p in problems]))
    emit(row(["---", "---"] + ["---:"] * len(problems)))
    for label, make in (("iPNDM-4", lambda g, e: DEISSampler(10, 4, "ipndm", eps=e, grid=g, denoise=False)),
                        ("DPM-Solver++(3M)", lambda g, e: DPMSolverPP(10, "3m", eps=e, grid=g, denoise=False))):
        for gname, grid in GRID_STUDY.items():
            out = []
            for p in problems:
                m = p.measure(p.sample(make(grid, p.eps))[0])
                out.append(" / ".join(cells(m)))
            emit(row([label, gname] + out))
    emit("")


# The plot: the default sampler in bold, a few samplers in colour, the rest as thin grey lines (their numbers are in
# the tables); one legend below the panels, fonts readable at README width.
HIGHLIGHT = {DEFAULT: "tab:red", "DPM-Solver++(3M)": "tab:blue", "UniPC-3": "tab:green",
             "iPNDM-4 (FEW grid)": "tab:orange", "DDIM": "tab:purple", "EDM Heun": "tab:brown"}
MEASURES = (("mode", "mode-weight error"), ("ed", "energy distance"), ("gap", "|NLL - H| (nats)"))
CURVES_CACHE = Path("logs/bench/fast_samplers/curves.json")


def plot_data(problems: list[Problem], curves: dict) -> dict:
    """What the plot needs, as JSON-ready data: per problem the bars (PC-1000, exact samples) and every curve."""
    return {p.name: {"pc": p.pc, "floor": p.floor, "curves": {
        name: [{"nfe": n, **m} for n, m, _ in curves[p.name][name]] for name in curves[p.name]}} for p in problems}


def save_plot_data(data: dict, path: Path = CURVES_CACHE) -> Path:
    """Write :func:`plot_data` as JSON (the plot can then be redrawn without sampling: ``--plot-only``)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=float))
    return path


def plot_figure(data: dict):
    """Quality against NFE (log axes): rows = problems, columns = the three measures; returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(len(data), 3, figsize=(13, 3.9 * len(data) + 1.3), squeeze=False)
    for r, (pname, d) in enumerate(data.items()):
        for c, (key, label) in enumerate(MEASURES):
            ax = axes[r][c]
            order = [n for n in d["curves"] if n not in HIGHLIGHT] + [n for n in HIGHLIGHT if n in d["curves"]]
            for name in order:
                pts = [(row_["nfe"], abs(row_[key])) for row_ in d["curves"][name] if math.isfinite(row_[key])]
                if not pts:
                    continue
                if name == DEFAULT:
                    style = dict(color=HIGHLIGHT[name], lw=3.2, marker="o", ms=5, zorder=5)
                elif name in HIGHLIGHT:
                    style = dict(color=HIGHLIGHT[name], lw=1.8, marker="o", ms=3.5, zorder=4)
                else:
                    style = dict(color="0.72", lw=1.0, marker=None, zorder=2)
                ax.plot(*zip(*pts, strict=True), **style)
            ax.axhline(abs(d["pc"][key]), color="k", ls="--", lw=1.3)
            ax.axhline(abs(d["floor"][key]), color="0.35", ls=":", lw=1.3)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.tick_params(labelsize=11)
            if r == len(data) - 1:
                ax.set_xlabel("NFE (network evaluations)", fontsize=12)
            ax.set_title(f"{pname}: {label}", fontsize=13)
            ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=HIGHLIGHT[n], lw=3.2 if n == DEFAULT else 1.8, marker="o",
                      ms=5 if n == DEFAULT else 3.5, label=n) for n in HIGHLIGHT]
    handles += [Line2D([], [], color="0.72", lw=1.0, label="other few-step samplers (tables)"),
                Line2D([], [], color="k", ls="--", lw=1.3, label="PC-1000 (1999 NFE)"),
                Line2D([], [], color="0.35", ls=":", lw=1.3, label="exact samples (noise floor)")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=11.5, frameon=False)
    if smoke_active():
        fig.suptitle("SCORELAB_SMOKE=1: smoke run, numbers mean nothing", color="red")
    fig.tight_layout(rect=(0, 1.15 / (3.9 * len(data) + 1.3), 1, 1))
    return fig


def plot(problems: list[Problem], curves: dict, path) -> None:
    """Write the plot of quality against NFE (and cache its data in :data:`CURVES_CACHE`)."""
    data = plot_data(problems, curves)
    if not smoke_active():  # a smoke run's numbers mean nothing: never cache them
        save_plot_data(data)
    write_plot(data, path)


def write_plot(data: dict, path) -> None:
    import matplotlib.pyplot as plt

    fig = plot_figure(data)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_only(sde_name: str, n: int, seed: int, path, emit) -> None:
    """Only the plot: from :data:`CURVES_CACHE` when it holds this SDE's problems, else sweep them (and cache)."""
    import json

    names = [f"{sde_name} / {m}" for m in MIXTURES]
    if CURVES_CACHE.is_file() and not smoke_active():
        data = json.loads(CURVES_CACHE.read_text())
        if all(k in data and set(LINEUP) <= set(data[k]["curves"]) for k in names):
            write_plot({k: data[k] for k in names}, path)
            emit(f"Plot: {path} (from {CURVES_CACHE})")
            return
    problems = [Problem(sde_name, m, n, seed) for m in MIXTURES]
    plot(problems, {p.name: sweep(p, LINEUP) for p in problems}, path)
    emit(f"Plot: {path}" + ("" if smoke_active() else f" (curves cached in {CURVES_CACHE})"))


def run(sde_names, n: int, seed: int, target_n: int, target_seed: int, plot_path, emit,
        targets_only: bool = False) -> None:
    """The whole few-step benchmark: sweep, grid study, targets and the plot (``targets_only``: the targets)."""
    start = time.perf_counter()
    if targets_only:
        held = report_targets(sde_names, target_n, target_seed, emit, **smoke_fit())
        emit(f"All three targets hold on both mixtures at 10 NFE for: {'; '.join(held) if held else 'no sampler'}.")
        emit(f"Targets wall time: {time.perf_counter() - start:.0f} s.")
        return
    problems = [Problem(s, m, n, seed) for s in sde_names for m in MIXTURES]
    curves = {p.name: sweep(p, LINEUP) for p in problems}
    report_sweep(problems, curves, emit)
    report_grids([p for p in problems if p.name.startswith(sde_names[0])], emit)
    held = report_targets(sde_names, target_n, target_seed, emit, **smoke_fit())
    emit(f"All three targets hold on both mixtures at 10 NFE for: {'; '.join(held) if held else 'no sampler'}.")
    emit("")
    if plot_path is not None:
        vp = [p for p in problems if p.name.startswith(sde_names[0])]
        plot(vp, curves, plot_path)
        emit(f"Plot: {plot_path}")
    emit(f"Few-step benchmark wall time: {time.perf_counter() - start:.0f} s.")
