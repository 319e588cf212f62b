"""Training objectives: score matching in its three forms (denoising, implicit, sliced) and DDPM's L_simple.

Every continuous-time objective shares the time weighting ``lambda(t)``, the draw of ``t`` (uniform, or importance
sampled for the likelihood weighting) and the reduction over data dimensions: see :class:`TimeWeighting`.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch

from ..core.rng import sample_noise
from ..core.tensors import append_dims, batch_mean, batch_sum
from ..ops.divergence import PROBES, choose_divergence, draw_probes, exact_trace, projected_jacobian
from ..sde import SDE, VPSDE
from .base import Objective
from .vlb import DDPMChain

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
WEIGHTINGS = ("sigma2", "g2", "none", "snr_sigmoid", "edm", "min_snr", "flow")
# the weightings written in noise space, lambda(t) = s(t)^2 x relative_weight(t): their loss is computed as
# relative_weight ||s score + z||^2, which never divides by a tiny s(t)
NOISE_SPACE_WEIGHTINGS = ("sigma2", "snr_sigmoid", "edm", "min_snr", "flow")
TIME_DISTRIBUTIONS = ("uniform", "log_normal")
TRACES = ("exact", "hutchinson", "auto")


class LikelihoodTimes:
    """The importance distribution ``p(t) ∝ g(t)^2 / s(t)^2`` on ``[eps, T]`` (Song, Durkan, Murray, Ermon 2021, §5).

    With the likelihood weighting ``lambda(t) = g(t)^2`` the DSM integrand behaves like ``g^2 / s^2`` (about ``1 / t``
    near 0 for VP): drawing ``t`` from this density and dividing by it flattens the integrand, so the estimator of the
    same objective has a far smaller variance. The inverse CDF is tabulated once, for any SDE: the unnormalised
    density in ``u = log t`` is evaluated on ``grid_size`` points uniform in ``u`` and integrated by the trapezoid
    rule. The distribution sampled *is* that table's (density piecewise constant in ``u``, CDF piecewise linear),
    and :meth:`density` returns exactly its density, so importance weights built from it are exactly unbiased. With
    the default grid it lies within about 1e-4 (relative) of the smooth ``p(t)`` pointwise, its CDF within 1e-8.

    Args:
        sde: the forward SDE (``g`` from ``sde.sde``, ``s`` from ``sde.marginal_std``).
        eps: the smallest time, ``0 < eps < T``.
        grid_size: points of the table.
    """

    def __init__(self, sde: SDE, eps: float = 1e-5, grid_size: int = 65537):
        if not 0.0 < eps < sde.T:
            raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
        if grid_size < 2:
            raise ValueError(f"grid_size must be >= 2, got {grid_size}")
        self.sde, self.eps, self.grid_size = sde, float(eps), int(grid_size)
        u = torch.linspace(math.log(eps), math.log(sde.T), grid_size, dtype=torch.float64)
        t = u.exp()
        g2 = sde.sde(torch.zeros(grid_size, 1, dtype=torch.float64), t)[1].to(torch.float64) ** 2
        f = g2 / sde.marginal_std(t).to(torch.float64) ** 2 * t  # density in u = log t, unnormalised
        if not bool(torch.isfinite(f).all()) or bool((f <= 0).any()):
            raise ValueError(f"g(t)^2 / s(t)^2 of {type(sde).__name__} is not positive and finite on [eps, T]")
        mass = 0.5 * (f[1:] + f[:-1]) * (u[1:] - u[:-1])  # per cell
        self.normaliser = float(mass.sum())  # Z = int_eps^T g^2 / s^2 dt
        self._u = u
        self._cdf = torch.cat([torch.zeros(1, dtype=torch.float64), mass.cumsum(0) / self.normaliser])
        self._cdf[-1] = 1.0
        self._cell_density = 0.5 * (f[1:] + f[:-1]) / self.normaliser  # density in u of each cell
        self._cache: dict = {}

    def _tables(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(x.to(like.device) for x in (self._u, self._cdf, self._cell_density))
        return self._cache[key]

    def sample(self, n: int, like: torch.Tensor, generator=None) -> torch.Tensor:
        """``n`` times ``[n]`` drawn by inverting the tabulated CDF at uniform draws (``like``'s dtype and device)."""
        u_tab, cdf, _ = self._tables(like)
        r = sample_noise((n,), like, generator, kind="uniform").to(torch.float64)
        i = torch.searchsorted(cdf, r, right=True).clamp(1, len(cdf) - 1) - 1
        frac = (r - cdf[i]) / (cdf[i + 1] - cdf[i])
        u = u_tab[i] + frac * (u_tab[i + 1] - u_tab[i])
        return u.exp().clamp(self.eps, self.sde.T).to(like.dtype)

    def density(self, t: torch.Tensor) -> torch.Tensor:
        """The density ``p(t)`` of :meth:`sample` at ``t [B]`` in ``[eps, T]`` (normalised over ``[eps, T]``)."""
        u_tab, _, cell = self._tables(t)
        u = t.to(torch.float64).log()
        i = (torch.searchsorted(u_tab, u, right=True) - 1).clamp(0, len(cell) - 1)
        return (cell[i] / u.exp()).to(t.dtype)

    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        """``P(T' <= t)`` under :meth:`sample`, ``[B]``."""
        u_tab, cdf, cell = self._tables(t)
        u = t.to(torch.float64).log().clamp(float(u_tab[0]), float(u_tab[-1]))
        i = (torch.searchsorted(u_tab, u, right=True) - 1).clamp(0, len(cell) - 1)
        return (cdf[i] + cell[i] * (u - u_tab[i])).to(t.dtype)


def _is_real(value) -> bool:
    """Whether a config value is a plain number (an int or float, not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class TimeWeighting(Objective):
    """What every continuous-time score-matching objective shares: ``lambda(t)``, the draw of ``t``, the reduction.

    The objective is ``L = E_{t ~ U(eps, T)} lambda(t) l(t)``. With ``importance_sampling`` the times are drawn from
    :class:`LikelihoodTimes` instead (``p(t) ∝ g^2 / s^2``, Song, Durkan, Murray, Ermon 2021, Sec. 5) and each term
    is multiplied by ``1 / ((T - eps) p(t))``: the estimator has the same expectation as with uniform times, and
    with ``weighting="g2"`` a much smaller variance.

    Args:
        sde: the forward SDE.
        weighting: ``lambda(t)``: ``"sigma2"`` (``s(t)^2``, noise prediction, default), ``"g2"``
            (``g(t)^2``, likelihood weighting, Song et al. 2021b), ``"none"`` (1) or ``"snr_sigmoid"``
            (``s(t)^2 [c + (1 - c) sigmoid(log SNR(t) + b)]`` with ``SNR = a(t)^2 / s(t)^2``: the noise-prediction
            weighting turned down at low SNR, where the implicit and sliced estimators are noisiest;
            docs/objectives.md); ``"edm"`` (Karras et al. 2022, Eq. 8 and Table 1: ``lambda(sigma) ||D - x0||^2``
            with ``lambda = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2``, ``sigma = s/a``: unit-scale loss at every
            noise level under EDM's preconditioning; ``s(t)^2 (1 + sigma^2 / sigma_d^2)`` here); ``"min_snr"``
            (Hang et al. 2023: ``min(SNR, gamma) ||D - x0||^2``, ``SNR = 1 / sigma^2``, the same loss as their
            ``min(SNR, gamma) / SNR`` on the noise and ``min(SNR, gamma) / (SNR + 1)`` on v; ``s(t)^2 min(1, gamma
            sigma^2)`` here) or ``"flow"`` (the flow-matching loss ``||u_theta - (a' x0 + s' z)||^2`` of Lipman et
            al. 2023, whose velocity error is ``g^2 / (2 s)`` times the noise error: ``g(t)^4 / 4`` here).
        reduce_mean: average over data dimensions (``True``) or sum them.
        eps: smallest training time (1e-5 in the paper) avoiding the singularity of ``z / s(t)`` at 0.
        importance_sampling: draw ``t`` from ``p(t) ∝ g(t)^2 / s(t)^2`` and reweight (unbiased for any weighting).
        snr_shift: ``b`` of ``"snr_sigmoid"``: the weight is halfway down where ``log SNR = -b``.
        snr_floor: ``c`` of ``"snr_sigmoid"`` in ``(0, 1]``: the weight's low-SNR limit, relative to ``s(t)^2``.
        lr_scale: the factor :class:`~scorelab.lit.module.ScoreModule` multiplies the optimizer's learning rate by
            when it trains this objective (> 0; 1: the rate as configured). The implicit and sliced estimators'
            gradients are far noisier than DSM's at low SNR, and at a constant rate their models fluctuate more; their
            configs train at half the rate (docs/objectives.md, "Learning rate").
        sigma_data: ``sigma_d`` of ``"edm"`` (the data's standard deviation, 0.5 for images in [-1, 1]).
        min_snr_gamma: ``gamma`` of ``"min_snr"`` (5 in the paper).
        time_distribution: ``"uniform"`` (``t ~ U(eps, T)``) or ``"log_normal"`` (EDM's training noise levels:
            ``log sigma(t) ~ N(p_mean, p_std^2)``, Karras et al. 2022, Table 1; mapped to time by ``sde.t_of_sigma``
            and kept in ``[eps, T]``). Log-normal times define another objective (the EDM one), not an estimator of
            the uniform one, so they are not reweighted; ``importance_sampling`` needs uniform times.
        p_mean, p_std: the log-normal's mean and standard deviation of ``log sigma`` (-1.2 and 1.2 in EDM).
    """

    def __init__(self, sde: SDE, weighting: str = "sigma2", reduce_mean: bool = True, eps: float = 1e-5,
                 importance_sampling: bool = False, snr_shift: float = -2.0, snr_floor: float = 0.2,
                 lr_scale: float = 1.0, sigma_data: float = 0.5, min_snr_gamma: float = 5.0,
                 time_distribution: str = "uniform", p_mean: float = -1.2, p_std: float = 1.2):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if time_distribution not in TIME_DISTRIBUTIONS:
            raise ValueError(f"time_distribution must be one of {TIME_DISTRIBUTIONS}, got {time_distribution!r}")
        if time_distribution != "uniform" and importance_sampling:
            raise ValueError("importance_sampling reweights uniform times: it cannot be combined with "
                             f"time_distribution={time_distribution!r}")
        for name, value, positive in (("sigma_data", sigma_data, True), ("min_snr_gamma", min_snr_gamma, True),
                                      ("p_mean", p_mean, False), ("p_std", p_std, True)):
            if not _is_real(value) or not math.isfinite(value) or (positive and value <= 0):
                raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {value!r}")
        self.sigma_data, self.min_snr_gamma = float(sigma_data), float(min_snr_gamma)
        self.time_distribution, self.p_mean, self.p_std = time_distribution, float(p_mean), float(p_std)
        if not 0.0 < eps < sde.T:
            raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
        if not isinstance(importance_sampling, bool):
            raise ValueError(f"importance_sampling must be true or false, got {importance_sampling!r}")
        if not _is_real(snr_shift) or not math.isfinite(snr_shift):
            raise ValueError(f"snr_shift must be a finite number, got {snr_shift!r}")
        if not _is_real(snr_floor) or not 0.0 < snr_floor <= 1.0:
            raise ValueError(f"snr_floor must lie in (0, 1], got {snr_floor!r}")
        if not _is_real(lr_scale) or not math.isfinite(lr_scale) or lr_scale <= 0:
            raise ValueError(f"lr_scale must be a finite number > 0 (1: the optimizer's rate as configured), "
                             f"got {lr_scale!r}")
        self.lr_scale = float(lr_scale)
        self.sde, self.weighting, self.reduce_mean, self.eps = sde, weighting, reduce_mean, eps
        self.snr_shift, self.snr_floor = float(snr_shift), float(snr_floor)
        self.importance_sampling = importance_sampling
        self.likelihood_times = LikelihoodTimes(sde, eps) if importance_sampling else None

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda(t)``, shape ``[B]``."""
        if self.weighting in NOISE_SPACE_WEIGHTINGS:
            return self.sde.marginal_std(t) ** 2 * self.relative_weight(t)
        if self.weighting == "g2":
            return self.sde.sde(torch.zeros_like(t)[:, None], t)[1] ** 2
        return torch.ones_like(t)

    def relative_weight(self, t: torch.Tensor) -> torch.Tensor | float:
        """``lambda(t) / s(t)^2`` of the weightings written in noise space, the factor of ``||eps_theta - z||^2``:
        ``"sigma2"``: 1; ``"snr_sigmoid"``: ``c + (1 - c) sigmoid(log SNR(t) + b)``; ``"edm"``: ``1 + sigma^2 /
        sigma_d^2``; ``"min_snr"``: ``min(1, gamma sigma^2)``; ``"flow"``: ``(g^2 / (2 s))^2``."""
        if self.weighting == "edm":
            return 1.0 + self.sde.sigma(t) ** 2 / self.sigma_data**2
        if self.weighting == "min_snr":
            return torch.clamp(self.min_snr_gamma * self.sde.sigma(t) ** 2, max=1.0)
        if self.weighting == "flow":
            diffusion = self.sde.sde(torch.zeros_like(t)[:, None], t)[1]
            return (diffusion**2 / (2.0 * self.sde.marginal_std(t))) ** 2
        if self.weighting != "snr_sigmoid":
            return 1.0
        log_snr = 2 * (self.sde.mean_coeff(t).log() - self.sde.marginal_std(t).log())
        return self.snr_floor + (1 - self.snr_floor) * torch.sigmoid(log_snr + self.snr_shift)

    def sample_times(self, n: int, like: torch.Tensor, generator=None) -> torch.Tensor:
        """``n`` training times ``[n]``: ``U(eps, T)``, :class:`LikelihoodTimes` with ``importance_sampling``, or
        the times of log-normal noise levels (``time_distribution="log_normal"``)."""
        if self.time_distribution == "log_normal":
            sigma = torch.exp(self.p_mean + self.p_std * sample_noise((n,), like, generator).to(torch.float64))
            return self.sde.t_of_sigma(sigma).clamp(self.eps, self.sde.T).to(like.dtype)
        if self.likelihood_times is not None:
            return self.likelihood_times.sample(n, like, generator)
        return sample_noise((n,), like, generator, kind="uniform") * (self.sde.T - self.eps) + self.eps

    def time_factor(self, t: torch.Tensor) -> torch.Tensor | float:
        """The importance weight ``1 / ((T - eps) p(t))`` of each time ``[B]`` (1 with uniform times)."""
        if self.likelihood_times is None:
            return 1.0
        return 1.0 / ((self.sde.T - self.eps) * self.likelihood_times.density(t))

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, ...] -> [B]``: mean or sum over the data dimensions (``reduce_mean``)."""
        return batch_mean(x) if self.reduce_mean else batch_sum(x)



class DSMLoss(TimeWeighting):
    """Denoising score matching (Vincent 2011; Song et al. 2021, Eq. 7; docs/math.md §3).

    ``L = E_t lambda(t) E_{x0, z} || s_theta(a(t) x0 + s(t) z, t) + z / s(t) ||^2`` with ``t ~ U(eps, T)``, or
    ``t`` importance sampled (:class:`TimeWeighting`; with ``weighting="g2"`` this is the likelihood training of
    Song, Durkan, Murray, Ermon 2021, Eq. 12 with the importance sampling of their Sec. 5).

    The arguments (``sde``, ``weighting``, ``reduce_mean``, ``eps``, ``importance_sampling``, ``snr_shift``,
    ``snr_floor``, ``lr_scale``, ``sigma_data``, ``min_snr_gamma``, ``time_distribution``, ``p_mean``, ``p_std``) are
    :class:`TimeWeighting`'s. EDM's loss is ``weighting="edm"`` with ``time_distribution="log_normal"``, min-SNR-gamma
    is ``weighting="min_snr"``, and the flow-matching loss is ``weighting="flow"`` (on the rectified-flow SDE, with
    uniform times, Lipman et al. 2023's conditional flow matching exactly).
    """

    def per_example(self, score_fn: ScoreFn, x0: torch.Tensor, generator=None,
                    t: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example loss ``[B]`` for data ``x0 [B, ...]``; ``t [B]`` is drawn (:meth:`sample_times`) unless given."""
        if t is None:
            t = self.sample_times(x0.shape[0], x0, generator)
        z = sample_noise(x0.shape, x0, generator)
        mean, std = self.sde.marginal_prob(x0, t)
        std_b = append_dims(std, x0.ndim)
        score = score_fn(mean + std_b * z, t)
        if self.weighting in NOISE_SPACE_WEIGHTINGS:  # || s score + z ||^2 avoids dividing by a tiny s(t)
            loss = self.relative_weight(t) * self.reduce((std_b * score + z) ** 2)
        else:
            loss = self.weight(t) * self.reduce((score + z / std_b) ** 2)
        return loss * self.time_factor(t)


# --- implicit and sliced score matching ---------------------------------------------------------------------------
@contextlib.contextmanager
def input_gradients() -> Iterator[bool]:
    """Autograd on, even inside ``torch.no_grad`` or ``torch.inference_mode`` (Lightning's validation).

    The implicit and sliced objectives differentiate the score with respect to its input, so they need autograd
    even where nothing is trained. Yields whether the caller records gradients: only then is the graph of those
    derivatives kept (``create_graph``) so that the parameters get gradients through them.
    """
    record = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    with torch.inference_mode(False), torch.enable_grad():
        yield record


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class _InputDerivativeLoss(TimeWeighting):
    """Objectives on the perturbed marginals ``p_t`` that differentiate the score in its input (ISM, SSM).

    Both are written on the scale of :class:`DSMLoss` (twice the papers' ``½``-forms): for every ``t``,
    ``lambda(t) E_{p_t}[||s_theta||^2 + 2 tr ∇ s_theta]`` equals ``lambda(t) E||s_theta - ∇ log p_t||^2`` minus a
    constant, and DSM equals it plus ``lambda(t) D / s(t)^2`` (docs/objectives.md), so the three have the same
    gradients in expectation, and ISM = DSM - E_t lambda(t) / s(t)^2 (per dimension with ``reduce_mean``).
    """

    def _terms(self, score: torch.Tensor, x: torch.Tensor, generator, create_graph: bool) -> torch.Tensor:
        """``||s||^2 + 2 tr(∇ s)`` per example ``[B, ...]``: the exact trace (ISM) or its projections (SSM)."""
        raise NotImplementedError(f"{type(self).__name__} does not define _terms(): ISM and SSM do")

    def per_example(self, score_fn: ScoreFn, x0: torch.Tensor, generator=None,
                    t: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example loss ``[B]`` for data ``x0 [B, ...]``; ``t [B]`` is drawn (:meth:`sample_times`) unless given.

        ``x_t = a(t) x0 + s(t) z`` is drawn with the same noise as :class:`DSMLoss` under the same generator (``t``,
        then ``z``, then the probes). Without gradient recording (validation) the value is returned detached.
        """
        with input_gradients() as record:
            x0 = x0.clone() if x0.is_inference() else x0  # tensors made under inference_mode cannot enter a graph
            if t is None:
                t = self.sample_times(x0.shape[0], x0, generator)
            elif t.is_inference():
                t = t.clone()
            z = sample_noise(x0.shape, x0, generator)
            mean, std = self.sde.marginal_prob(x0, t)
            x = (mean + append_dims(std, x0.ndim) * z).detach().requires_grad_(True)
            score = score_fn(x, t)
            value = self._terms(score, x, generator, record)
            dims = x0[0].numel() if self.reduce_mean else 1
            loss = self.weight(t) * value / dims * self.time_factor(t)
        return loss if record else loss.detach()


class ISMLoss(_InputDerivativeLoss):
    """Implicit score matching (Hyvärinen 2005, Eq. 4) on the perturbed marginals ``p_t`` of the SDE.

    ``L = E_t lambda(t) E_{x_t ~ p_t} [ ||s_theta(x_t, t)||^2 + 2 tr ∇_x s_theta(x_t, t) ]`` (twice Hyvärinen's
    ``½||s||^2 + tr ∇s``, on :class:`DSMLoss`'s scale), ``x_t = a(t) x0 + s(t) z``. No conditional score is used:
    only samples of ``p_t``. The trace is exact (one backward pass per dimension) or Hutchinson's estimate
    ``v^T ∇s v`` averaged over ``num_probes`` probes (one vector-Jacobian product each; Hutchinson 1989).

    Args:
        sde: the forward SDE.
        weighting, reduce_mean, eps, importance_sampling, snr_shift, snr_floor, lr_scale: as in :class:`TimeWeighting`.
        **options: the other :class:`TimeWeighting` options (``sigma_data``, ``min_snr_gamma``,
            ``time_distribution``, ``p_mean``, ``p_std``).
        trace: ``"exact"``, ``"hutchinson"`` or ``"auto"`` (exact up to 16 dimensions:
            :func:`scorelab.ops.divergence.choose_divergence`).
        probe: Hutchinson probes, ``"rademacher"`` (lower variance) or ``"gaussian"``.
        num_probes: Hutchinson probes per example.
    """

    def __init__(self, sde: SDE, weighting: str = "sigma2", reduce_mean: bool = True, eps: float = 1e-5,
                 importance_sampling: bool = False, trace: str = "auto", probe: str = "rademacher",
                 num_probes: int = 1, snr_shift: float = -2.0, snr_floor: float = 0.2, lr_scale: float = 1.0,
                 **options):
        super().__init__(sde, weighting, reduce_mean, eps, importance_sampling, snr_shift, snr_floor, lr_scale,
                         **options)
        if trace not in TRACES:
            raise ValueError(f"trace must be one of {TRACES}, got {trace!r}")
        if probe not in PROBES:
            raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
        _check_count("num_probes", num_probes)
        self.trace, self.probe, self.num_probes = trace, probe, num_probes

    def uses_exact_trace(self, x: torch.Tensor) -> bool:
        """Whether the trace of data like ``x [B, ...]`` is computed exactly."""
        return choose_divergence(self.trace, x[0].numel()) == "exact"

    def _terms(self, score, x, generator, create_graph):
        if self.uses_exact_trace(x):
            trace = exact_trace(score, x, create_graph)
        else:
            probes = draw_probes(x, self.num_probes, self.probe, generator)
            trace = sum(projected_jacobian(score, x, v, create_graph) for v in probes) / self.num_probes
        return batch_sum(score**2) + 2 * trace


class SSMLoss(_InputDerivativeLoss):
    """Sliced score matching (Song, Garg, Shi, Ermon 2019, Eq. 7; SSM-VR Eq. 8) on the perturbed marginals ``p_t``.

    Per projection ``v`` with ``E[v v^T] = I``: ``2 v^T ∇_x s_theta v + (v^T s_theta)^2`` (SSM) or, with
    ``variance_reduction``, ``2 v^T ∇_x s_theta v + ||s_theta||^2`` (SSM-VR: the second term's expectation over
    ``v`` taken exactly), averaged over ``num_projections`` projections and weighted by ``lambda(t)`` as in
    :class:`ISMLoss` (twice the paper's ``½``-form, on :class:`DSMLoss`'s scale). Its expectation equals ISM's.

    Args:
        sde: the forward SDE.
        weighting, reduce_mean, eps, importance_sampling, snr_shift, snr_floor, lr_scale: as in :class:`TimeWeighting`.
        **options: the other :class:`TimeWeighting` options (``sigma_data``, ``min_snr_gamma``,
            ``time_distribution``, ``p_mean``, ``p_std``).
        num_projections: random projections per example (one vector-Jacobian product each).
        variance_reduction: SSM-VR (default) instead of plain SSM.
        probe: distribution of ``v``: ``"gaussian"`` or ``"rademacher"`` (both the paper's; the configs use Rademacher,
            whose estimate of ``v^T ∇s v`` has no variance from the Jacobian's diagonal).
    """

    def __init__(self, sde: SDE, weighting: str = "sigma2", reduce_mean: bool = True, eps: float = 1e-5,
                 importance_sampling: bool = False, num_projections: int = 1, variance_reduction: bool = True,
                 probe: str = "gaussian", snr_shift: float = -2.0, snr_floor: float = 0.2, lr_scale: float = 1.0,
                 **options):
        super().__init__(sde, weighting, reduce_mean, eps, importance_sampling, snr_shift, snr_floor, lr_scale,
                         **options)
        _check_count("num_projections", num_projections)
        if not isinstance(variance_reduction, bool):
            raise ValueError(f"variance_reduction must be true or false, got {variance_reduction!r}")
        if probe not in PROBES:
            raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
        self.num_projections, self.variance_reduction, self.probe = num_projections, variance_reduction, probe

    def _terms(self, score, x, generator, create_graph):
        probes = draw_probes(x, self.num_projections, self.probe, generator)
        total = 0.0
        for v in probes:
            total = total + 2 * projected_jacobian(score, x, v, create_graph)
            if not self.variance_reduction:
                total = total + batch_sum(score * v) ** 2
        total = total / self.num_projections
        return total + batch_sum(score**2) if self.variance_reduction else total


class DDPMLoss(Objective):
    """DDPM's discrete ``L_simple = E_i E || eps - eps_theta(x_i, i) ||^2`` (Ho et al. 2020, Eq. 14).

    The chain (its ``alpha_bar_i``, the draw of ``i`` and the SDE time of each step) is the
    :class:`~scorelab.objectives.vlb.DDPMChain` that the hybrid objective and the variational bound use too: the
    model is queried at the SDE time whose noise level is the chain's (``chain.sde_times``), and its score turned
    into a noise estimate with the discrete ``sqrt(1 - alpha_bar_i)``, so the loss reads
    ``|| sqrt(1 - alpha_bar_i) s_theta + eps ||^2``.

    Args:
        sde: optional SDE whose DDPM chain (:meth:`~scorelab.sde.SDE.ddpm_alphas_cumprod`: VP's linear one or
            the cosine one) overrides the two arguments below; without one, the linear VP SDE of ``beta_min``,
            ``beta_max``.
        num_steps: N, the number of discrete noise levels (1000 in DDPM).
        beta_min, beta_max: the VP schedule end points (``N * beta_1`` and ``N * beta_N``).
        reduce_mean: average (``True``) or sum over data dimensions.
    """

    def __init__(self, sde: SDE | None = None, num_steps: int = 1000, beta_min: float = 0.1, beta_max: float = 20.0,
                 reduce_mean: bool = True):
        sde = sde if sde is not None else VPSDE(beta_min, beta_max)
        alphas_cumprod = sde.ddpm_alphas_cumprod(num_steps)
        if alphas_cumprod is None:
            raise ValueError(f"the DDPM loss needs an SDE that is the limit of DDPM's chain (VP), got "
                             f"{type(sde).__name__}")
        self.num_steps, self.reduce_mean, self.sde = num_steps, reduce_mean, sde
        self.chain = DDPMChain(alphas_cumprod)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """``alpha_bar_1..N`` of the chain, ``[N]`` float64."""
        return self.chain.alphas_cumprod[1:]

    def per_example(self, score_fn: ScoreFn, x0: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-example loss ``[B]``."""
        i = self.chain.draw(x0.shape[0], x0, generator)  # 1..N
        eps = sample_noise(x0.shape, x0, generator)
        x_t = self.chain.q_sample(x0, i, eps)
        reduce = batch_mean if self.reduce_mean else batch_sum
        return reduce((self.chain.score_eps(score_fn, self.sde, x_t, i) - eps) ** 2)
