"""Pictures that teach: what a score-based sampler does, drawn from the model itself (Song et al. 2021, Fig. 1-2).

For 2-D points ``sample.py task=teach`` writes

* ``score_field.png``: the model's score ``s(x, t)`` on a grid at a few ``t``, beside the exact score of the
  perturbed data ``p_t`` when the data are a Gaussian mixture (Song et al. 2021, Sec. 3.1), and the error of the
  model as a noise prediction, ``||s(t) (s_model - s_exact)||`` (Ho et al. 2020's epsilon);
* ``trajectories.png``: the reverse paths of a few hundred points from the prior ``x(T)`` to the data;
* ``marginals.gif``: the cloud of samples going from noise to data, one frame per recorded step;

and for images ``denoising_strip.png``: a few samples at ~10 times from ``T`` to 0, each shown as the current state
``x_t`` and as the network's Tweedie estimate ``E[x0 | x_t] = (x_t + s(t)^2 score) / a(t)`` (Efron 2011).

Every picture comes from its own, small sampler call on the run's first seeds (``seed, seed + 1, ...``). Sample ``i``
depends on its seed alone (:class:`~scorelab.core.rng.PerSampleGenerator`), so the recorded paths end at the run's own
first samples, and the run's samples are the same with and without pictures. Every sampler reports its state after
each step to a ``callback`` as ``{"i", "t", "x", "x_mean"}``; :class:`StateRecorder` is the one place that reads it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..core.errors import UserError
from ..core.rng import PerSampleGenerator
from ..sampling.base import batch_time

PICTURES_POINTS = ("score_field.png", "trajectories.png", "marginals.gif")
PICTURES_IMAGES = ("denoising_strip.png",)


@dataclass(frozen=True)
class TeachSettings:
    """What the pictures show (the options of ``task=teach``, :class:`scorelab.tasks.draw.Teach`).

    Args:
        times: the ``t`` of the score field's columns, each in ``(0, T]``.
        grid: arrows per side of the score field.
        paths: reverse paths drawn in ``trajectories.png``.
        cloud: points in ``marginals.gif`` (the paths are the first ``paths`` of them).
        frames: most frames of ``marginals.gif`` (recorded steps are thinned evenly to this many).
        images: samples (rows) of ``denoising_strip.png``.
        columns: times in the strip, ``T`` and the final sample included.
    """

    times: tuple[float, ...] = (0.05, 0.2, 0.5, 1.0)
    grid: int = 15
    paths: int = 300
    cloud: int = 2000
    frames: int = 60
    images: int = 4
    columns: int = 10


# --- recording ---------------------------------------------------------------------------------------------------
class StateRecorder:
    """A sampler callback that keeps the state ``x`` after each step, on the CPU.

    Every scorelab sampler calls its callback after each step with ``{"i", "t", "x", "x_mean"}``: ``t`` the time
    reached and ``x`` the state the sampler continues from (``x_mean`` is the noise-free part of a stochastic step,
    not a point on the path). Samplers with adaptive steps report only their last state.

    Args:
        times: keep only the first state at or below each of these decreasing times (``None``: keep every step);
            bounds the memory for images to one state per time.
    """

    def __init__(self, times: Sequence[float] | None = None):
        self.targets = None if times is None else sorted((float(t) for t in times), reverse=True)
        self.times: list[float] = []
        self.states: list[torch.Tensor] = []

    def __call__(self, info: dict[str, Any]) -> None:
        t = float(info["t"])
        if self.targets is not None:
            if not self.targets or t > self.targets[0]:
                return
            while self.targets and t <= self.targets[0]:
                self.targets.pop(0)
        self.times.append(t)
        self.states.append(info["x"].detach().to("cpu", torch.float32, copy=True))


class Recording(NamedTuple):
    """Recorded reverse paths: ``times [S]`` (decreasing, from ``T``), ``states [S, N, ...]`` (the prior first,
    the returned samples last), the returned ``samples [N, ...]`` and the sampler's NFE."""

    times: torch.Tensor
    states: torch.Tensor
    samples: torch.Tensor
    nfe: int


def record_paths(sampler, score_fn, sde, shape: Sequence[int], seeds: Sequence[int],
                 device: torch.device | str = "cpu", times: Sequence[float] | None = None) -> Recording:
    """Run ``sampler`` on ``seeds`` (one sample per seed, as ``sample.py`` does) and record the states on the way.

    The first state is the prior sample ``x(T)`` the sampler starts from: every sampler draws it first from its
    generator, so a fresh generator on the same seeds gives it again. The last is the returned sample (when it
    differs from the last reported state, e.g. after a final denoising step, it is added at ``t = 0``).

    Args:
        sampler, score_fn, sde: as given to :func:`~scorelab.sampling.seeded.seeded_batches`.
        shape: shape of one sample.
        seeds: one seed per recorded sample.
        device: where to sample.
        times: keep only the states first reaching these times (see :class:`StateRecorder`); ``None``: all.
    """
    seeds = [int(s) for s in seeds]
    batch = (len(seeds), *shape)
    prior = sde.prior_sampling(batch, generator=PerSampleGenerator(seeds, device), device=device)
    recorder = StateRecorder(times)
    with torch.no_grad():
        x, nfe = sampler(score_fn, sde, batch, generator=PerSampleGenerator(seeds, device), device=device,
                         callback=recorder)
    samples = x.detach().to("cpu", torch.float32)
    ts, states = [float(sde.T)] + recorder.times, [prior.to("cpu", torch.float32)] + recorder.states
    if not torch.equal(states[-1], samples):
        ts.append(0.0)
        states.append(samples)
    return Recording(torch.tensor(ts, dtype=torch.float64), torch.stack(states), samples, int(nfe))


# --- the score field ----------------------------------------------------------------------------------------------
class ScoreField(NamedTuple):
    """The score on a square grid: ``xs [n]`` (the same for both axes), ``times [K]``, ``std [K]`` (the marginal
    std ``s(t)``), ``model [K, n, n, 2]`` and ``exact [K, n, n, 2]`` (``None`` without an exact score); entry
    ``[k, i, j]`` is at the point ``(xs[j], xs[i])``."""

    xs: torch.Tensor
    times: torch.Tensor
    std: torch.Tensor
    model: torch.Tensor
    exact: torch.Tensor | None


def grid_points(limit: float, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``xs [n]`` from ``-limit`` to ``limit`` and the grid's points ``[n * n, 2]``, row ``i * n + j`` being
    ``(xs[j], xs[i])``."""
    xs = torch.linspace(-limit, limit, n)
    yy, xx = torch.meshgrid(xs, xs, indexing="ij")
    return xs, torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


@torch.no_grad()
def score_field(score_fn, sde, times: Sequence[float], limit: float, n: int, exact_fn=None,
                device: torch.device | str = "cpu") -> ScoreField:
    """Evaluate ``score_fn`` (and ``exact_fn``, e.g. a mixture's ``oracle(sde)``) on an ``n x n`` grid at ``times``."""
    xs, points = grid_points(limit, n)
    points = points.to(device)

    def on_grid(fn) -> torch.Tensor:
        return torch.stack([fn(points, batch_time(t, points)).float().cpu().reshape(n, n, 2) for t in times])

    t = torch.tensor([float(v) for v in times])
    return ScoreField(xs, t, sde.marginal_std(t).float(), on_grid(score_fn),
                      on_grid(exact_fn) if exact_fn is not None else None)


def view_limit(reference: torch.Tensor, sde) -> float:
    """Half-width of a square view of 2-D data: the data with a margin, widened towards the prior's ``3 c``
    (a VP prior ``N(0, I)`` fits) but at most to twice the data's extent (a VE prior is far wider)."""
    data = float(reference.abs().max())
    return 1.15 * max(data, min(3.0 * float(sde.prior_std), 2.0 * data))


# --- images --------------------------------------------------------------------------------------------------------
class DenoisingProgression(NamedTuple):
    """``times [C]`` from ``T`` to 0, the states ``x_t [N, C, ...]`` and Tweedie estimates ``x0_hat [N, C, ...]``
    (at the final column both are the returned sample)."""

    times: torch.Tensor
    states: torch.Tensor
    denoised: torch.Tensor


@torch.no_grad()
def denoising_progression(recording: Recording, score_fn, sde, device: torch.device | str = "cpu"
                          ) -> DenoisingProgression:
    """The network's estimate of the clean sample ``E[x0 | x_t] = (x_t + s(t)^2 s_theta(x_t, t)) / a(t)`` at every
    recorded state (one score evaluation each); the returned sample (``t = 0``) is its own estimate."""
    denoised = []
    for t, x in zip(recording.times.tolist(), recording.states, strict=True):
        if t <= 0.0:
            denoised.append(x)
            continue
        xd = x.to(device)
        tb = batch_time(t, xd)
        denoised.append(sde.data_prediction(xd, tb, score_fn(xd, tb)).float().cpu())
    return DenoisingProgression(recording.times, recording.states.transpose(0, 1),
                                torch.stack(denoised).transpose(0, 1))


def strip_times(T: float, columns: int) -> list[float]:
    """The ``columns - 2`` times strictly between ``T`` (the prior, first column) and 0 (the sample, last column)."""
    return torch.linspace(T, 0.0, columns)[1:-1].tolist()


# --- sample.py -----------------------------------------------------------------------------------------------------
def write_teaching_pictures(settings: TeachSettings, seed: int, trained, sampler, score_fn, shape: Sequence[int],
                            device, out: Path) -> list[Path]:
    """``sample.py task=teach``'s pictures, drawn on seeds ``seed, seed + 1, ...`` and written into ``out``; returns
    their paths.

    Raises:
        UserError: data that are neither 2-D points nor images.
    """
    from ..core.distributed import is_main_process
    from ..sampling.base import describe_sampler
    from . import teaching_plots as plots

    shape, domain = tuple(shape), trained.datamodule.domain
    images = domain.kind == "images"
    if not images and shape != (2,):
        raise UserError(f"task=teach draws 2-D points and images; these samples have shape {shape}")
    if not is_main_process():
        return []
    out.mkdir(parents=True, exist_ok=True)
    sde, seeds = trained.sde, range(seed, seed + (settings.images if images else settings.cloud))
    if images:
        recording = record_paths(sampler, score_fn, sde, shape, seeds, device, strip_times(sde.T, settings.columns))
        progression = denoising_progression(recording, score_fn, sde, device)
        paths = [plots.draw_denoising_strip(progression, out / "denoising_strip.png",
                                            tuple(trained.datamodule.data_range), describe_sampler(sampler))]
    else:
        recording = record_paths(sampler, score_fn, sde, shape, seeds, device)
        truth = domain.reference(5000)  # true points of a known mixture, else None
        reference = truth if truth is not None else recording.samples
        limit = view_limit(reference, sde)
        exact = domain.exact_score(sde) if truth is not None else None
        judge = domain.label_judge(device)  # colours the paths by the component they land in
        field = score_field(score_fn, sde, settings.times, limit, settings.grid,
                            exact.to(device) if exact is not None else None, device)
        paths = [plots.draw_score_field(field, out / "score_field.png", exact),
                 plots.draw_trajectories(recording, out / "trajectories.png", limit, settings.paths, reference,
                                         judge.predict if judge is not None else None, describe_sampler(sampler)),
                 plots.write_marginals_gif(recording, out / "marginals.gif", limit, settings.frames, reference)]
    if len(recording.times) <= 3:
        print(f"teach: {sampler!r} reported {len(recording.times) - 2} intermediate state(s); the pictures show "
              "little of the path (adaptive ODE solvers report only their end)")
    print(f"teach: wrote {', '.join(str(p) for p in paths)}")
    return paths
