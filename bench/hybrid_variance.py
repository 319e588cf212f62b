"""DDPM's variational bound of a ``loss=hybrid model.learn_variance=true`` checkpoint with learned vs fixed variances.

For each chain length ``N`` (the checkpoint's SDE discretised with ``N`` steps: ``sde.ddpm_alphas_cumprod(N)``) and
each reverse variance (``learned``: improved DDPM's ``exp(v log beta_t + (1 - v) log beta~_t)``; ``beta``;
``beta_tilde``) it runs ``likelihood.py method=vlb`` (``scorelab.cli.likelihood.likelihood``, in this one process so
the imports are paid once) on the same first ``--n`` images of the split, with the same seed: the same times and
noises for every variance, so the rows of one ``N`` differ only in the variance. Prints a markdown table in bits/dim
(mean ± standard error over images, and the terms ``L_0``, ``sum L_{t-1}``, ``L_N``).

    OMP_NUM_THREADS=1 python bench/hybrid_variance.py --ckpt <run>/checkpoints/last.ckpt --steps 50 100 --n 100

``--plot docs/hybrid_variance.png`` instead draws, on an ``--plot-steps``-step chain (default 50) and the first
``--plot-n`` images (default 32), each term ``L_{t-1}`` (``t = 1``: the decoder ``L_0``) in bits/dim against ``t`` for
the three variances (one network call per ``t``, the same ``x_t`` for all three), and the learned interpolation ``v``
averaged over pixels and images (about 1 minute on one CPU thread):

    OMP_NUM_THREADS=1 python bench/hybrid_variance.py --ckpt <run>/checkpoints/last.ckpt --plot docs/hybrid_variance.png

The data folder is ``--data-dir``, else ``$SCORELAB_DATA``, else ``./data``; relative paths are read from the current
folder. With ``SCORELAB_SMOKE=1`` it is a smoke run (``scorelab.cli.smoke``): 4 images, one short chain of at most
25 steps, ``--long`` with at most 4 times, a plot of at most 25 steps; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from scorelab.cli.smoke import smoke_active, smoke_cap

ROOT = Path(__file__).resolve().parents[1]
VARIANCES = ("learned", "beta", "beta_tilde")


def run(ckpt: str, data_dir: str, steps: int, timesteps: int | None, variance: str, n: int, split: str) -> dict:
    from hydra import compose, initialize_config_dir

    from scorelab.cli.likelihood import likelihood

    out = tempfile.mkdtemp(prefix="bench_hybrid_")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="likelihood", overrides=[
            f"ckpt_path={ckpt}", f"paths.data_dir={data_dir}", f"split={split}", f"n={n}", f"batch_size={n}",
            "method=vlb", f"vlb.num_steps={steps}", f"vlb.timesteps={'null' if timesteps is None else timesteps}",
            f"vlb.variance={variance}", "device=cpu", f"paths.output_dir={out}", f"paths.log_dir={out}/logs"])
    return likelihood(cfg)


@torch.no_grad()
def plot(ckpt: str, data_dir: str, steps: int, n: int, split: str, out: str, seed: int = 0) -> None:
    """Per-step bound terms of the three variances and the learned ``v`` against ``t``, written to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scorelab.cli.likelihood import load_split
    from scorelab.cli.sample import load_trained
    from scorelab.objectives.vlb import DDPMChain, eps_from_score, pixels_to_data, term_from_prediction

    trained = load_trained(ckpt, data_dir=data_dir)
    score, sde, datamodule = trained[0], trained[1], trained[2]
    data_range = getattr(datamodule, "data_range", (-1.0, 1.0))
    x0 = pixels_to_data(load_split(datamodule, split, n, seed), data_range)
    x0 = x0.to(next(score.parameters()).dtype)
    alphas = sde.ddpm_alphas_cumprod(steps)
    chain = DDPMChain(alphas)
    eps_fn = eps_from_score(score, sde, alphas, with_variance=True)
    gen = torch.Generator().manual_seed(seed)
    dim = x0[0].numel()
    terms = {v: [] for v in VARIANCES}
    v_mean = []
    for i in range(1, steps + 1):
        t = torch.full((x0.shape[0],), i, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
        xt = chain.q_sample(x0, t, noise)
        eps, v = eps_fn(xt, t)
        mean = chain.model_mean(xt, t, eps)
        v_mean.append(float(v.mean()))
        for name in VARIANCES:
            var = chain.interpolated_variance(t, v) if name == "learned" else chain.model_variance(t, x0, name)
            term = term_from_prediction(chain, x0, xt, t, mean, var, data_range)
            terms[name].append(float(DDPMChain.bits_per_dim(term.double(), dim).mean()))
    ts = list(range(1, steps + 1))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.0), dpi=90)
    labels = {"learned": r"learned $\Sigma_\theta$", "beta": r"$\beta_t$", "beta_tilde": r"$\tilde\beta_t$"}
    for name in VARIANCES:
        total = sum(terms[name])
        ax1.plot(ts, terms[name], marker=".", label=f"{labels[name]} (sum {total:.2f} bits/dim)")
    ax1.set_yscale("log")
    ax1.set(title=f"Bound terms $L_{{t-1}}$, N = {steps}, {x0.shape[0]} test images", xlabel="t (t = 1: decoder $L_0$)",
            ylabel="bits/dim")
    ax1.legend(fontsize=10)
    ax2.plot(ts, v_mean, marker=".", color="C3")
    ax2.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax2.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax2.set(title=r"Learned interpolation $v$ (1: $\beta_t$, 0: $\tilde\beta_t$)", xlabel="t",
            ylabel="mean v over pixels")
    for ax in (ax1, ax2):  # legible at README width
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(12)
        ax.xaxis.label.set_fontsize(11)
        ax.yaxis.label.set_fontsize(11)
        ax.tick_params(labelsize=10)
    if smoke_active():
        fig.suptitle("SCORELAB_SMOKE=1: smoke run, numbers mean nothing", color="red")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}; sums (bits/dim, without L_N): " + ", ".join(f"{k} {sum(terms[k]):.3f}" for k in VARIANCES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data-dir", default=os.environ.get("SCORELAB_DATA") or "./data",
                        help="folder holding MNIST/raw (default: $SCORELAB_DATA or ./data)")
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 100], help="chain lengths N (full sums)")
    parser.add_argument("--long", type=int, default=None, help="also N=1000 with this many stratified times K")
    parser.add_argument("--n", type=int, default=100, help="images (the first n of the split)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", default=None, help="also write the table here")
    parser.add_argument("--plot", default=None, help="draw the per-step terms and v to this PNG instead")
    parser.add_argument("--plot-steps", type=int, default=50)
    parser.add_argument("--plot-n", type=int, default=32)
    args = parser.parse_args()
    if smoke_active():  # SCORELAB_SMOKE=1: the same rows and plot from a few images and steps (scorelab.cli.smoke)
        old = dict(vars(args))
        args.steps = [smoke_cap(s, 25) for s in smoke_cap(args.steps, 1)]  # linear VP: N >= beta_max = 20
        args.long = smoke_cap(args.long, 4) if args.long else args.long
        args.n, args.plot_steps, args.plot_n = smoke_cap(args.n, 4), smoke_cap(args.plot_steps, 25), \
            smoke_cap(args.plot_n, 4)
        keys = ("plot_steps", "plot_n") if args.plot else ("steps", "long", "n")
        changed = [f"{k.replace('_', '-')} {old[k]} -> {getattr(args, k)}" for k in keys if old[k] != getattr(args, k)]
        print(f"SCORELAB_SMOKE=1: a smoke run, its numbers mean nothing ({', '.join(changed) or 'nothing to cap'})",
              flush=True)
    if args.plot:
        plot(args.ckpt, args.data_dir, args.plot_steps, args.plot_n, args.split, args.plot)
        return
    settings = [(s, None) for s in args.steps] + ([(1000, args.long)] if args.long else [])
    lines = ["| N | K | variance | bits/dim | L_0 | Σ L_{t−1} | L_N | time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for steps, timesteps in settings:
        for variance in VARIANCES:
            start = time.perf_counter()
            res = run(args.ckpt, args.data_dir, steps, timesteps, variance, args.n, args.split)
            v = res["vlb"]
            lines.append(f"| {steps} | {timesteps or 'all'} | {variance} | {res['mean']:.3f} ± {res['se']:.3f} | "
                         f"{v['decoder']['mean']:.3f} | {v['diffusion']['mean']:.3f} | {v['prior']['mean']:.4f} | "
                         f"{time.perf_counter() - start:.0f} s |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(("(smoke run: numbers mean nothing)\n\n" if smoke_active() else "") + table + "\n")


if __name__ == "__main__":
    main()
