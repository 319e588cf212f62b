"""DDPM's variational bound of a ``loss=hybrid model.learn_variance=true`` checkpoint with learned vs fixed variances.

For each chain length ``N`` (the checkpoint's SDE discretised with ``N`` steps: ``sde.ddpm_alphas_cumprod(N)``) and
each reverse variance (``learned``: improved DDPM's ``exp(v log beta_t + (1 - v) log beta~_t)``; ``beta``;
``beta_tilde``) it runs ``likelihood.py method=vlb`` (``scorelab.cli.likelihood.likelihood``, in this one process so
the imports are paid once) on the same first ``--n`` images of the split, with the same seed: the same times and
noises for every variance, so the rows of one ``N`` differ only in the variance. Prints a markdown table in bits/dim
(mean ± standard error over images, and the terms ``L_0``, ``sum L_{t-1}``, ``L_N``).

    OMP_NUM_THREADS=1 python bench/hybrid_variance.py --ckpt <run>/checkpoints/last.ckpt --data-dir <data> \\
        --steps 50 100 --n 100
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

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
            f"vlb.variance={variance}", "device=cpu",
            f"paths.root_dir={ROOT}", f"paths.output_dir={out}", f"paths.log_dir={out}/logs"])
    return likelihood(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 100], help="chain lengths N (full sums)")
    parser.add_argument("--long", type=int, default=None, help="also N=1000 with this many stratified times K")
    parser.add_argument("--n", type=int, default=100, help="images (the first n of the split)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", default=None, help="also write the table here")
    args = parser.parse_args()
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
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
