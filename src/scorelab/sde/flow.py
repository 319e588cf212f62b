"""The linear path of flow matching and rectified flow: ``x_t = (1 - t) x0 + t z`` (Lipman et al. 2023; Liu et al.
2023), written as a member of the SDE family."""
from __future__ import annotations

import torch

from ..core.tensors import append_dims
from .base import SDE


class RectifiedFlowSDE(SDE):
    """The linear interpolation path ``a(t) = 1 - t``, ``s(t) = t`` as a forward SDE.

    A linear SDE with kernel ``N(a x0, s^2 I)`` has drift ``f(t) x`` with ``f = a'/a`` and diffusion
    ``g^2 = d[s^2]/dt - 2 f s^2``: here ``f = -1 / (1 - t)`` and ``g^2 = 2 t / (1 - t)``. The probability-flow velocity
    ``f x - g^2 score / 2`` is the flow-matching velocity ``E[z - x0 | x_t]``, so every sampler, the likelihood and
    guidance work unchanged. At ``t = 1`` the data are gone (``a = 0``) and ``f`` is infinite, so the process stops at
    ``T < 1``, where ``sigma(T) = T / (1 - T)`` (99 at the default, between EDM's 80 and VP's 152); the prior is
    ``N(0, T^2 I)``, and it is off by ``a(T) x0 = 0.01 x0`` (VP's linear schedule ends at ``a(1) x0 = 0.0067 x0``),
    negligible against the prior's standard deviation 0.99.

    Args:
        T: the end time, in ``(0, 1)``.
    """

    def __init__(self, T: float = 0.99):
        if isinstance(T, bool) or not isinstance(T, (int, float)) or not 0.0 < T < 1.0:
            raise ValueError(f"T must lie in (0, 1) (a(1) = 0: the data are gone at t = 1), got {T!r}")
        self.T = float(T)

    @property
    def prior_std(self) -> float:
        return self.T

    def mean_coeff(self, t):
        """``a(t) = 1 - t``."""
        return 1.0 - t

    def marginal_std(self, t):
        """``s(t) = t``."""
        return t.clone()

    def sde(self, x, t):
        """``f(t) x = -x / (1 - t)``, ``g(t) = sqrt(2 t / (1 - t))``."""
        return -x / append_dims(1.0 - t, x.ndim), torch.sqrt(2.0 * t / (1.0 - t))

    def sigma(self, t):
        """``sigma(t) = t / (1 - t)``."""
        return t / (1.0 - t)

    def t_of_sigma(self, sigma):
        """Closed form: ``t = sigma / (1 + sigma)``."""
        sigma = torch.as_tensor(sigma)
        return sigma / (1.0 + sigma)
