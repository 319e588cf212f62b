"""Bits/dim (images) or NLL in nats (points) of a fixed validation subset during training, through the
probability-flow ODE with the EMA weights (Song et al. 2021, Sec. 4.3 and App. D.2)."""
from __future__ import annotations

import math

import lightning as L
import torch

from ..core.console import Progress, cost_line, say
from ..core.distributed import run_and_gather
from ..metrics.likelihood import batch_nll
from .callbacks import PeriodicEvaluation


class LikelihoodCallback(PeriodicEvaluation):
    """Every ``every_n_epochs`` epochs (and at the end), the mean NLL of the first ``n`` validation examples.

    Logged as ``bpd@<n>`` for images (uniform dequantisation, Hutchinson divergence) and ``nll@<n>`` in nats for
    points (exact divergence up to 16 dimensions). Example ``i`` draws its dequantisation noise and probe from
    seed ``(seed, 0, i)``, as ``likelihood.py seed=<seed>`` draws it (``scorelab.metrics.likelihood.batch_nll``), so
    the curve measures the model, not the noise. Under DDP each rank solves its share alone
    (adaptive solvers take different step counts per rank, so no collective can run during the solves) and the
    values are gathered once at the end.

    Args:
        n: validation examples used.
        every_n_epochs, every_n_steps, at_end: when to evaluate (see :class:`PeriodicEvaluation`).
        batch_size: examples per ODE solve.
        method, rtol, atol: the adaptive solver (the paper: RK45, 1e-5).
        eps: start time of the integration (1e-5 as in the paper).
        seed: first per-example seed.
    """

    def __init__(self, n: int = 256, every_n_epochs: int = 1, every_n_steps: int = 0, at_end: bool = True,
                 batch_size: int = 128, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                 eps: float = 1e-5, seed: int = 0):
        super().__init__(every_n_epochs, every_n_steps, at_end)
        if n < 1 or batch_size < 1:
            raise ValueError(f"LikelihoodCallback needs n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
        self.n, self.batch_size = n, batch_size
        self.method, self.rtol, self.atol, self.eps, self.seed = method, rtol, atol, eps, seed

    def _examples(self, trainer: L.Trainer) -> tuple[torch.Tensor, bool]:
        dm = trainer.datamodule
        if dm.domain.kind == "images":
            return dm.images("val")[0][: self.n], True
        dm.setup("fit")
        if dm.val_set is None:
            raise ValueError("LikelihoodCallback needs validation data (data.n_val > 0)")
        return dm.points("val")[: self.n], False

    def measure(self, trainer: L.Trainer, pl_module) -> dict[str, float]:
        """Solve this rank's share, then gather every rank's values (the one collective); the mean NLL."""
        x_all, images = self._examples(trainer)
        mine = list(range(trainer.global_rank, len(x_all), trainer.world_size))
        if trainer.is_global_zero and not self.history:  # once: what each evaluation costs, and how to stop it
            say(cost_line(f"likelihood callback ({'bpd' if images else 'nll'}@{len(x_all)})",
                          f"{len(x_all)} validation examples through the adaptive {self.method} ODE solver (rtol "
                          f"{self.rtol:g}) in batches of {self.batch_size} per evaluation (every_n_epochs="
                          f"{self.every_n_epochs}, every_n_steps={self.every_n_steps}, at_end={self.at_end})",
                          off="callbacks/likelihood=null, or fewer: callbacks.likelihood.n=..."))
        every = [v for part in run_and_gather(self._solve_share, trainer, pl_module, x_all, mine, images) for v in part]
        return {f"{'bpd' if images else 'nll'}@{len(every)}": float(sum(every) / len(every))}

    def _solve_share(self, trainer, pl_module, x_all: torch.Tensor, mine: list[int], images: bool) -> list[float]:
        model = pl_module.score_fn(use_ema=True)
        was_training = model.training
        model.eval()
        values = []
        bar = Progress(len(mine), f"{'bpd' if images else 'nll'}@{len(x_all)} at step {trainer.global_step}",
                       "example", trainer.is_global_zero and trainer.progress_bar_callback is not None, every=25)
        try:
            for start in range(0, len(mine), self.batch_size):
                index = mine[start:start + self.batch_size]
                values += self._solve(model, pl_module, x_all[index], index, images, trainer)
                bar.update(len(index))
        finally:
            bar.close()
            model.train(was_training)
        return values

    def _solve(self, model, pl_module, x: torch.Tensor, index: list[int], images: bool, trainer) -> list[float]:
        data_range = tuple(trainer.datamodule.data_range) if images else None
        values, _ = batch_nll(model, pl_module.sde, x, index, seed=self.seed, repeat=0, data_range=data_range,
                              stochastic=True, divergence="auto", eps=self.eps, method=self.method, rtol=self.rtol,
                              atol=self.atol, device=pl_module.device, dtype=next(model.parameters()).dtype)
        values = values.tolist()
        if not all(math.isfinite(v) for v in values):
            raise FloatingPointError(f"non-finite likelihood at step {trainer.global_step}")
        return values
