"""Baseline benchmark of the samplers with the *exact* (oracle) score on 2-D Gaussian mixtures.

With the true score every error left is the sampler's own: discretisation, the finite end time ``eps``,
and Monte Carlo noise. This is the baseline that faster samplers are measured against.

For each SDE (VP by default) and each mixture (``two_modes`` with weights 0.8/0.2, ``eight_gaussians``)
it prints one Markdown pipe table with a row per sampler and step count:

* **NFE**: batched score evaluations (the oracle is called once per NFE on the whole batch).
* **time [s]**: wall time of the sampler call (``time.perf_counter``; one torch thread by default:
  the tensors are tiny, and with 2 threads on a loaded 2-core machine OpenMP waits made runs up to 70x slower).
* **mode err**: max over components of |sampled mode weight - true weight|, samples assigned to their
  most probable component. Monte Carlo noise alone is about ``sqrt(w (1 - w) / n)`` (0.006 for 0.8/0.2 at 5000).
* **energy dist**: energy distance (Szekely & Rizzo) to a fresh set of true samples; 0 iff same law,
  V-statistic on at most 4000 points each, so even exact samples give a small positive value.
* **NLL**: mean exact negative log-likelihood (nats) of the samples under the true mixture, and
  **NLL - H** its gap to the true entropy H (printed above each table; Monte Carlo, 200k points).
  Blurred samples push it above 0, samples collapsed onto the mode centres below 0.

The first row of each table, ``exact samples``, is a second fresh set of true samples: the noise floor.
A row reads ``n/a`` when the sampler is undefined for that SDE (ancestral sampling on sub-VP). Rows share
one seed (common random numbers), so differences between rows are less noisy than the absolute values:
at n = 5000 the NLL column carries about +-0.015 nats of Monte Carlo noise. Annealed Langevin does one
Langevin step per noise level, so it needs many levels; wall times are noisy on a shared machine.

Run it with ``python bench/samplers.py`` (``make bench`` calls it); ``--sde all`` covers VP, sub-VP and VE,
``--quick`` is a smoke run with fewer rows, ``--out FILE.md`` also writes the tables to a file.

``--fast`` runs the few-step benchmark instead (``bench/fast_samplers.py``): the fewest NFE at which each few-step
sampler matches 1000-step PC, a grid study, the 10-NFE targets and a PNG of quality against NFE.

With ``SCORELAB_SMOKE=1`` it is a smoke run (``scorelab.cli.smoke``): the same rows from 200 samples (``--n-samples``
and ``--target-n``); what it writes starts with "(smoke run: numbers mean nothing)" and the PNG says so in red.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from scorelab.cli.smoke import smoke_active, smoke_cap
from scorelab.data import eight_gaussians, two_modes
from scorelab.metrics import energy_distance, exact_nll, mode_weight_error
from scorelab.sampling import (
    Ancestral,
    AnnealedLangevin,
    DDIMSampler,
    DEISSampler,
    DPMSolverPP,
    EDMSampler,
    EulerMaruyama,
    Langevin,
    NoCorrector,
    NoPredictor,
    ODESampler,
    PCSampler,
    ReverseDiffusion,
    TimeGrid,
    UniPCSampler,
)
from scorelab.sde import VESDE, VPSDE, SubVPSDE

SDES = {"vp": (VPSDE, 1e-3), "subvp": (SubVPSDE, 1e-3), "ve": (VESDE, 1e-5)}  # class, sampling end time eps
MIXTURES = {"two_modes (0.8/0.2)": two_modes, "eight_gaussians": eight_gaussians}
SMOKE_MARK = "(smoke run: numbers mean nothing)"  # the first line of what a SCORELAB_SMOKE=1 run writes
HEADER = ["sampler", "steps", "NFE", "time [s]", "mode err", "energy dist", "NLL", "NLL - H"]


def sampler_grid(eps: float, quick: bool):
    """``(name, steps label, sampler)`` for every row of a table."""
    sde_steps = (10, 100) if quick else (10, 30, 100, 300, 1000)
    pc = {
        "Euler-Maruyama": lambda n: PCSampler(EulerMaruyama(), NoCorrector(), steps=n, eps=eps),
        "reverse diffusion": lambda n: PCSampler(ReverseDiffusion(), NoCorrector(), steps=n, eps=eps),
        "ancestral": lambda n: PCSampler(Ancestral(), NoCorrector(), steps=n, eps=eps),
        "PC: RD + Langevin(0.16)": lambda n: PCSampler(ReverseDiffusion(), Langevin(snr=0.16), steps=n, eps=eps),
        "annealed Langevin(0.16)": lambda n: PCSampler(NoPredictor(), AnnealedLangevin(snr=0.16), steps=n, eps=eps),
    }
    for name, make in pc.items():
        for n in sde_steps:
            if n == 1000 and name.startswith("PC"):  # 2000 NFE; its bias is already visible at 300 steps
                continue
            if n == 10 and name.startswith("annealed"):  # far from converged: one Langevin step per level
                continue
            yield name, str(n), make(n)
    ode_steps = {"euler": (10, 100) if quick else (10, 30, 100, 300, 1000),
                 "heun": (10,) if quick else (10, 30, 100, 300),
                 "rk4": (10,) if quick else (5, 10, 30, 100)}
    for method, steps in ode_steps.items():
        for n in steps:
            yield f"ODE {method}", str(n), ODESampler(method, steps=n, eps=eps)
    for tol in (1e-3,) if quick else (1e-3, 1e-5):
        yield "ODE dopri5", f"tol {tol:g}", ODESampler("dopri5", eps=eps, rtol=tol, atol=tol)
    flow = TimeGrid("logsnr", sigma_max=20.0)  # few-step samplers: log-SNR spacing from sigma = 20 (bench --fast)
    few = {
        "DDIM": lambda n: DDIMSampler(n, eps=eps, grid=flow, denoise=False),
        "DPM-Solver++(2M)": lambda n: DPMSolverPP(n, "2m", eps=eps, grid=flow, denoise=False),
        "DPM-Solver++(3M)": lambda n: DPMSolverPP(n, "3m", eps=eps, grid=flow, denoise=False),
        "UniPC-3": lambda n: UniPCSampler(n, 3, eps=eps, grid=flow, denoise=False),
        "iPNDM-4": lambda n: DEISSampler(n, 4, "ipndm", eps=eps, grid=flow, denoise=False),
        "EDM Heun (rho = 7, sigma <= 80)": lambda n: EDMSampler(max(1, (n - 1) // 2), eps=eps,
                                                                grid=TimeGrid("edm", sigma_max=80.0)),
    }
    for name, make in few.items():
        for n in (10,) if quick else (10, 20, 50):
            yield name, str(n), make(n)
    yield "iPNDM-4 (10-NFE grid: sigma in [0.1, 8])", "10", DEISSampler(
        10, 4, "ipndm", eps=eps, grid=TimeGrid("logsnr", sigma_min=0.1, sigma_max=8.0), denoise=False)


def fmt_row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def metric_cells(mixture, x: torch.Tensor, reference: torch.Tensor, entropy: float, seed: int) -> list[str]:
    if not torch.isfinite(x).all():
        return ["non-finite"] * 4
    ed = energy_distance(x, reference, generator=torch.Generator().manual_seed(seed))
    nll = exact_nll(mixture, x)
    return [f"{mode_weight_error(mixture, x):.4f}", f"{ed:.4f}", f"{nll:.3f}", f"{nll - entropy:+.3f}"]


def bench_table(sde_name: str, mix_name: str, n: int, seed: int, quick: bool, emit) -> None:
    """Run every sampler on one (SDE, mixture) pair and emit its table line by line."""
    sde_cls, eps = SDES[sde_name]
    sde, mixture = sde_cls(), MIXTURES[mix_name]()
    oracle = mixture.oracle(sde)
    reference = mixture.sample(n, generator=torch.Generator().manual_seed(seed + 1))
    entropy, entropy_se = mixture.entropy(generator=torch.Generator().manual_seed(seed + 2))
    emit(f"### {sde!r} / {mix_name}: eps = {eps:g}, n = {n}, seed = {seed}")
    emit("")
    emit(f"True entropy H = {entropy:.3f} ± {entropy_se:.3f} nats (Monte Carlo, 200k samples).")
    emit("")
    emit(fmt_row(HEADER))
    emit(fmt_row(["---"] * 2 + ["---:"] * (len(HEADER) - 2)))
    exact = mixture.sample(n, generator=torch.Generator().manual_seed(seed + 3))
    emit(fmt_row(["exact samples", "-", "0", "-"] + metric_cells(mixture, exact, reference, entropy, seed)))
    for name, steps, sampler in sampler_grid(eps, quick):
        gen = torch.Generator().manual_seed(seed)  # same prior noise for every row
        start = time.perf_counter()
        try:
            x, nfe = sampler(oracle, sde, (n, mixture.dim), generator=gen)
        except ValueError:  # e.g. ancestral sampling is undefined for sub-VP
            emit(fmt_row([name, steps] + ["n/a"] * (len(HEADER) - 2)))
            continue
        elapsed = time.perf_counter() - start
        cells = metric_cells(mixture, x, reference, entropy, seed)
        emit(fmt_row([name, steps, str(nfe), f"{elapsed:.2f}"] + cells))
    emit("")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Benchmark score-SDE samplers with the exact oracle score on 2-D Gaussian mixtures "
                    "(two_modes 0.8/0.2 and eight_gaussians). Prints Markdown tables: NFE, wall time, max "
                    "mode-weight error, energy distance to fresh true samples, exact NLL and its gap to the "
                    "true entropy.",
        epilog="Example: python bench/samplers.py --sde all --out bench_samplers.md")
    parser.add_argument("--sde", default=None,
                        help="forward SDE(s): vp, subvp, ve, all or a comma list (default: vp; vp,ve with --fast)")
    parser.add_argument("--n-samples", type=int, default=None,
                        help="samples per sampler run (default: 5000, or 2000 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="base random seed (default: 0)")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer rows and step counts")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown tables to this file")
    parser.add_argument("--fast", action="store_true",
                        help="few-step benchmark: fewest NFE matching 1000-step PC, grid study, 10-NFE targets, plot")
    parser.add_argument("--plot", type=Path, default=Path("docs/bench_fast_samplers.png"),
                        help="with --fast: where to write the PNG of quality against NFE")
    parser.add_argument("--target-n", type=int, default=20_000, help="with --fast: samples for the targets table")
    parser.add_argument("--targets-only", action="store_true",
                        help="with --fast: only the targets tables at 10 NFE (with the fitted grids' rows)")
    parser.add_argument("--plot-only", action="store_true",
                        help="with --fast: only the plot, from logs/bench/fast_samplers/curves.json, or by sweeping "
                             "the first SDE's two mixtures when it is missing (no tables)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: 1; more only slows these tiny batches down)")
    args = parser.parse_args(argv)
    n = args.n_samples or (20_000 if args.fast else 2000 if args.quick else 5000)
    if n < 2:
        parser.error("--n-samples must be at least 2")
    sde_arg = args.sde or ("vp,ve" if args.fast else "vp")
    sde_names = list(SDES) if sde_arg == "all" else sde_arg.split(",")
    if any(s not in SDES for s in sde_names):
        parser.error(f"--sde must be vp, subvp, ve, all or a comma list of them, got {sde_arg!r}")
    if smoke_active():  # SCORELAB_SMOKE=1: the same tables from a few samples (scorelab.cli.smoke)
        caps = [f"samples {n} -> {smoke_cap(n, 200)}"] + (
            [f"target samples {args.target_n} -> {smoke_cap(args.target_n, 200)}"] if args.fast else [])
        n, args.target_n = smoke_cap(n, 200), smoke_cap(args.target_n, 200)
        print(f"SCORELAB_SMOKE=1: a smoke run, its numbers mean nothing ({', '.join(caps)})", flush=True)
    torch.set_num_threads(args.threads)

    lines: list[str] = [SMOKE_MARK, ""] if smoke_active() else []

    def emit(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    start = time.perf_counter()
    if args.fast and args.plot_only:
        from fast_samplers import plot_only

        plot_only(sde_names[0], n, args.seed, args.plot, print)
        return
    if args.fast:
        from fast_samplers import run  # bench/ is on sys.path when this file runs as a script

        emit(f"## Few-step samplers with the exact score (torch {torch.__version__}, {args.threads} threads)")
        emit("")
        run(sde_names, n, args.seed, args.target_n, args.seed + 1, args.plot, emit, args.targets_only)
    else:
        emit(f"## Sampler baseline with the exact score (torch {torch.__version__}, {args.threads} threads)")
        emit("")
        for sde_name in sde_names:
            for mix_name in MIXTURES:
                bench_table(sde_name, mix_name, n, args.seed, args.quick, emit)
    emit(f"Total wall time: {time.perf_counter() - start:.0f} s.")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
