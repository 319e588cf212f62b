"""Exponential-integrator solvers of the probability-flow ODE in log-SNR, with data prediction.

DPM-Solver++ (Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models",
arXiv 2211.01095): 2M and 3M multistep (Alg. 2 and its third-order extension) and 2S single-step (Alg. 1).
UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models",
arXiv 2302.04867, Alg. 2 and 3): the same multistep predictor plus a corrector that reuses the next step's
evaluation, raising the order by one at no extra NFE.

All work on ``y = x / a`` with ``dy/dlambda = D - y`` (see :mod:`~scorelab.sampling.sigma_space`).
"""
from __future__ import annotations

import math

import torch

from .base import noise_like
from .grids import TimeGrid
from .sigma_space import SigmaSampler, phi, taylor_weights

VARIANTS = ("2m", "3m", "2s", "2m_sde")


def multistep_update(y: torch.Tensor, lambdas: list[float], ds: list[torch.Tensor], lambda_next: float,
                     first_weight=None) -> torch.Tensor:
    """One exponential multistep step ``y(lambda_0) -> y(lambda_next)`` from denoiser values at several log-SNRs.

    ``y' = e^{-h} y + phi_1(h) D_0 + sum_k c_k (D_k - D_0)`` with ``h = lambda_next - lambda_0``, where ``lambda_0`` and
    ``D_0`` are the *last* entries of ``lambdas``/``ds`` (the current point) and the ``c_k`` integrate the
    interpolating polynomial exactly (:func:`taylor_weights`; Lu et al. 2022b, Eq. 9). Other entries may lie before
    ``lambda_0`` (Adams–Bashforth: a predictor) or at ``lambda_next`` (Adams–Moulton: UniPC's corrector).

    Args:
        y: state ``[B, ...]`` at ``lambda_0``.
        lambdas: log-SNRs of the known denoiser values, the current point last.
        ds: the denoiser values ``[B, ...]`` at ``lambdas``.
        lambda_next: the log-SNR to step to (``> lambda_0``).
        first_weight: optional ``(h, u) -> c`` replacing the exact weight when exactly one other point is used
            (the published second-order shortcuts, e.g. DPM-Solver++(2M)'s ``phi_1(h) h / (2 u)``).

    Returns:
        ``y`` at ``lambda_next``, ``[B, ...]``.
    """
    lambda_0, d_0 = lambdas[-1], ds[-1]
    h = lambda_next - lambda_0
    out = math.exp(-h) * y + phi(1, h) * d_0
    offsets = [lam - lambda_0 for lam in lambdas[:-1]]
    if len(offsets) == 1 and first_weight is not None:
        weights = [first_weight(h, offsets[0])]
    else:
        weights = taylor_weights(h, offsets)
    for c, d in zip(weights, ds[:-1], strict=True):
        out = out + c * (d - d_0)
    return out


def _dpm_2m_weight(h: float, u: float) -> float:
    """DPM-Solver++(2M), Lu et al. 2022b Alg. 2: ``D = (1 + 1/(2r)) D_0 - 1/(2r) D_-1`` with ``r = -u / h``."""
    return phi(1, h) * h / (2.0 * u)


class DPMSolverPP(SigmaSampler):
    """DPM-Solver++ with data prediction in log-SNR (Lu et al. 2022b).

    * ``"2m"``: second-order multistep (Alg. 2), 1 NFE per step.
    * ``"3m"``: third-order multistep (the same expansion to ``phi_3``, as in the authors' code), 1 NFE per step.
    * ``"2s"``: second-order single-step with the midpoint in log-SNR (Alg. 1, ``r = 1/2``), 2 NFE per step.
    * ``"2m_sde"``: SDE-DPM-Solver++(2M) (Lu et al. 2022b, Sec. 4 and App. B), the second-order multistep solver of
      the *reverse SDE* in data prediction, 1 NFE per step. With ``h = lambda' - lambda`` a step is::

          y' = e^{-2h} y + (1 - e^{-2h}) (D_0 + (D_0 - D_-1) / (2 r)) + sigma' sqrt(1 - e^{-2h}) z,   r = h_-1 / h

      (the exact integral of ``2 e^{-2(lambda' - l)} D(l)`` for ``D`` linear through its last two values,
      ``(h - (1 - e^{-2h}) / 2) (D_0 - D_-1) / h_-1``, agrees to second order but extrapolates the line over
      the long early steps: on Gaussian data its variance error was 2-8x larger below 40 steps)

      whose first-order form (no ``D_-1``) is DDIM with ``eta = 1``. Fresh noise at every step corrects the
      errors a trained network's denoiser makes, where the deterministic variants carry them to the end
      (Karras et al. 2022, Sec. 4): prefer it for trained models when 20-50 NFE are affordable.

    Multistep variants start with lower orders (no history yet) and, with ``lower_order_final``, end with them:
    step ``i`` of ``N`` uses order ``min(order, i + 1, N - i)``, so the last step is first order (DDIM). With few
    steps and a grid reaching small sigma this keeps the final large log-SNR steps stable (Lu et al. 2022b, Sec. 5).
    NFE: ``steps`` (multistep) or ``2 steps`` (2S), plus 1 with ``denoise``.

    Args:
        steps: number of steps N.
        variant: ``"2m"``, ``"3m"`` or ``"2s"``.
        lower_order_final: lower the order on the last steps (multistep only).
        eps, grid, denoise: see :class:`~scorelab.sampling.sigma_space.SigmaSampler`.
    """

    def __init__(self, steps: int = 10, variant: str = "3m", eps: float = 1e-3, grid: str | TimeGrid = "logsnr",
                 denoise: bool = True, lower_order_final: bool = True):
        super().__init__(steps, eps, grid, denoise)
        if variant not in VARIANTS:
            raise ValueError(f"unknown DPM-Solver++ variant {variant!r}: choose one of {VARIANTS}")
        self.variant, self.lower_order_final = variant, bool(lower_order_final)

    def solve(self, denoiser, path, y, generator, report):
        if self.variant == "2s":
            return self._single_step(denoiser, path, y, report)
        if self.variant == "2m_sde":
            return self._multistep_sde(denoiser, path, y, generator, report)
        order = int(self.variant[0])
        lambdas, ds = [], []
        for i in range(path.steps):
            lambdas, ds = (lambdas + [path.lambdas[i]])[-order:], (ds + [denoiser(y, path.ts[i])])[-order:]
            k = min(order, len(ds), path.steps - i if self.lower_order_final else order)
            y = multistep_update(y, lambdas[-k:], ds[-k:], path.lambdas[i + 1], first_weight=_dpm_2m_weight)
            y = report(i, y)
        return y

    def _single_step(self, denoiser, path, y, report, r: float = 0.5):
        t_of_sigma = denoiser.sde.t_of_sigma
        for i in range(path.steps):
            lambda_0, h = path.lambdas[i], path.lambdas[i + 1] - path.lambdas[i]
            t_mid = float(t_of_sigma(torch.tensor(math.exp(-(lambda_0 + r * h)), dtype=torch.float64)))
            d_0 = denoiser(y, path.ts[i])
            u = math.exp(-r * h) * y + phi(1, r * h) * d_0
            d_mid = denoiser(u, t_mid)
            y = math.exp(-h) * y + phi(1, h) * ((1.0 - 0.5 / r) * d_0 + (0.5 / r) * d_mid)
            y = report(i, y)
        return y

    def _multistep_sde(self, denoiser, path, y, generator, report):
        d_prev, h_prev = None, None
        for i in range(path.steps):
            h = path.lambdas[i + 1] - path.lambdas[i]
            d = denoiser(y, path.ts[i])
            decay = math.exp(-2.0 * h)
            second_order = d_prev is not None and (not self.lower_order_final or i < path.steps - 1)
            d_hat = d + (0.5 * h / h_prev) * (d - d_prev) if second_order else d  # the paper's midpoint form
            y_mean = decay * y + (1.0 - decay) * d_hat
            y = y_mean + path.sigmas[i + 1] * math.sqrt(1.0 - decay) * noise_like(y, generator)
            d_prev, h_prev = d, h
            y = report(i, y, y_mean)
        return y

    def describe(self) -> str:
        name = "SDE-DPM-Solver++(2M)" if self.variant == "2m_sde" else f"DPM-Solver++({self.variant.upper()})"
        return f"{name}, {self.steps} steps"

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", variant={self.variant!r})"


class UniPCSampler(SigmaSampler):
    """UniPC with data prediction (Zhao et al. 2023, Alg. 2 and 3): UniP-p predictor, UniC corrector.

    Each step predicts with the order-``p`` multistep formula, evaluates ``D`` at the prediction (the evaluation the
    next step needs anyway), then recomputes the step with that value included: order ``p + 1`` for the same NFE.
    The last step has no corrector (its evaluation would be one NFE more); with ``denoise`` the final ``D`` is taken at
    that last prediction, as in the authors' ``denoise_to_zero``. The weights are exact polynomial integrals except for
    the paper's two shortcuts, ``rho = 1/2`` for the order-2 predictor and the order-1 corrector, scaled by
    ``B(h) = h`` (``"bh1"``) or ``B(h) = 1 - e^{-h}`` (``"bh2"``; then the order-2 predictor is DPM-Solver++(2M)).
    NFE: ``steps`` (+1 with ``denoise``).

    Args:
        steps: number of steps N.
        order: predictor order p in 1..3 (the paper recommends 3 for unconditional sampling).
        variant: ``"bh1"`` or ``"bh2"``.
        lower_order_final: step ``i`` uses order ``min(order, i + 1, N - i)``.
        eps, grid, denoise: see :class:`~scorelab.sampling.sigma_space.SigmaSampler`.
    """

    def __init__(self, steps: int = 10, order: int = 3, variant: str = "bh2", eps: float = 1e-3,
                 grid: str | TimeGrid = "logsnr", denoise: bool = True, lower_order_final: bool = True):
        super().__init__(steps, eps, grid, denoise)
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"unknown UniPC variant {variant!r}: choose bh1 or bh2")
        self.order, self.variant, self.lower_order_final = order, variant, bool(lower_order_final)

    def _b(self, h: float) -> float:
        return h if self.variant == "bh1" else phi(1, h)

    def solve(self, denoiser, path, y, generator, report):
        lambdas, ds = [path.lambdas[0]], [denoiser(y, path.ts[0])]
        for i in range(path.steps):
            k = min(self.order, len(ds), path.steps - i if self.lower_order_final else self.order)
            lam_next = path.lambdas[i + 1]
            y_pred = multistep_update(y, lambdas[-k:], ds[-k:], lam_next,
                                      first_weight=lambda h, u: self._b(h) * 0.5 * h / u)
            if i == path.steps - 1:
                y = y_pred
            else:
                d_next = denoiser(y_pred, path.ts[i + 1])
                # UniC: the same step again with D(lambda_next) as one more interpolation point; the current point
                # stays last (it is D_0 of the update), the new one joins the "other" points.
                y = multistep_update(y, lambdas[-k:-1] + [lam_next, lambdas[-1]], ds[-k:-1] + [d_next, ds[-1]],
                                     lam_next, first_weight=lambda h, u: self._b(h) * 0.5)
                lambdas, ds = (lambdas + [lam_next])[-self.order:], (ds + [d_next])[-self.order:]
            y = report(i, y)
        return y

    def describe(self) -> str:
        return f"UniPC-{self.order} ({self.variant}), {self.steps} steps"

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", order={self.order}, variant={self.variant!r})"
