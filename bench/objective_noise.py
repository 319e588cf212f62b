"""Gradient noise of the score-matching estimators at fixed t: why implicit and sliced score matching need their own
time weighting.

DSM, ISM and SSM have the same expected parameter gradient at every t, for every network (docs/objectives.md), so
at a fixed step budget they differ only in the noise of their per-example gradients. This script trains the
default toy job with DSM (the EMA model is the network measured; ``--steps``), then, at each fixed t, draws
``--batches`` independent batches of ``--batch`` training points and reports, per estimator and with the
noise-prediction weighting ``lambda = s(t)^2``:

* **noise**: ``tr Cov`` of one example's parameter gradient (the batch means' total variance times the batch size);
* **|mean|^2**: the squared norm of the mean gradient over all draws (the signal; equal for all estimators up to
  the noise);
* **snr_sigmoid factor**: ``lambda(t) / s(t)^2`` of ``weighting=snr_sigmoid`` with the configured shift and floor;
  the noise of a term weighted by it scales with its square.

Every estimator sees the same batches and times (one generator each, same seed), and the network is the same, so
the columns compare like with like. Run it with one thread::

    OMP_NUM_THREADS=1 python bench/objective_noise.py                        # eight_gaussians, about 4 min
    OMP_NUM_THREADS=1 python bench/objective_noise.py --mixture two_modes

With ``SCORELAB_SMOKE=1`` it is a smoke run (``scorelab.cli.smoke``): 20 training steps, 4 batches per cell; its
numbers mean nothing.
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from objectives import compose, smoke_args, train_row  # noqa: E402  (the same training as bench/objectives.py)

TIMES = (0.01, 0.05, 0.1, 0.2, 0.5, 0.9)


def estimators(sde, snr_shift: float, snr_floor: float) -> dict:
    from scorelab.objectives.score_matching import DSMLoss, ISMLoss, SSMLoss

    return {
        "DSM": DSMLoss(sde),
        "ISM (exact trace)": ISMLoss(sde, trace="exact"),
        "SSM-VR (Gaussian v)": SSMLoss(sde, probe="gaussian"),
        "SSM-VR (Rademacher v)": SSMLoss(sde, probe="rademacher"),
        "_weight": DSMLoss(sde, weighting="snr_sigmoid", snr_shift=snr_shift, snr_floor=snr_floor),
    }


def gradient_noise(model, loss, x: torch.Tensor, t_value: float, batch: int, batches: int) -> tuple[float, float]:
    """(``tr Cov`` of one example's parameter gradient, ``|mean gradient|^2``) of ``loss`` at time ``t_value``."""
    params = list(model.parameters())
    noise_gen, index_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    grads = []
    for _ in range(batches):
        xb = x[torch.randint(0, len(x), (batch,), generator=index_gen)]
        value = loss.per_example(model, xb, noise_gen, t=torch.full((batch,), t_value)).mean()
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(value, params)]))
    stacked = torch.stack(grads)
    return float(stacked.var(0).sum()) * batch, float(stacked.mean(0).pow(2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mixture", default="eight_gaussians")
    parser.add_argument("--steps", type=int, default=3000, help="DSM training steps of the measured network")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=96)
    parser.add_argument("--snr-shift", type=float, default=-2.0)
    parser.add_argument("--snr-floor", type=float, default=0.2)
    args = parser.parse_args()
    smoke_args(args, steps=20, batches=4)
    torch.set_num_threads(1)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    module, datamodule, _ = train_row(compose(args.mixture, ["loss=dsm"], args.steps))
    model = module.score_fn(use_ema=True).eval().requires_grad_(True)
    x = datamodule.train_set.tensors[0]
    losses = estimators(module.sde, args.snr_shift, args.snr_floor)
    weight = losses.pop("_weight")
    print(f"\n### {args.mixture}: per-example gradient noise tr Cov (|mean|^2), DSM-trained network "
          f"({args.steps} steps), lambda = s(t)^2, {args.batches} batches of {args.batch}\n")
    print("| t | " + " | ".join(losses) + f" | snr_sigmoid factor (shift {args.snr_shift:g}, floor "
          f"{args.snr_floor:g}) |")
    print("| --- " * (len(losses) + 2) + "|")
    for t_value in TIMES:
        cells = []
        for loss in losses.values():
            noise, signal = gradient_noise(model, loss, x, t_value, args.batch, args.batches)
            cells.append(f"{noise:.3g} ({signal:.2g})")
        factor = float(weight.relative_weight(torch.tensor([t_value])))
        print(f"| {t_value:g} | " + " | ".join(cells) + f" | {factor:.3f} |", flush=True)


if __name__ == "__main__":
    main()
