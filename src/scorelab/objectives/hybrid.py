"""The hybrid objective of improved DDPM (Nichol & Dhariwal 2021, Sec. 3.1): ``L_hybrid = L_simple + lambda L_vlb``
with a learned reverse variance.

The network outputs, besides the noise prediction ``eps_theta``, one more value per dimension ``v`` (a
:class:`~scorelab.models.ScoreModel` with ``learn_variance``), and the reverse step of the discrete chain is

    p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), Sigma_theta(x_t, t)),
    Sigma_theta = exp(v log beta_t + (1 - v) log beta~_t)                      (Nichol & Dhariwal 2021, Eq. 15),

an interpolation in the log domain between the two fixed choices of Ho et al. 2020 (``v = 1``: ``beta_t``;
``v = 0``: ``beta~_t``; the network's raw output ``r`` is mapped to ``v = (r + 1) / 2``). ``L_simple`` (Ho et al.
2020, Eq. 14) cannot train ``Sigma_theta``; the bound can. Improved DDPM adds ``lambda L_vlb`` with ``lambda = 0.001``
and a stop-gradient on the mean inside ``L_vlb``, so that ``L_simple`` alone drives the mean and ``L_vlb`` only the
variance (Sec. 3.1).

The chain is :mod:`scorelab.objectives.vlb`'s: ``alpha_bar_1..N`` of the SDE (``sde.ddpm_alphas_cumprod``: VP's
linear chain or the cosine one), the network queried at the SDE times with the chain's noise levels
(:func:`scorelab.objectives.vlb.chain_times`),
so ``likelihood.py method=vlb`` evaluates exactly the terms trained here. ``v`` does not depend on ``N``: a chain of
fewer steps uses the same ``v`` between its own ``beta_t`` and ``beta~_t`` (the respacing of Nichol & Dhariwal 2021,
Sec. 4).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..core.rng import sample_noise
from ..core.tensors import batch_mean, batch_sum
from ..sde import SDE
from .base import Objective
from .vlb import DDPMChain, term_from_prediction

ModelFn = Callable[..., torch.Tensor]
DECODERS = ("discretized", "gaussian")


def gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``-log N(x0; mean, var)`` summed over dimensions, ``[B]`` nats: the continuous decoder ``L_0``."""
    var = var.expand_as(x0)
    return batch_sum(0.5 * (torch.log(2 * math.pi * var) + (x0 - mean) ** 2 / var))


class HybridLoss(Objective):
    """``L_hybrid = L_simple + lambda L_vlb`` of improved DDPM (Nichol & Dhariwal 2021, Sec. 3.1), per example:

    * ``L_simple = mean_d (eps - eps_theta(x_t, t))^2`` (Ho et al. 2020, Eq. 14), ``t`` uniform in ``1..N``,
      ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``; ``eps_theta = -sqrt(1 - alpha_bar_t) s_theta``
      at the SDE time of the chain's noise level (DSM with ``lambda(t) = s(t)^2`` at the chain's times);
    * ``L_vlb = sum_t L_{t-1}`` in bits per dimension (nats / (D ln 2)), estimated from the same ``t`` as
      ``N L_{t-1}`` (``L_0``, the discretised decoder of 8-bit data, at ``t = 1``), with the reverse mean built from
      ``stop_gradient(eps_theta)`` and the learned variance
      (:meth:`~scorelab.objectives.vlb.DDPMChain.interpolated_variance`).
      ``lambda N L_{t-1}`` is the reference code's ``vlb * num_timesteps / 1000`` with ``lambda = 0.001``.

    ``L_N`` does not depend on the model and is left out. The model must have a learned variance
    (``model.learn_variance=true``).

    Args:
        sde: an SDE with a discrete DDPM chain (VP: ``sde=vp`` or ``sde=vp_cosine``).
        num_steps: ``N``, the steps of the training chain (1000 in Ho et al.; 4000 in Nichol & Dhariwal).
        vlb_weight: ``lambda`` (0.001 in the paper).
        data_range: the interval of the 8-bit grid (the decoder ``L_0``).
        decoder: ``L_0`` at ``t = 1``: ``"discretized"`` (8-bit data, Ho et al. 2020, Eq. 13, as the paper) or
            ``"gaussian"`` (continuous data such as the toy mixtures: ``-log N(x_0; mu_theta(x_1, 1), Sigma_theta)``, a
            density, so the bound is then one on ``-log p_theta(x_0)`` of continuous data).
        reduce_mean: per dimension, as the paper (``True``: the mean squared error and bits/dim), or summed over
            dimensions (``False``: the squared error and bits per example); the ratio of the two terms is the same.
    """

    def __init__(self, sde: SDE, num_steps: int = 1000, vlb_weight: float = 0.001,
                 data_range: tuple[float, float] = (-1.0, 1.0), decoder: str = "discretized", reduce_mean: bool = True):
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}")
        if not (isinstance(vlb_weight, (int, float)) and math.isfinite(vlb_weight) and vlb_weight >= 0):
            raise ValueError(f"vlb_weight must be a finite number >= 0, got {vlb_weight!r}")
        lo, hi = (float(v) for v in data_range)
        if not lo < hi:
            raise ValueError(f"data_range must be increasing, got {list(data_range)}")
        alphas = sde.ddpm_alphas_cumprod(num_steps)
        if alphas is None:
            raise ValueError(f"the hybrid loss needs an SDE that is the limit of a discrete DDPM chain (VP: sde=vp or "
                             f"sde=vp_cosine), got {type(sde).__name__}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if not isinstance(reduce_mean, bool):
            raise ValueError(f"reduce_mean must be true or false, got {reduce_mean!r}")
        self.num_steps, self.vlb_weight, self.data_range = num_steps, float(vlb_weight), (lo, hi)
        self.reduce_mean, self.decoder = reduce_mean, decoder
        self.sde, self.chain = sde, DDPMChain(alphas)

    def check_model(self, score_model) -> None:
        """Refuse a model without a learned variance (called when the training objects are built)."""
        if not getattr(score_model, "learn_variance", False):
            raise ValueError("loss=hybrid trains a learned reverse variance: pass model.learn_variance=true")

    def terms(self, score_fn: ModelFn, x0: torch.Tensor, generator=None,
              t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L_simple [B], L_{t-1} [B] in bits/dim)`` at one ``x_t`` per example (summed over dimensions: squared
        error and bits, with ``reduce_mean=False``); ``t [B]`` (long, ``1..N``) is
        drawn uniformly unless given. The second term's gradient reaches only the variance output."""
        if t is None:
            t = self.chain.draw(x0.shape[0], x0, generator)
        noise = sample_noise(x0.shape, x0, generator)
        xt = self.chain.q_sample(x0, t, noise)
        eps, v = self.chain.score_eps(score_fn, self.sde, xt, t, with_variance=True)
        simple = (batch_mean if self.reduce_mean else batch_sum)((eps - noise) ** 2)
        mean = self.chain.model_mean(xt, t, eps.detach())  # stop-gradient: L_vlb trains the variance only
        var = self.chain.interpolated_variance(t, v)
        nats = term_from_prediction(self.chain, x0, xt, t, mean, var, self.data_range)
        if self.decoder == "gaussian":
            nats = torch.where(t == 1, gaussian_nll(x0, mean, var).to(nats.dtype), nats)
        return simple, self.chain.bits_per_dim(nats, x0[0].numel() if self.reduce_mean else 1)

    def per_example(self, score_fn: ModelFn, x0: torch.Tensor, generator=None,
                    t: torch.Tensor | None = None) -> torch.Tensor:
        """``L_simple + lambda N L_{t-1}`` per example ``[B]`` (see :meth:`terms`)."""
        simple, vlb = self.terms(score_fn, x0, generator, t)
        return simple + self.vlb_weight * self.num_steps * vlb
