"""Score-matching objectives on the toy mixtures: DSM, implicit (ISM), sliced (SSM, SSM-VR), likelihood weighting.

Every row trains the default toy job (``conf/experiment/toy_<mixture>.yaml``: the MLP, VP SDE, Adam 2e-3 with warm-up,
batch 512, EMA 0.999, seed 0; the grid: ``toy_grid_ve``) for the same number of steps, through the same parts
``train.py`` builds (``scorelab.cli.runs.build_run``, the Lightning Trainer; no callbacks), changing only ``loss=``
(a row without ``sigma2`` or ``lr_scale 1`` in its label uses the loss config's own weighting and learning-rate
factor: ``sigma2`` and 1 for DSM, ``snr_sigmoid`` and 0.5 for ISM and SSM; the ``sigma2`` rows of ISM and SSM keep
factor 1, as the earlier tables had it). Then, with the EMA weights:

* **score err**: the validation metric of ``ScoreModule``, ``E ||s(t) (s_theta - s*)||^2`` (the eps-space error
  against the exact oracle score) at t = 0.05, 0.2, 0.5, 0.9 on the 8192 validation points, and their mean;
  **/ DSM** is the mean's ratio to the DSM row's (the issue's acceptance: ISM and SSM within 2x);
* **NLL - true**: the model's exact NLL (probability-flow ODE, exact divergence, dopri5 at 1e-5) of ``--nll-n`` fresh
  test points minus their exact NLL under the true mixture, paired, in nats, ± its standard error: how far the
  model's density is from the truth (0 is perfect; the floor is the mixture's entropy, printed above each table);
* **time**: wall time of the training run (one torch thread; shared machines make it noisy).

Rows share the seed (same initialisation, data order and validation noise), so differences between rows are less
noisy than the values. Run it with one thread::

    OMP_NUM_THREADS=1 python bench/objectives.py --rows "DSM (sigma2)" "ISM, exact trace" "SSM-VR, 1 projection" \
        --seeds 0 1 2 --nll-n 0                                   # the acceptance table (about 20 min per mixture)
    OMP_NUM_THREADS=1 python bench/objectives.py                  # every row, both mixtures, seed 0 (about 1 hour)
    OMP_NUM_THREADS=1 python bench/objectives.py --quick          # smoke run: 100 steps, 200 NLL points
    OMP_NUM_THREADS=1 python bench/objectives.py --steps 2000 --mixtures two_modes --out table.md
    OMP_NUM_THREADS=1 python bench/objectives.py --nll-n 0 --overrides optimizer.lr=5e-3 scheduler=warmup_stable_decay

``--overrides`` changes every row alike (DSM included), so the ratios stay a same-recipe comparison. With
``SCORELAB_SMOKE=1`` it is a smoke run (``scorelab.cli.smoke``): 20 steps (a learning-rate warm-up of at most 5),
one mixture, at most two seeds, 32 NLL points, every row asked for; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
import warnings
from pathlib import Path

import torch

from scorelab.cli.smoke import smoke_active, smoke_cap

ROOT = Path(__file__).resolve().parents[1]
TIMES = (0.05, 0.2, 0.5, 0.9)
REFERENCE = "DSM (sigma2)"
# row label -> overrides of the training config
ROWS = {
    "DSM (sigma2)": ["loss=dsm"],
    "DSM, snr_sigmoid": ["loss=dsm", "loss.weighting=snr_sigmoid"],
    "ISM, exact trace": ["loss=ism", "loss.trace=exact"],
    "ISM, exact trace, lr_scale 1": ["loss=ism", "loss.trace=exact", "loss.lr_scale=1.0"],
    "ISM, exact trace, sigma2": ["loss=ism", "loss.trace=exact", "loss.weighting=sigma2", "loss.lr_scale=1.0"],
    "ISM, exact trace, sigma2, importance t": ["loss=ism", "loss.trace=exact", "loss.weighting=sigma2",
                                               "loss.importance_sampling=true", "loss.lr_scale=1.0"],
    "SSM-VR, 1 projection": ["loss=ssm"],
    "SSM-VR, 1 projection, lr_scale 1": ["loss=ssm", "loss.lr_scale=1.0"],
    "SSM-VR, 1 Gaussian projection, lr_scale 1": ["loss=ssm", "loss.probe=gaussian", "loss.lr_scale=1.0"],
    "SSM-VR, 1 Gaussian projection, sigma2": ["loss=ssm", "loss.probe=gaussian", "loss.weighting=sigma2",
                                              "loss.lr_scale=1.0"],
    "SSM-VR, 4 Gaussian projections, sigma2": ["loss=ssm", "loss.probe=gaussian", "loss.weighting=sigma2",
                                               "loss.num_projections=4", "loss.lr_scale=1.0"],
    "SSM-VR, 1 Rademacher projection, sigma2": ["loss=ssm", "loss.weighting=sigma2", "loss.lr_scale=1.0"],
    "SSM, 1 projection": ["loss=ssm", "loss.variance_reduction=false"],
    "SSM, 1 Gaussian projection, sigma2": ["loss=ssm", "loss.variance_reduction=false", "loss.probe=gaussian",
                                           "loss.weighting=sigma2", "loss.lr_scale=1.0"],
    "DSM g2, uniform t": ["loss=dsm", "loss.weighting=g2"],
    "DSM g2, importance t": ["loss=dsm_likelihood"],
}


def experiment_of(mixture: str) -> str:
    """The toy experiment of a mixture preset: ``toy_<mixture>`` (VP), or ``toy_<mixture>_ve`` (the grid)."""
    for name in (f"toy_{mixture}", f"toy_{mixture}_ve"):
        if (ROOT / "conf" / "experiment" / f"{name}.yaml").exists():
            return name
    raise SystemExit(f"no experiment toy_{mixture} or toy_{mixture}_ve in conf/experiment/")


def compose(mixture: str, overrides: list[str], steps: int):
    """The training config of the mixture's experiment (:func:`experiment_of`) with ``overrides``, as ``train.py``
    composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=[
            f"experiment={experiment_of(mixture)}", *overrides, f"trainer.max_steps={steps}", "logger=none",
            "callbacks=none", "trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false",
            "trainer.limit_val_batches=0", f"paths.output_dir={tempfile.mkdtemp(prefix='bench_objectives_')}"])
    warmup = OmegaConf.select(cfg, "scheduler.warmup_steps", default=None)
    if smoke_active() and isinstance(warmup, int) and warmup > steps // 4:  # a smoke run's few steps: warm-up
        cfg.scheduler.warmup_steps = steps // 4  # ends within them (warmup_cosine, warmup_stable_decay need it)
    return cfg


def train_row(cfg):
    """Train as ``train.py`` does (same parts, seed and trainer settings) without callbacks; return the module."""
    import lightning as L
    from hydra.utils import instantiate

    from scorelab.cli.runs import build_run

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run = build_run(cfg)
    parts, module = run.parts, run.module
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    start = time.perf_counter()
    trainer.fit(module, datamodule=parts["datamodule"])
    return module, parts["datamodule"], time.perf_counter() - start


@torch.no_grad()
def score_errors(module, datamodule) -> list[float]:
    """``E ||s(t) (s_theta - s*)||^2`` of the EMA model at :data:`TIMES` (ScoreModule's validation metric)."""
    x = datamodule.val_set.tensors[0]
    sde, model = module.sde, module.score_fn(use_ema=True).eval()
    oracle = datamodule.mixture.oracle(sde)
    gen = torch.Generator().manual_seed(0)
    errors = []
    for t_val in TIMES:
        t = torch.full((len(x),), t_val)
        std = sde.marginal_std(t)[:, None]
        xt = sde.marginal_prob(x, t)[0] + std * torch.randn(x.shape, generator=gen)
        errors.append(float((((model(xt, t) - oracle(xt, t).float()) * std) ** 2).sum(1).mean()))
    return errors


def nll_gap(module, datamodule, n: int) -> tuple[float, float]:
    """Paired model NLL - exact NLL (nats) of ``n`` fresh test points, mean and standard error."""
    from scorelab.metrics.likelihood import log_likelihood

    mixture = datamodule.mixture
    x = mixture.sample(n, generator=torch.Generator().manual_seed(123))
    model = module.score_fn(use_ema=True).eval()
    logp = log_likelihood(model, module.sde, x, divergence="exact").log_prob.double()
    gap = -logp + mixture.log_prob(x.double())
    return float(gap.mean()), float(gap.std() / math.sqrt(n))


def run(mixtures: list[str], steps: int, nll_n: int, rows: list[str], emit, overrides: list[str] = (),
        seeds: list[int] = (0,)) -> None:
    """One table per mixture. With several ``seeds`` every row is trained once per seed: the errors, NLL gaps and
    times are seed means, ``/ DSM`` is the ratio of the seed means, and ``worst seed`` the largest per-seed ratio
    (each seed's row against the same seed's DSM)."""
    from scorelab.data import PRESETS

    seeds = list(seeds)
    for mixture in mixtures:
        entropy, entropy_se = PRESETS[mixture]().entropy(generator=torch.Generator().manual_seed(0))
        seed_note = f"seed {seeds[0]}" if len(seeds) == 1 else f"means over seeds {', '.join(map(str, seeds))}"
        emit(f"\n### {mixture} ({experiment_of(mixture)}): {steps} steps, batch 512, {seed_note} "
             f"(true entropy {entropy:.4f} ± {entropy_se:.4f} nats)\n")
        emit("| objective | " + " | ".join(f"err t={t:g}" for t in TIMES) + " | mean err | / DSM"
             + (" | worst seed" if len(seeds) > 1 else "") + " | NLL - true [nats] | time [s] |")
        emit("| --- " * (len(TIMES) + 5 + (len(seeds) > 1)) + "|")
        reference: list[float] = []
        for label in [REFERENCE] + [r for r in rows if r != REFERENCE]:  # DSM first: the ratios' reference
            per_seed, nlls, times = [], [], []
            for seed in seeds:
                module, dm, seconds = train_row(compose(mixture, [*ROWS[label], *overrides, f"seed={seed}"], steps))
                per_seed.append(score_errors(module, dm))
                times.append(seconds)
                if nll_n:
                    nlls.append(nll_gap(module, dm, nll_n))
            errors = [sum(e[i] for e in per_seed) / len(seeds) for i in range(len(TIMES))]
            means = [sum(e) / len(e) for e in per_seed]
            if label == REFERENCE:
                reference = means
            ratio = sum(means) / sum(reference)
            worst = max(m / r for m, r in zip(means, reference, strict=True))
            if nlls:  # seed mean of the gaps, standard error of that mean from the per-seed standard errors
                nll = (f"{sum(g for g, _ in nlls) / len(nlls):+.4f} ± "
                       f"{math.sqrt(sum(se**2 for _, se in nlls)) / len(nlls):.4f}")
            else:
                nll = "-"
            emit(f"| {label} | " + " | ".join(f"{e:.4f}" for e in errors) + f" | {sum(means) / len(means):.4f} | "
                 f"{ratio:.2f}" + (f" | {worst:.2f}" if len(seeds) > 1 else "")
                 + f" | {nll} | {sum(times) / len(times):.0f} |")


def smoke_args(args: argparse.Namespace, **caps: int) -> None:
    """``SCORELAB_SMOKE=1``: cap these arguments (:func:`scorelab.cli.smoke.smoke_cap`: numbers to at most the cap,
    lists to their first items) and say so in one line; nothing otherwise."""
    if not smoke_active():
        return
    changed = []
    for name, cap in caps.items():
        old = getattr(args, name)
        setattr(args, name, smoke_cap(old, cap))
        if getattr(args, name) != old:
            changed.append(f"{name.replace('_', '-')} {old} -> {getattr(args, name)}")
    print(f"SCORELAB_SMOKE=1: a smoke run, its numbers mean nothing ({', '.join(changed) or 'nothing to cap'})",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mixtures", nargs="+", default=["two_modes", "eight_gaussians"],
                        help="mixture presets: two_modes, eight_gaussians (VP), grid (VE, experiment toy_grid_ve)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--nll-n", type=int, default=2000, help="test points of the exact NLL (0: skip it)")
    parser.add_argument("--overrides", nargs="*", default=[],
                        help="config overrides applied to every row, DSM included (e.g. scheduler=warmup_cosine)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="train every row once per seed and report seed means and the worst seed's ratio")
    parser.add_argument("--quick", action="store_true", help="100 steps, 200 NLL points")
    parser.add_argument("--out", type=Path, help="also write the tables to this Markdown file")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.nll_n = 100, 200
    smoke_args(args, steps=20, mixtures=1, seeds=2, nll_n=32)
    torch.set_num_threads(1)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    lines: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    if args.overrides:
        emit(f"\nOverrides of every row: `{' '.join(args.overrides)}`")
    run(args.mixtures, args.steps, args.nll_n, args.rows, emit, args.overrides, args.seeds)
    if args.out:
        args.out.write_text("\n".join((["(smoke run: numbers mean nothing)"] if smoke_active() else []) + lines)
                            + "\n")


if __name__ == "__main__":
    main()
