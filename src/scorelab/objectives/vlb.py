"""DDPM's variational bound on the negative log-likelihood of 8-bit data (Ho et al. 2020, Eq. 5; Sohl-Dickstein et al.
2015; docs/cosine_and_vlb.md).

For a discrete VP chain ``q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)``, ``t = 1..N``, and the
reverse model ``p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I)`` with the mean of the noise prediction
(Ho et al. 2020, Eq. 11),

    L = L_N + sum_{t=2}^{N} L_{t-1} + L_0,
    L_N     = KL(q(x_N | x_0) || N(0, I)),
    L_{t-1} = E_{x_t ~ q(x_t | x_0)} KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)),
    L_0     = E_{x_1 ~ q(x_1 | x_0)} [-log p_theta(x_0 | x_1)]   (the discretised Gaussian decoder, Eq. 13).

``L >= -log p_theta(x_0)`` for every ``x_0``; divided by ``D ln 2`` it is in bits/dim, with no dequantisation
offset since the decoder gives the probability of the 8-bit value itself. Everything takes the chain as its
``alpha_bar_t`` (``[N]``, from :meth:`scorelab.sde.SDE.ddpm_alphas_cumprod`: VP's linear chain or the cosine one),
and the network as a noise prediction ``eps_fn(x_t, t)`` with integer ``t`` in ``1..N``. The reverse variance is
``beta_t``, ``beta~_t`` or learned: ``exp(v log beta_t + (1 - v) log beta~_t)`` with ``v`` from the network
(``variance="learned"``, ``eps_fn`` then returns ``(eps, v)``; Nichol & Dhariwal 2021, Eq. 15,
:mod:`scorelab.objectives.hybrid`).

Pure PyTorch; the likelihood CLI's ``method=vlb`` (``scorelab.cli.likelihood``) runs it over a data split.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..core.rng import Generator, ShardedGenerator, sample_noise
from ..core.tensors import append_dims, batch_sum
from ..sde import SDE

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
VARIANCES = ("beta", "beta_tilde")  # the fixed reverse variances of Ho et al. 2020
LEARNED = "learned"  # the interpolation of improved DDPM, from the network (Nichol & Dhariwal 2021, Eq. 15)


# --- Gaussian pieces ----------------------------------------------------------------------------------------------
def normal_kl(mean1: torch.Tensor, var1: torch.Tensor, mean2: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean1, var1) || N(mean2, var2))`` per element (broadcasting):
    ``(log(var2 / var1) + (var1 + (mean1 - mean2)^2) / var2 - 1) / 2``."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate on both sides of ``-log 2`` (Maechler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_normal_cdf_diff(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``log(Phi(upper) - Phi(lower))`` for ``lower < upper`` (either may be infinite), accurate in both tails.

    Intervals right of 0 are mirrored (``Phi(b) - Phi(a) = Phi(-a) - Phi(-b)``) so the difference is always taken
    between left-tail values, where ``log_ndtr`` is exact.
    """
    flip = lower > 0
    a, b = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    log_b = torch.special.log_ndtr(b)
    return log_b + _log1mexp(torch.special.log_ndtr(a) - log_b)


def discretized_gaussian_log_prob(x0: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                                  data_range: tuple[float, float] = (-1.0, 1.0), bins: int = 256) -> torch.Tensor:
    """Log-probability of 8-bit values under the discretised Gaussian decoder (Ho et al. 2020, Eq. 13).

    The ``bins`` values sit at ``lo + k (hi - lo) / (bins - 1)``; value ``k`` gets the mass of ``N(mean, std^2)``
    on ``[x - h, x + h]``, ``h = (hi - lo) / (2 (bins - 1))`` (1/255 on ``[-1, 1]``), with the edges of the first and
    last bins at ``-inf`` and ``+inf``, so the probabilities of all values sum to 1.

    Args:
        x0: data on the grid, ``[B, ...]`` in ``data_range``.
        mean: decoder mean ``[B, ...]``.
        std: decoder standard deviation, broadcastable to ``x0`` (e.g. ``[B, 1, 1, 1]``).
        data_range: the interval the 8-bit values are mapped onto.
        bins: number of values (256 for 8 bits).

    Returns:
        ``log p(x0 | mean, std)`` per element, ``[B, ...]``.
    """
    lo, hi = data_range
    half = (hi - lo) / (2 * (bins - 1))
    inf = torch.tensor(math.inf, dtype=mean.dtype, device=mean.device)
    upper = torch.where(x0 > hi - half, inf, (x0 + half - mean) / std)
    lower = torch.where(x0 < lo + half, -inf, (x0 - half - mean) / std)
    return log_normal_cdf_diff(lower, upper)


# --- the chain ----------------------------------------------------------------------------------------------------
class DDPMChain:
    """The discrete VP chain of ``alpha_bar_t``, ``t = 1..N``, and its Gaussian pieces (Ho et al. 2020, Eq. 4-7).

    ``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}`` (``alpha_bar_0 = 1``); the posterior
    ``q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)`` with ``beta~_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)``.
    Integer times ``t`` (``[B]``, long) index everything from 1.

    Args:
        alphas_cumprod: ``alpha_bar_1..N``, ``[N]``, decreasing in ``(0, 1)``.
    """

    def __init__(self, alphas_cumprod: torch.Tensor):
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if len(abar) < 2 or not ((abar > 0) & (abar < 1)).all() or not (abar[1:] < abar[:-1]).all():
            raise ValueError("alphas_cumprod must hold N >= 2 values decreasing within (0, 1)")
        self.num_steps = len(abar)
        one = torch.ones(1, dtype=torch.float64)
        self.alphas_cumprod = torch.cat([one, abar])  # index t = 0..N, alpha_bar_0 = 1
        self.betas = torch.cat([torch.zeros(1, dtype=torch.float64), 1.0 - abar / self.alphas_cumprod[:-1]])
        prev = self.alphas_cumprod[:-1]
        self.posterior_variance = torch.cat([torch.zeros(1, dtype=torch.float64),
                                             self.betas[1:] * (1.0 - prev) / (1.0 - abar)])
        self._times: tuple[SDE, torch.Tensor] | None = None
        self._tables: dict = {}

    # --- times, draws and units: the chain's own, for the DDPM loss, the hybrid loss and the bound alike ---------
    def sde_times(self, sde: SDE) -> torch.Tensor:
        """``[N]`` float64: the SDE time of step ``t`` at index ``t - 1`` (:func:`chain_times`), where the SDE's
        kernel has the chain's noise level: the time a score model trained on the SDE is queried at for step ``t``.
        Computed once per SDE (the chain keeps the SDE it was asked about, so the key cannot be reused)."""
        if self._times is None or self._times[0] is not sde:
            self._times = (sde, chain_times(sde, self.alphas_cumprod[1:]))
            self._tables = {}
        return self._times[1]

    def _table(self, name: str, table: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``table`` on ``like``'s device and dtype, copied there once (no host-device copy per training step)."""
        key = (name, like.device, like.dtype)
        if key not in self._tables:
            self._tables[key] = table.to(like.device, like.dtype)
        return self._tables[key]

    def score_eps(self, score_fn, sde: SDE, xt: torch.Tensor, t: torch.Tensor, with_variance: bool = False):
        """The noise prediction of a score model at step ``t``: ``eps(x_t, t) = -sqrt(1 - alpha_bar_t) s(x_t, t_t)``
        with ``t_t`` the SDE time of step ``t`` (:meth:`sde_times`; ``E[eps | x_t] = -s(t) grad log p_t``).

        Args:
            score_fn: the score model ``(x, t [B]) -> [B, ...]``; with ``with_variance``, called with
                ``return_variance=True`` and returning ``(score, v)`` (a learned variance interpolation).
            sde: the SDE the model was trained on.
            xt: ``x_t`` ``[B, ...]``.
            t: steps ``[B]`` (long, ``1..N``).

        Returns:
            ``eps [B, ...]``, or ``(eps, v)`` with ``with_variance``.
        """
        index = t.to(xt.device) - 1
        times = self._table("times", self.sde_times(sde), xt)[index]
        std = append_dims(self._table("stds", (1.0 - self.alphas_cumprod[1:]).sqrt(), xt)[index], xt.ndim)
        if with_variance:
            score, v = score_fn(xt, times, return_variance=True)
            return -std * score, v
        return -std * score_fn(xt, times)

    def draw(self, n: int, like: torch.Tensor, generator=None) -> torch.Tensor:
        """``n`` integer times ``[n]`` (long, on ``like``'s device) uniform in ``1..N``; a ``ShardedGenerator`` gives
        this rank's rows of the global batch's draw, so a DDP step equals the 1-process step."""
        if isinstance(generator, ShardedGenerator):
            i = generator.randint(self.num_steps, (n,))
        else:
            gen_device = generator.device if generator is not None else None
            i = torch.randint(0, self.num_steps, (n,), generator=generator, device=gen_device)
        return (i + 1).to(like.device)

    @staticmethod
    def bits_per_dim(nats: torch.Tensor, dim: int) -> torch.Tensor:
        """A discrete NLL in nats (``[B]``) as bits/dim: ``nats / (D ln 2)``, with no offset: it is the probability
        of the 8-bit values themselves, not a density of dequantised data
        (:func:`scorelab.metrics.likelihood.bits_per_dim` is that one)."""
        return nats / (dim * math.log(2.0))

    def _at(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The chain's table ``name`` at ``t``, in ``like``'s dtype and device, shaped to broadcast against it:
        ``[B, 1, ...]``. ``log_<table>`` is the log of a table."""
        table = getattr(self, name.removeprefix("log_"))
        table = self._table(name, table.log() if name.startswith("log_") else table, like)
        return append_dims(table[t.to(like.device)], like.ndim)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise`` (Ho et al. 2020, Eq. 4); ``[B, ...]``."""
        abar = self._at("alphas_cumprod", t, x0)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[B, ...]`` and variance ``[B, 1, ...]`` of ``q(x_{t-1} | x_t, x_0)`` (Ho et al. 2020, Eq. 6-7)."""
        abar, prev = self._at("alphas_cumprod", t, x0), self._at("alphas_cumprod", t - 1, x0)
        beta = self._at("betas", t, x0)
        mean = (prev.sqrt() * beta * x0 + (1.0 - beta).sqrt() * (1.0 - prev) * xt) / (1.0 - abar)
        return mean, self._at("posterior_variance", t, x0)

    def model_mean(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t)`` (Ho et al. 2020, Eq. 11)."""
        abar, beta = self._at("alphas_cumprod", t, xt), self._at("betas", t, xt)
        return (xt - beta / (1.0 - abar).sqrt() * eps) / (1.0 - beta).sqrt()

    def model_variance(self, t: torch.Tensor, like: torch.Tensor, variance: str = "beta") -> torch.Tensor:
        """``sigma_t^2`` ``[B, 1, ...]``: ``beta_t`` (``"beta"``) or ``beta~_t`` (``"beta_tilde"``), Ho et al. 2020,
        Sec. 3.2; ``beta~_1 = 0``, so the decoder (``t = 1``) of ``"beta_tilde"`` uses ``beta~_2``."""
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        if variance == "beta":
            return self._at("betas", t, like)
        return self._at("posterior_variance", torch.where(t == 1, torch.full_like(t, 2), t), like)

    def interpolated_variance(self, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The learned reverse variance ``exp(v log beta_t + (1 - v) log beta~_t)`` (Nichol & Dhariwal 2021, Eq. 15),
        ``[B, ...]`` like ``v``: ``v = 1`` gives ``beta_t``, ``v = 0`` gives ``beta~_t`` (at ``t = 1`` ``beta~_2``, as
        :meth:`model_variance`); ``v`` is not clipped to ``[0, 1]``. The logs are taken in float64."""
        tilde_t = torch.where(t == 1, torch.full_like(t, 2), t)
        log_beta = self._at("log_betas", t, v)
        log_tilde = self._at("log_posterior_variance", tilde_t, v)
        return torch.exp(v * log_beta + (1.0 - v) * log_tilde)


# --- the bound ----------------------------------------------------------------------------------------------------
def prior_term(chain: DDPMChain, x0: torch.Tensor) -> torch.Tensor:
    """``L_N = KL(q(x_N | x_0) || N(0, I))``, summed over dimensions; ``[B]`` nats."""
    t = torch.full((x0.shape[0],), chain.num_steps, dtype=torch.long, device=x0.device)
    abar = chain._at("alphas_cumprod", t, x0)
    return batch_sum(normal_kl(abar.sqrt() * x0, (1.0 - abar).expand_as(x0), torch.zeros_like(x0),
                               torch.ones_like(x0)))


def bound_term(chain: DDPMChain, eps_fn: EpsFn, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
               variance: str = "beta", data_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """One term of the bound at ``x_t = q_sample(x0, t, noise)``: ``L_{t-1}`` for ``t >= 2``, ``L_0`` for ``t = 1``.

    ``L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || N(mu_theta(x_t, t), sigma_t^2 I))`` (Ho et al. 2020, Eq. 5) and
    ``L_0 = -log p_theta(x_0 | x_1)`` with the discretised decoder (Eq. 13), each summed over dimensions for this
    draw of ``x_t`` (their expectation over ``noise`` is the term of the bound). One call of ``eps_fn``.

    Args:
        chain: the discrete chain.
        eps_fn: noise prediction ``(x_t [B, ...], t [B] long in 1..N) -> [B, ...]``.
        x0: data on the 8-bit grid of ``data_range``, ``[B, ...]``.
        t: integer times ``[B]`` in ``1..N`` (a batch may mix times).
        noise: the standard normal noise making ``x_t``, ``[B, ...]``.
        variance: the reverse variance, ``"beta"``, ``"beta_tilde"`` or ``"learned"`` (``eps_fn`` returns ``(eps, v)``,
            :meth:`DDPMChain.interpolated_variance`).
        data_range: the interval of the 8-bit grid (for ``L_0``).

    Returns:
        the terms ``[B]`` in nats.
    """
    if ((t < 1) | (t > chain.num_steps)).any():
        raise ValueError(f"t must lie in 1..{chain.num_steps}")
    xt = chain.q_sample(x0, t, noise)
    if variance == LEARNED:
        eps, v = eps_fn(xt, t)
        var = chain.interpolated_variance(t, v)
    else:
        eps, var = eps_fn(xt, t), chain.model_variance(t, x0, variance)
    return term_from_prediction(chain, x0, xt, t, chain.model_mean(xt, t, eps), var, data_range)


def term_from_prediction(chain: DDPMChain, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, mean: torch.Tensor,
                         var: torch.Tensor, data_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """The term of :func:`bound_term` for a given reverse mean ``mean [B, ...]`` and variance ``var`` (``[B, 1, ...]``
    or ``[B, ...]``) at ``x_t``: ``L_{t-1}`` (KL) for ``t >= 2``, ``L_0`` (discretised decoder) for ``t = 1``;
    ``[B]`` nats, summed over dimensions."""
    decoder = t == 1
    post_mean, post_var = chain.posterior(x0, xt, t)
    post_var = torch.where(append_dims(decoder, x0.ndim), torch.ones_like(post_var), post_var)  # beta~_1 = 0 unused
    kl = batch_sum(normal_kl(post_mean, post_var.expand_as(x0), mean, var.expand_as(x0)))
    if not decoder.any():
        return kl
    rows = decoder.nonzero().squeeze(1)  # the decoder only where it is used: no NaN gradients from other rows' tails
    std = var.expand_as(x0)[rows].sqrt()
    nll = -batch_sum(discretized_gaussian_log_prob(x0[rows], mean[rows], std, data_range))
    return kl.index_put((rows,), nll.to(kl.dtype))


class VLB(NamedTuple):
    """Result of :func:`variational_bound`, each ``[B]`` in nats: the bound ``total = prior + decoder + diffusion``,
    ``prior = L_N``, ``decoder = L_0``, ``diffusion`` the estimate of ``sum_{t=2}^N L_{t-1}``; and the NFE."""

    total: torch.Tensor
    prior: torch.Tensor
    decoder: torch.Tensor
    diffusion: torch.Tensor
    nfe: int


def stratified_timesteps(num_steps: int, timesteps: int | None, batch: int, like: torch.Tensor,
                         generator: Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Times ``2..N`` for an unbiased estimate of ``sum_{t=2}^N L_{t-1}``: one uniform time in each of ``K`` blocks.

    ``{2..N}`` is cut into ``K = timesteps`` contiguous blocks of sizes ``n_k`` (``sum n_k = N - 1``); one time is
    drawn uniformly in each block, per example, and weighted by ``n_k``, so ``sum_k n_k L(t_k)`` has expectation
    ``sum_t L(t)`` (stratified sampling: never worse than ``K`` uniform draws scaled by ``(N - 1) / K``).
    ``timesteps=None`` (or ``N - 1``) gives every time once with weight 1: the full sum.

    Returns:
        ``(t [B, K] long, weight [K] float64)``.
    """
    count = num_steps - 1
    k = count if timesteps is None else int(timesteps)
    if not 1 <= k <= count:
        raise ValueError(f"timesteps must be in 1..{count} (N - 1) or None (all), got {timesteps!r}")
    edges = torch.round(torch.linspace(0, count, k + 1, dtype=torch.float64)).long()
    sizes = edges[1:] - edges[:-1]
    if k == count:
        return (2 + torch.arange(count)).expand(batch, count).to(like.device), sizes.double()
    u = sample_noise((batch, k), like, generator, kind="uniform").double().cpu()
    offset = torch.minimum((u * sizes).floor().long(), sizes - 1)
    return (2 + edges[:-1] + offset).to(like.device), sizes.double()


def variational_bound(eps_fn: EpsFn, x0: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps: int | None = None,
                      variance: str = "beta", data_range: tuple[float, float] = (-1.0, 1.0),
                      generator: Generator | None = None) -> VLB:
    """DDPM's bound ``L = L_N + sum_{t=2}^N L_{t-1} + L_0`` per example (Ho et al. 2020, Eq. 5; docs/cosine_and_vlb.md).

    ``L_N`` is exact; ``L_0`` and each ``L_{t-1}`` use one draw of ``x_t`` per example (an unbiased estimate of
    the bound); the sum over ``t`` is the full sum (``timesteps=None``, ``N`` network calls in all) or an unbiased
    stratified estimate from ``K`` times per example (:func:`stratified_timesteps`, ``K + 1`` calls).

    Args:
        eps_fn: noise prediction ``(x_t [B, ...], t [B] long in 1..N) -> [B, ...]`` (:func:`eps_from_score`), or
            ``(eps, v)`` for ``variance="learned"``.
        x0: data on the 8-bit grid of ``data_range``, ``[B, ...]`` (:func:`pixels_to_data`).
        alphas_cumprod: the chain's ``alpha_bar_1..N``, ``[N]``.
        timesteps: ``K``, the number of times of the estimated sum, or None for all ``N - 1``.
        variance: ``"beta"`` (``sigma_t^2 = beta_t``), ``"beta_tilde"`` (``beta~_t``) or ``"learned"``
            (``exp(v log beta_t + (1 - v) log beta~_t)``, Nichol & Dhariwal 2021, Eq. 15).
        data_range: the interval of the 8-bit grid.
        generator: source of the times and of the noise (a ``torch.Generator`` or ``PerSampleGenerator``).

    Returns:
        :class:`VLB`, every field ``[B]`` nats.
    """
    if variance not in (*VARIANCES, LEARNED):
        raise ValueError(f"variance must be one of {(*VARIANCES, LEARNED)}, got {variance!r}")
    chain = DDPMChain(alphas_cumprod)
    b = x0.shape[0]
    t_grid, weights = stratified_timesteps(chain.num_steps, timesteps, b, x0, generator)
    ones = torch.ones(b, dtype=torch.long, device=x0.device)
    decoder = bound_term(chain, eps_fn, x0, ones, sample_noise(x0.shape, x0, generator), variance, data_range)
    diffusion = torch.zeros(b, dtype=torch.float64, device=x0.device)
    for k in range(t_grid.shape[1]):
        term = bound_term(chain, eps_fn, x0, t_grid[:, k], sample_noise(x0.shape, x0, generator), variance,
                          data_range)
        diffusion = diffusion + float(weights[k]) * term.double()
    prior = prior_term(chain, x0).double()
    decoder = decoder.double()
    return VLB(prior + decoder + diffusion, prior, decoder, diffusion, 1 + t_grid.shape[1])


# --- from a score model -------------------------------------------------------------------------------------------
def chain_times(sde: SDE, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The continuous times at which the SDE's kernel has the chain's noise levels: ``t_i = t_of_sigma(sigma_i)``,
    ``sigma_i = sqrt((1 - alpha_bar_i) / alpha_bar_i)``; ``[N]`` float64.

    ``q(x_i | x_0)`` of the chain is then exactly the SDE's ``p_0t(x(t_i) | x_0)``, so a score model trained on the
    SDE sees the noise level it was trained on. For the cosine SDE ``t_i = i / N`` below the clip.
    """
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return sde.t_of_sigma(torch.sqrt((1.0 - abar) / abar)).to(torch.float64)


def eps_from_score(score_fn: Callable[..., torch.Tensor], sde: SDE, alphas_cumprod: torch.Tensor,
                   with_variance: bool = False) -> EpsFn:
    """The noise prediction of a score model on a discrete chain: ``eps(x_i, i) = -sqrt(1 - alpha_bar_i) s(x_i, t_i)``
    with ``t_i`` from :func:`chain_times` (``E[eps | x_t] = -s(t) grad log p_t``, docs/math.md §3).

    Args:
        score_fn: the score model ``(x, t [B]) -> [B, ...]``.
        sde: its SDE.
        alphas_cumprod: the chain's ``alpha_bar_1..N``.
        with_variance: also return the model's learned variance interpolation ``v`` (a
            :class:`~scorelab.models.ScoreModel` with ``learn_variance``, called with ``return_variance=True``).

    Returns:
        ``eps_fn(x [B, ...], i [B] long in 1..N) -> [B, ...]``, or ``-> (eps, v)`` with ``with_variance``.
    """
    chain = DDPMChain(alphas_cumprod)

    def eps_fn(x: torch.Tensor, i: torch.Tensor):
        return chain.score_eps(score_fn, sde, x, i, with_variance)

    return eps_fn


def pixels_to_data(x: torch.Tensor, data_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """8-bit values ``k`` in ``[0, 255]`` onto the decoder's grid ``lo + k (hi - lo) / 255`` (no dequantisation:
    the decoder gives the probability of ``k`` itself; Ho et al. 2020, Sec. 3.3)."""
    lo, hi = data_range
    return lo + (hi - lo) * x.float() / 255.0
