"""Training objectives: continuous-time denoising score matching and DDPM's discrete L_simple."""
from __future__ import annotations

from collections.abc import Callable

import torch

from .sde import SDE, ddpm_alphas_cumprod
from .utils import ShardedGenerator, append_dims, batch_mean, batch_sum, sample_noise

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
WEIGHTINGS = ("sigma2", "g2", "none")


class DSMLoss:
    """Denoising score matching (Vincent 2011; Song et al. 2021, Eq. 7; docs/math.md §3).

    ``L = E_t lambda(t) E_{x0, z} || s_theta(a(t) x0 + s(t) z, t) + z / s(t) ||^2`` with ``t ~ U(eps, T)``.

    Args:
        sde: the forward SDE.
        weighting: ``lambda(t)``: ``"sigma2"`` (``s(t)^2``, noise prediction, default), ``"g2"``
            (``g(t)^2``, likelihood weighting, Song et al. 2021b) or ``"none"`` (1).
        reduce_mean: average over data dimensions (``True``) or sum them.
        eps: smallest training time (1e-5 in the paper) avoiding the singularity of ``z / s(t)`` at 0.
    """

    def __init__(self, sde: SDE, weighting: str = "sigma2", reduce_mean: bool = True, eps: float = 1e-5):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if not 0.0 < eps < sde.T:
            raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
        self.sde, self.weighting, self.reduce_mean, self.eps = sde, weighting, reduce_mean, eps

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda(t)``, shape ``[B]``."""
        if self.weighting == "sigma2":
            return self.sde.marginal_std(t) ** 2
        if self.weighting == "g2":
            return self.sde.sde(torch.zeros_like(t)[:, None], t)[1] ** 2
        return torch.ones_like(t)

    def per_example(self, score_fn: ScoreFn, x0: torch.Tensor, generator: torch.Generator | None = None,
                    t: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example loss ``[B]`` for data ``x0 [B, ...]``; ``t [B]`` is drawn from ``U(eps, T)`` unless given."""
        b = x0.shape[0]
        if t is None:
            t = sample_noise((b,), x0, generator, kind="uniform") * (self.sde.T - self.eps) + self.eps
        z = sample_noise(x0.shape, x0, generator)
        mean, std = self.sde.marginal_prob(x0, t)
        std_b = append_dims(std, x0.ndim)
        score = score_fn(mean + std_b * z, t)
        reduce = batch_mean if self.reduce_mean else batch_sum
        if self.weighting == "sigma2":  # || s score + z ||^2 avoids dividing by a tiny s(t)
            return reduce((std_b * score + z) ** 2)
        return self.weight(t) * reduce((score + z / std_b) ** 2)

    def __call__(self, score_fn: ScoreFn, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scalar loss: the batch mean of :meth:`per_example`."""
        return self.per_example(score_fn, x0, generator).mean()


class DDPMLoss:
    """DDPM's discrete ``L_simple = E_i E || eps - eps_theta(x_i, i) ||^2`` (Ho et al. 2020, Eq. 14).

    The model is queried at ``t_i = (i + 1) / N`` and its score turned into a noise estimate with the discrete
    ``sqrt(1 - alpha_bar_i)``, so the loss reads ``|| sqrt(1 - alpha_bar_i) s_theta + eps ||^2``.

    Args:
        sde: optional SDE whose DDPM chain (:meth:`~scorelab.sde.SDE.ddpm_alphas_cumprod`: VP's linear one or
            the cosine one) overrides the two arguments below.
        num_steps: N, the number of discrete noise levels (1000 in DDPM).
        beta_min, beta_max: the VP schedule end points (``N * beta_1`` and ``N * beta_N``).
        reduce_mean: average (``True``) or sum over data dimensions.
    """

    def __init__(self, sde: SDE | None = None, num_steps: int = 1000, beta_min: float = 0.1, beta_max: float = 20.0,
                 reduce_mean: bool = True):
        if sde is None:
            alphas_cumprod = ddpm_alphas_cumprod(num_steps, beta_min, beta_max)
        else:
            alphas_cumprod = sde.ddpm_alphas_cumprod(num_steps)
            if alphas_cumprod is None:
                raise ValueError(f"the DDPM loss needs an SDE that is the limit of DDPM's chain (VP), got "
                                 f"{type(sde).__name__}")
        self.num_steps, self.reduce_mean = num_steps, reduce_mean
        self.alphas_cumprod = alphas_cumprod

    def per_example(self, score_fn: ScoreFn, x0: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-example loss ``[B]``."""
        if isinstance(generator, ShardedGenerator):  # this rank's rows of the global batch's draw
            i = generator.randint(self.num_steps, (x0.shape[0],)).to(x0.device)
        else:
            gen_device = generator.device if generator else None
            i = torch.randint(0, self.num_steps, (x0.shape[0],), generator=generator, device=gen_device).to(x0.device)
        abar = append_dims(self.alphas_cumprod.to(x0.device, x0.dtype)[i], x0.ndim)
        eps = sample_noise(x0.shape, x0, generator)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        t = (i + 1).to(x0.dtype) / self.num_steps
        score = score_fn(x_t, t)
        reduce = batch_mean if self.reduce_mean else batch_sum
        return reduce(((1 - abar).sqrt() * score + eps) ** 2)

    def __call__(self, score_fn: ScoreFn, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.per_example(score_fn, x0, generator).mean()
