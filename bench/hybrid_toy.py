"""Learned vs fixed reverse variances on a 2-D toy mixture: DDPM's bound with a continuous decoder, short/long chains.

Trains the toy MLP with a learned variance (``ScoreMLP(learn_variance=True)``) by improved DDPM's hybrid objective
(``HybridLoss(decoder="gaussian")``: ``L_simple + 0.001 L_vlb`` on the linear VP chain of ``--train-steps`` steps,
plain Adam, no EMA), then evaluates, on fresh points of the mixture, the bound

    -log p_theta(x_0) <= L_N + sum_{t=2}^N L_{t-1} + L_0,     L_0 = -log N(x_0; mu_theta(x_1, 1), sigma_1^2)

(a density: the data are continuous) in nats per point, with every term summed in full, for chains of ``N`` steps
(the same VP SDE discretised with ``N`` steps; the network at the SDE times of the chain's noise levels) and three
reverse variances from the same network calls and noises: ``learned`` (``exp(v log beta_t + (1 - v) log beta~_t)``,
Nichol & Dhariwal 2021, Eq. 15), ``beta`` and ``beta_tilde``. The true NLL of the same points under the mixture is
the floor. One torch thread:

    OMP_NUM_THREADS=1 python bench/hybrid_toy.py                       # two_modes, 3000 steps, N = 25 50 100 1000

With ``SCORELAB_SMOKE=1`` it is a smoke run (``scorelab.cli.smoke``): 20 training steps, the first two chains, 64
test points; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from scorelab.cli.smoke import smoke_active, smoke_cap
from scorelab.data import eight_gaussians, two_modes
from scorelab.models import ScoreMLP, ScoreModel
from scorelab.objectives.hybrid import HybridLoss, gaussian_nll
from scorelab.objectives.vlb import DDPMChain, eps_from_score, prior_term, term_from_prediction
from scorelab.sde import VPSDE

MIXTURES = {"two_modes": two_modes, "eight_gaussians": eight_gaussians}
VARIANCES = ("learned", "beta", "beta_tilde")


def train(mixture, sde, steps: int, train_chain: int, batch: int, lr: float, seed: int) -> ScoreModel:
    torch.manual_seed(seed)
    model = ScoreModel(ScoreMLP(dim=2, width=128, depth=3, embed_dim=64, learn_variance=True), sde,
                       learn_variance=True)
    loss_fn = HybridLoss(sde, num_steps=train_chain, decoder="gaussian")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 200))
    gen = torch.Generator().manual_seed(seed)
    data = mixture.sample(50_000, generator=torch.Generator().manual_seed(seed + 1))
    for k in range(steps):
        x0 = data[torch.randint(0, len(data), (batch,), generator=gen)]
        loss = loss_fn(model, x0, gen)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (k + 1) % 500 == 0:
            print(f"step {k + 1}: hybrid loss {loss.item():.4f}", flush=True)
    return model.eval()


@torch.no_grad()
def bounds(model: ScoreModel, sde, x0: torch.Tensor, num_steps: int, seed: int) -> dict[str, torch.Tensor]:
    """The bound per point ``[n]`` (nats) for each variance, every term in full, shared network calls and noises."""
    abar = sde.ddpm_alphas_cumprod(num_steps)
    chain, eps_fn = DDPMChain(abar), eps_from_score(model, sde, abar, with_variance=True)
    gen = torch.Generator().manual_seed(seed)
    total = {name: prior_term(chain, x0).double() for name in VARIANCES}
    for step in range(1, num_steps + 1):
        t = torch.full((len(x0),), step)
        xt = chain.q_sample(x0, t, torch.randn(x0.shape, generator=gen))
        eps, v = eps_fn(xt, t)
        mean = chain.model_mean(xt, t, eps)
        for name in VARIANCES:
            var = chain.interpolated_variance(t, v) if name == "learned" else chain.model_variance(t, x0, name)
            term = gaussian_nll(x0, mean, var) if step == 1 else term_from_prediction(chain, x0, xt, t, mean, var)
            total[name] = total[name] + term.double()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixture", default="two_modes", choices=list(MIXTURES))
    parser.add_argument("--steps", type=int, default=3000, help="training steps")
    parser.add_argument("--train-chain", type=int, default=1000, help="N of the training chain")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--chains", type=int, nargs="+", default=[25, 50, 100, 1000], help="N of the bound")
    parser.add_argument("--n", type=int, default=2000, help="test points")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if smoke_active():  # SCORELAB_SMOKE=1: the same table, small (scorelab.cli.smoke)
        old = dict(vars(args))
        args.steps, args.chains, args.n = smoke_cap(args.steps, 20), smoke_cap(args.chains, 2), smoke_cap(args.n, 64)
        changed = [f"{k} {old[k]} -> {v}" for k, v in vars(args).items() if v != old[k]]
        print(f"SCORELAB_SMOKE=1: a smoke run, its numbers mean nothing ({', '.join(changed) or 'nothing to cap'})",
              flush=True)
    torch.set_num_threads(1)
    mixture, sde = MIXTURES[args.mixture](), VPSDE()
    start = time.perf_counter()
    model = train(mixture, sde, args.steps, args.train_chain, args.batch, args.lr, args.seed)
    print(f"trained in {time.perf_counter() - start:.0f} s")
    x0 = mixture.sample(args.n, generator=torch.Generator().manual_seed(args.seed + 2))
    true_nll = -mixture.log_prob(x0.double())
    print(f"true NLL of the {args.n} test points: {float(true_nll.mean()):.4f} nats/point")
    print("| N | learned | beta | beta_tilde | learned − true NLL |")
    print("| --- | --- | --- | --- | --- |")
    for n in args.chains:
        res = bounds(model, sde, x0, n, args.seed + 3)

        def fmt(v: torch.Tensor) -> str:
            return f"{float(v.mean()):.4f} ± {float(v.std() / math.sqrt(len(v))):.4f}"

        gap = res["learned"] - true_nll
        print(f"| {n} | {fmt(res['learned'])} | {fmt(res['beta'])} | {fmt(res['beta_tilde'])} | {fmt(gap)} |",
              flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
