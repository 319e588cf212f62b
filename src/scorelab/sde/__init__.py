"""Forward SDEs of score-based generative modelling (Song et al. 2021, arXiv 2011.13456, Sec. 3.4).

Every SDE here is linear in ``x``, so its transition kernel is Gaussian, ``p_0t(x | x0) = N(x; a(t) x0, s(t)^2 I)``
(docs/math.md §2). :class:`SDE` is the contract (``base``); the variance-preserving family, of any ``beta(t)``, and
sub-VP are in ``vp``; the variance-exploding family (SMLD's and EDM's ``sigma(t) = t``) in ``ve``; the
linear flow-matching path in ``flow``.
"""
from .base import SDE, ReverseSDE, ScoreFn
from .flow import RectifiedFlowSDE
from .ve import EDMSDE, VESDE, VEFamily
from .vp import VPSDE, CosineVPSDE, LinearBeta, SubVPSDE, VPFamily, ddpm_alphas_cumprod

__all__ = ["SDE", "CosineVPSDE", "EDMSDE", "LinearBeta", "RectifiedFlowSDE", "ReverseSDE",
           "ScoreFn", "SubVPSDE", "VEFamily", "VESDE", "VPFamily", "VPSDE", "ddpm_alphas_cumprod"]
