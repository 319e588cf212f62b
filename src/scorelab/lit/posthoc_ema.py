"""Post-hoc EMA (Karras et al. 2024, "Analyzing and improving the training dynamics of diffusion models", Sec. 3).

Training keeps power-function averages of the weights for two profiles and writes them to disk every few steps; after
training, the average of any other length is rebuilt from those snapshots by least squares, so the EMA length is
chosen by looking at samples, not guessed before a run.

A power-function EMA with exponent ``gamma`` updates ``theta_hat <- beta_t theta_hat + (1 - beta_t) theta_t`` at step
``t = 1, 2, ...`` with ``beta_t = (1 - 1/t)^(gamma + 1)`` (their Eq. 3). Unrolled, the average at step ``t`` weighs
the weights of step ``tau <= t`` by exactly

    w(tau; gamma, t) = (tau^(gamma+1) - (tau - 1)^(gamma+1)) / t^(gamma+1),

the discrete form of their ``p(tau) ∝ tau^gamma``. Its width relative to its length, ``sigma_rel = sqrt((gamma +
1) / ((gamma + 2)^2 (gamma + 3)))`` (their Eq. 4), names a profile. A snapshot holds ``sum_tau w_i(tau) theta_tau``;
a combination ``sum_i x_i`` of snapshots weighs ``theta_tau`` by ``sum_i x_i w_i(tau)``. The reconstruction picks the
``x`` whose kernel is closest (least squares over ``tau``) to the target profile's, computed here with the exact
discrete kernels, and returns ``sum_i x_i snapshot_i``. When the target is one of the stored profiles at a snapshot's
step, the result is that snapshot.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from ..core.io import atomic_path

SNAPSHOT_PATTERN = re.compile(r"^ema-(\d{9})\.pt$")


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent ``gamma`` of a power-function EMA of relative width ``sigma_rel`` (the largest real root of
    ``gamma^3 + 7 gamma^2 + (16 - 1/s^2) gamma + 12 - 1/s^2 = 0``, Eq. 4 of Karras et al. 2024 rearranged)."""
    if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, (int, float)) or not 0.0 < sigma_rel < 0.2886:
        raise ValueError(f"sigma_rel must lie in (0, 0.2886) (gamma >= 0), got {sigma_rel!r}")
    t = 1.0 / sigma_rel**2
    roots = np.roots([1.0, 7.0, 16.0 - t, 12.0 - t])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def gamma_to_sigma_rel(gamma: float) -> float:
    """``sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))`` (Karras et al. 2024, Eq. 4)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def power_kernel(gamma: float, t: int, length: int) -> torch.Tensor:
    """``w(tau; gamma, t)`` for ``tau = 1..length`` (zero beyond ``t``), float64 ``[length]``: the weight the power
    EMA at step ``t`` gives the weights of step ``tau``; it sums to 1."""
    tau = torch.arange(1, length + 1, dtype=torch.float64)
    w = (tau / t) ** (gamma + 1) - ((tau - 1) / t) ** (gamma + 1)
    return torch.where(tau <= t, w, torch.zeros_like(w))


def reconstruction_coefficients(snapshots: Sequence[tuple[float, int]], gamma: float, t: int) -> np.ndarray:
    """The least-squares ``x`` with ``sum_i x_i w(.; gamma_i, t_i) ≈ w(.; gamma, t)`` over every step.

    Args:
        snapshots: ``(gamma_i, t_i)`` of each stored average.
        gamma, t: the target profile's exponent and step.

    Returns:
        ``x`` of shape ``[len(snapshots)]`` (float64).
    """
    length = max([t, *(s for _, s in snapshots)])
    gram = np.zeros((len(snapshots), len(snapshots)))
    rhs = np.zeros(len(snapshots))
    chunk = 262_144
    for start in range(0, length, chunk):  # the kernels of a long run do not need to fit in memory at once
        stop = min(length, start + chunk)
        basis = torch.stack([power_kernel(g, s, stop)[start:] for g, s in snapshots]).numpy()
        target = power_kernel(gamma, t, stop)[start:].numpy()
        gram += basis @ basis.T
        rhs += basis @ target
    return np.linalg.lstsq(gram, rhs, rcond=None)[0]


class PowerEMA(nn.Module):
    """Power-function averages of a module's floating-point parameters and buffers, one per ``gamma``.

    Args:
        model: the module to average.
        gammas: the exponents (from :func:`sigma_rel_to_gamma`).
    """

    def __init__(self, model: nn.Module, gammas: Sequence[float]):
        super().__init__()
        self.gammas = [float(g) for g in gammas]
        self.names = [n for n, v in model.state_dict().items() if v.is_floating_point()]
        self.averages = [{n: v.detach().clone() for n, v in model.state_dict().items() if n in self.names}
                         for _ in self.gammas]
        self.steps = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step: ``avg <- beta avg + (1 - beta) theta`` with ``beta = (1 - 1/t)^(gamma + 1)``."""
        self.steps += 1
        state = model.state_dict()
        for gamma, average in zip(self.gammas, self.averages, strict=True):
            beta = (1.0 - 1.0 / self.steps) ** (gamma + 1)
            torch._foreach_lerp_([average[n] for n in self.names], [state[n].detach() for n in self.names],
                                 1.0 - beta)

    def snapshot(self) -> dict[str, Any]:
        """What a snapshot file holds: the step, the profiles and a CPU copy of every average."""
        return {"step": self.steps, "gammas": list(self.gammas),
                "sigma_rels": [gamma_to_sigma_rel(g) for g in self.gammas],
                "averages": [{n: v.detach().cpu().clone() for n, v in a.items()} for a in self.averages]}

    def load_snapshot(self, state: dict[str, Any]) -> None:
        if [float(g) for g in state["gammas"]] != self.gammas:
            raise ValueError(f"the stored post-hoc EMA profiles (gammas {state['gammas']}) differ from this run's "
                             f"{self.gammas}")
        self.steps = int(state["step"])
        for average, stored in zip(self.averages, state["averages"], strict=True):
            for n in self.names:
                average[n].copy_(stored[n])


class PostHocEMA(L.Callback):
    """Keep power-function EMAs of the score model for two (or more) ``sigma_rel`` profiles and write them every
    ``every_n_steps`` optimizer steps (and at the end of training) to ``<run>/ema_snapshots/ema-<step>.pt``.

    ``python ema.py ckpt_path=<run> sigma_rel=...`` rebuilds any other profile from those files (Karras et al. 2024).
    The averages live in the training checkpoints too, so a resumed run continues them exactly. Only rank 0 writes.

    Args:
        sigma_rels: the stored profiles' relative widths (EDM2 keeps 0.05 and 0.10).
        every_n_steps: optimizer steps between snapshots (> 0).
        dirpath: where the snapshots go (None: ``ema_snapshots`` in the run folder).
    """

    def __init__(self, sigma_rels: Sequence[float] = (0.05, 0.10), every_n_steps: int = 200,
                 dirpath: str | None = None):
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive integer, got {every_n_steps!r}")
        if len(sigma_rels) < 1:
            raise ValueError("sigma_rels needs at least one profile (EDM2 keeps two: 0.05 and 0.10)")
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.every_n_steps, self.dirpath = every_n_steps, dirpath
        self.ema: PowerEMA | None = None
        self._pending: dict[str, Any] | None = None
        self._last_step = -1

    def _directory(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "ema_snapshots"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.ema is None:
            self.ema = PowerEMA(pl_module.score_model, self.gammas)
        if self._pending is not None:
            self.ema.load_snapshot(self._pending)
            self._pending = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step or getattr(pl_module, "_skip_update", False):
            return  # no optimizer step happened (gradient accumulation) or it was skipped (non-finite)
        self._last_step = step
        self.ema.update(pl_module.score_model)
        if self.ema.steps % self.every_n_steps == 0:
            self._write(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.ema is not None and self.ema.steps and not (self._directory(trainer) /
                                                             f"ema-{self.ema.steps:09d}.pt").exists():
            self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        if trainer.global_rank != 0:
            return
        directory = self._directory(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / f"ema-{self.ema.steps:09d}.pt") as tmp:
            torch.save(self.ema.snapshot(), tmp)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.ema is None else self.ema.snapshot()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.ema is not None:
            self.ema.load_snapshot(state_dict)
        else:
            self._pending = state_dict


def list_snapshots(directory: str | Path) -> list[Path]:
    """The snapshot files of a run, by step."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if SNAPSHOT_PATTERN.match(p.name))


def reconstruct(snapshots: Sequence[dict[str, Any]], sigma_rel: float, step: int | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights of a power EMA of width ``sigma_rel`` at ``step`` (default: the last snapshot's), rebuilt from
    loaded snapshot files.

    Returns:
        ``(averaged floating-point state, info)`` with info's ``coefficients``, ``residual`` (the relative L2 distance
        between the rebuilt and the target kernels: 0 is exact) and ``gamma``.
    """
    if not snapshots:
        raise ValueError("no post-hoc EMA snapshots to rebuild from")
    gamma = sigma_rel_to_gamma(sigma_rel)
    last = max(int(s["step"]) for s in snapshots)
    step = last if step is None else int(step)
    if not 0 < step <= last:
        raise ValueError(f"step must lie in [1, {last}] (the last snapshot's step), got {step}")
    basis = [(float(g), int(s["step"])) for s in snapshots for g in s["gammas"]]
    tensors = [a for s in snapshots for a in s["averages"]]
    x = reconstruction_coefficients(basis, gamma, step)
    length = max(step, last)
    kernel = sum(float(c) * power_kernel(g, t, length) for c, (g, t) in zip(x, basis, strict=True))
    target = power_kernel(gamma, step, length)
    residual = float((kernel - target).norm() / target.norm())
    state = {}
    for name in tensors[0]:
        acc = sum(float(c) * a[name].to(torch.float64) for c, a in zip(x, tensors, strict=True))
        state[name] = acc.to(tensors[0][name].dtype)
    return state, {"coefficients": x.tolist(), "residual": residual, "gamma": gamma, "step": step}
