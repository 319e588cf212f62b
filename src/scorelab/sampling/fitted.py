"""Time grids fitted to one model and one solver, and the table of them a checkpoint carries.

A few-step solver is only as good as the times it stops at. "Align Your Steps" (Sabour et al. 2024) and LD3 (Tong
et al. 2024) fit those times to a given model and solver instead of choosing them by hand; this module does the same
with the simplest objective of that family: from the same initial noise ``x_T``, the mean distance (root mean square
over the coordinates of each draw; LD3 uses LPIPS, also a distance) between the N-step solver's output and a fine
solve of the probability-flow ODE (dopri5, then the solver's own final denoising step when it has one).

* **Parameters.** The ``N + 1`` times are monotone by construction: the log-SNR span ``[lambda(T), lambda(eps)]`` is
  cut into ``N`` positive pieces ``softmax(theta)``, mapped back to times with ``sde.t_of_sigma``; the end points stay
  exactly ``T`` and ``eps``. ``theta`` starts at the solver's own grid, so fitting starts from the hand-made grid.
* **Optimiser.** L-BFGS with a strong-Wolfe line search (``torch.optim.LBFGS``) on forward-difference gradients of
  the real sampler, run as it runs at sampling time: no second, differentiable copy of any solver, so every
  deterministic :class:`~scorelab.sampling.GridSampler` can be fitted (the objective is deterministic, as the noise
  draws are fixed). Each gradient costs ``N`` solver runs.
* **Held-out noise.** The error of the fitted and of the original grid is measured on noise draws not used to fit.

Stochastic solvers (SDE-DPM-Solver++, DDIM with ``eta > 0``, EDM churn, predictor-corrector) are refused: their
output depends on fresh noise at every step, which the reference solve does not share.

A fitted grid is stored as a plain list of numbers in a table ``{key: entry}`` (:data:`TABLE_KEY` of a checkpoint,
or a JSON file for the exact toy score), keyed by the solver's class and options and its step count, and checked
on load by :func:`check_table`.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from ..core.errors import UserError
from ..core.rng import PerSampleGenerator
from .base import GridSampler
from .grids import TimeGrid, check_eps
from .ode import ODESampler

TABLE_KEY = "scorelab_fitted_grids"  # the checkpoint entry holding the table
FORMAT = 1
DISTANCES = ("rms", "mse")
_LOGIT_BOUND = 8.0  # |theta_i| <= 8: neighbouring pieces of the log-SNR span differ at most e^16-fold


class FittedGrid(TimeGrid):
    """Explicit time points ``T = t_0 > ... > t_N = eps``, used by a sampler as any other grid.

    Args:
        points: the ``N + 1`` times, decreasing, first ``T`` and last ``eps`` of the sampler that uses it.
    """

    def __init__(self, points: Sequence[float]):
        self.points = tuple(float(p) for p in points)
        self.kind, self.rho, self.sigma_min, self.sigma_max = "fitted", 7.0, None, None
        reason = _points_problem(self.points, None, None, None)
        if reason:
            raise ValueError(f"a fitted grid {reason}")

    def __call__(self, steps: int, eps: float, T: float = 1.0, sde=None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        reason = _points_problem(self.points, steps, eps, T)
        if reason:
            raise ValueError(f"this fitted grid {reason}")
        return torch.tensor(self.points, dtype=torch.float64, device=device)

    def check(self, steps: int, eps: float) -> None:
        reason = _points_problem(self.points, steps, eps, None)
        if reason:
            raise ValueError(f"this fitted grid {reason}")

    def _key(self) -> tuple:
        return ("fitted", self.points)

    def __repr__(self) -> str:
        return f"FittedGrid(steps={len(self.points) - 1})"


def _points_problem(points: Sequence[Any], steps: int | None, eps: float | None, T: float | None) -> str | None:
    """Why ``points`` is not a usable grid (of ``steps`` steps from ``T`` to ``eps`` when given), or None."""
    if not isinstance(points, (list, tuple)) or not all(
            isinstance(p, (int, float)) and not isinstance(p, bool) for p in points):
        return "is not a list of numbers"
    if len(points) < 2:
        return f"has {len(points)} points, fewer than the 2 of one step"
    if steps is not None and len(points) != steps + 1:
        return f"has {len(points)} points where {steps} steps need {steps + 1}"
    if not all(math.isfinite(p) for p in points):
        return "holds a value that is not finite (nan/inf)"
    if not all(a > b for a, b in zip(points[:-1], points[1:], strict=True)):
        bad = next(i for i, (a, b) in enumerate(zip(points[:-1], points[1:], strict=True)) if not a > b)
        return f"is not strictly decreasing (t_{bad} = {points[bad]!r} <= t_{bad + 1} = {points[bad + 1]!r})"
    if not points[-1] > 0:
        return f"ends at t = {points[-1]!r}, not above 0"
    if eps is not None and not math.isclose(points[-1], eps, rel_tol=1e-9, abs_tol=0.0):
        return f"ends at t = {points[-1]!r}, not at the sampler's eps = {eps!r}"
    if T is not None and not math.isclose(points[0], T, rel_tol=1e-9, abs_tol=0.0):
        return f"starts at t = {points[0]!r}, not at the SDE's T = {T!r}"
    return None


# ------------------------------------------------------------------------------------------ which sampler
def sampler_signature(sampler: GridSampler) -> dict[str, Any]:
    """The solver a grid is fitted for: its class and every plain option but ``steps`` and ``grid``."""
    options = {k: v for k, v in sorted(vars(sampler).items())
               if k not in ("steps", "grid") and not k.startswith("_") and isinstance(v, (bool, int, float, str))}
    return {"class": f"{type(sampler).__module__}.{type(sampler).__qualname__}", **options}


def grid_key(sampler: GridSampler) -> str:
    """``"<Class>(option=value, ...) steps=<N>"``: the table key of ``sampler``'s solver at its step count."""
    sig = sampler_signature(sampler)
    options = ", ".join(f"{k}={v!r}" for k, v in sig.items() if k != "class")
    return f"{sig['class'].rsplit('.', 1)[-1]}({options}) steps={sampler.steps}"


# ------------------------------------------------------------------------------------------ the table
_ENTRY_KEYS = {"format": int, "key": str, "sampler": dict, "steps": int, "sde": str, "T": float, "eps": float,
               "ts": list}


def check_table(table: Any, source: str) -> dict[str, dict[str, Any]]:
    """Refuse, in one line, a table of fitted grids that is not exactly what :func:`fit_time_grid` writes.

    Every entry must name its solver and step count, and hold ``steps + 1`` finite, strictly decreasing times from
    ``T`` to ``eps``; its key must be the one its solver gives. Numbers and strings only.

    Args:
        table: the stored value (``None``: no table).
        source: the file, for the message.

    Returns:
        the table (empty when there is none).

    Raises:
        UserError: naming the file, the entry and what is wrong with it.
    """
    if table is None:
        return {}

    def refuse(what: str) -> UserError:
        return UserError(f"{source} holds a fitted time grid that is refused: {what}; refit it with fit_grid.py or "
                         f"remove the {TABLE_KEY!r} entry")

    if not isinstance(table, Mapping):
        raise refuse(f"the table is a {type(table).__name__}, not a mapping")
    for key, entry in table.items():
        if not isinstance(key, str) or not isinstance(entry, Mapping):
            raise refuse(f"entry {key!r} is not a named mapping")
        for name, kind in _ENTRY_KEYS.items():
            value = entry.get(name)
            ok = isinstance(value, kind) and not isinstance(value, bool) if kind is not float else (
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
            if not ok:
                raise refuse(f"entry {key!r} has no valid {name!r} ({kind.__name__} expected, got {value!r})"[:300])
        if entry["format"] != FORMAT:
            raise refuse(f"entry {key!r} is of format {entry['format']}, this scorelab reads {FORMAT}")
        if entry["key"] != key:
            raise refuse(f"entry {key!r} says it is {entry['key']!r}")
        if not all(isinstance(k, str) and isinstance(v, (bool, int, float, str)) for k, v in entry["sampler"].items()):
            raise refuse(f"entry {key!r} describes its solver with values that are not plain numbers or strings")
        try:
            check_eps(entry["eps"], entry["T"])
        except ValueError as exc:
            raise refuse(f"entry {key!r}: {exc}") from None
        reason = _points_problem(entry["ts"], entry["steps"], entry["eps"], entry["T"])
        if reason:
            raise refuse(f"entry {key!r} {reason}")
        for name in ("loss_before", "loss_after", "holdout_before", "holdout_after", "seconds"):
            value = entry.get(name)
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
                raise refuse(f"entry {key!r} has a {name} that is not a number")
    return {str(k): dict(v) for k, v in table.items()}


def find_entry(table: Mapping[str, Mapping[str, Any]], sampler: Any, sde) -> Mapping[str, Any] | None:
    """The table's entry for exactly this solver, options and step count on this SDE, else None."""
    if not table or not isinstance(sampler, GridSampler):
        return None
    entry = table.get(grid_key(sampler))
    if entry is None or entry["sampler"] != sampler_signature(sampler) or entry["steps"] != sampler.steps:
        return None
    if entry["sde"] != repr(sde) or not math.isclose(entry["T"], float(sde.T), rel_tol=1e-9, abs_tol=0.0):
        return None
    return entry


def with_fitted_grid(sampler: Any, table: Mapping[str, Mapping[str, Any]] | None, sde) -> tuple[Any, str | None]:
    """``(sampler, note)``: a copy of ``sampler`` on the grid fitted for it when ``table`` has one, with a line saying
    so; else ``sampler`` itself and a note only when the table holds grids for other solvers or step counts."""
    entry = find_entry(table or {}, sampler, sde)
    if entry is None:
        if table and isinstance(sampler, GridSampler):
            return sampler, (f"fitted time grids exist for {', '.join(sorted(table))}, none for "
                             f"{grid_key(sampler)}: using the sampler's own grid")
        return sampler, None
    fitted = copy.copy(sampler)
    fitted.grid = FittedGrid(entry["ts"])
    gain = ""
    if entry.get("holdout_before") and entry.get("holdout_after") is not None:
        gain = f" (held-out error {entry['holdout_before']:.3g} -> {entry['holdout_after']:.3g})"
    return fitted, f"using the time grid fitted for {entry['key']}{gain}"


def new_entry(sampler: GridSampler, sde, ts: Sequence[float], **info: Any) -> dict[str, Any]:
    """A table entry for ``sampler``'s solver with the grid ``ts`` (plain numbers and strings only)."""
    entry = {"format": FORMAT, "key": grid_key(sampler), "sampler": sampler_signature(sampler),
             "steps": int(sampler.steps), "sde": repr(sde), "T": float(sde.T), "eps": float(sampler.eps),
             "ts": [float(t) for t in ts]}
    entry.update({k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                  for k, v in info.items()})
    return entry


# ------------------------------------------------------------------------------------------ fitting
class _NoNoise(PerSampleGenerator):
    """A generator that refuses every draw: a sampler that finishes with it draws no noise along the way."""

    def __init__(self):
        self.seeds, self.generators, self.device = [], [], torch.device("cpu")

    def draw(self, shape, dtype, kind="normal"):
        raise _DrawsNoise


class _DrawsNoise(Exception):
    pass


def is_deterministic(sampler: Any, score_fn, sde, x_init: torch.Tensor) -> bool:
    """Whether ``sampler`` maps ``x_init`` to its output without drawing noise (tried on the first two rows)."""
    try:
        sampler(score_fn, sde, generator=_NoNoise(), x_init=x_init[:2])
    except _DrawsNoise:
        return False
    return True


@torch.no_grad()
def reference_solution(score_fn, sde, x_init: torch.Tensor, eps: float, denoise: bool, rtol: float = 1e-5,
                       atol: float = 1e-5, batch_size: int | None = None, sampler: GridSampler | None = None,
                       steps: int | None = None) -> torch.Tensor:
    """The exact flow map of ``x_init`` to ``eps`` (dopri5 at ``rtol``/``atol``), then Tweedie's denoiser at ``eps``
    when ``denoise``: what any deterministic solver ending at ``eps`` converges to.

    With ``sampler`` and ``steps``: instead, that solver itself at ``steps`` steps on the uniform log-SNR grid (a
    many-step solve of the same solver: a fixed cost, where dopri5 on a trained network may take hundreds of
    evaluations)."""
    if steps is not None and sampler is not None:
        solver = copy.copy(sampler)
        solver.steps, solver.grid = int(steps), TimeGrid("logsnr")
    else:
        solver = ODESampler("dopri5", eps=eps, rtol=rtol, atol=atol, denoise=denoise)
    step = batch_size or len(x_init)
    return torch.cat([solver(score_fn, sde, x_init=x_init[i:i + step])[0] for i in range(0, len(x_init), step)])


class FitResult(NamedTuple):
    """A fitted grid and what it achieved (mean squared error per coordinate against the reference)."""

    ts: list[float]
    loss_before: float
    loss_after: float
    holdout_before: float
    holdout_after: float
    evaluations: int
    seconds: float


def _lambdas(sde, ts: torch.Tensor) -> torch.Tensor:
    return -torch.log(sde.sigma(ts.to(torch.float64)))


def _grid_of(theta: torch.Tensor, lam_T: float, lam_eps: float, sde, T: float, eps: float) -> list[float]:
    logits = torch.cat([torch.zeros(1, dtype=torch.float64), _LOGIT_BOUND * torch.tanh(theta / _LOGIT_BOUND)])
    pieces = torch.softmax(logits, 0) * (lam_eps - lam_T)
    lam = lam_T + torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(pieces, 0)])
    ts = sde.t_of_sigma(torch.exp(-lam)).to(torch.float64)
    ts[0], ts[-1] = T, eps
    return ts.tolist()


def _theta_of(ts: torch.Tensor, sde) -> torch.Tensor:
    pieces = torch.diff(_lambdas(sde, ts)).clamp_min(1e-12)
    logits = torch.log(pieces / pieces[0])[1:]
    bound = _LOGIT_BOUND * (1 - 1e-6)
    return _LOGIT_BOUND * torch.atanh(logits.clamp(-bound, bound) / _LOGIT_BOUND)


def fit_time_grid(sampler: GridSampler, score_fn, sde, x_fit: torch.Tensor, ref_fit: torch.Tensor,
                  x_holdout: torch.Tensor, ref_holdout: torch.Tensor, max_evals: int = 300, step: float = 1e-3,
                  batch_size: int | None = None, distance: str = "rms",
                  progress: Callable[[int, float], None] | None = None) -> FitResult:
    """Fit the ``steps + 1`` times of a deterministic ``sampler`` to ``score_fn`` (see the module docstring).

    Args:
        sampler: a deterministic :class:`GridSampler`; its own grid is the starting point.
        score_fn: the model.
        sde: its SDE.
        x_fit, ref_fit: initial noise ``[B, ...]`` and the reference outputs (:func:`reference_solution`) to fit on.
        x_holdout, ref_holdout: the same for noise not used to fit.
        max_evals: solver runs at most (each gradient costs ``N``).
        step: the forward-difference step in the logits.
        batch_size: rows per solver call (None: all).
        distance: per draw, ``"rms"``: the root-mean-square difference over its coordinates (a distance, as LD3's
            LPIPS: a few draws that land in another mode do not outweigh all the others); ``"mse"``: its square.
        progress: ``(runs so far, best loss)`` after every solver run.

    Returns:
        the best grid met, with its errors and the original grid's.
    """
    if not isinstance(sampler, GridSampler):
        raise UserError(f"{sampler!r} has no time grid to fit")
    if distance not in DISTANCES:
        raise UserError(f"distance must be one of {DISTANCES}, got {distance!r}")
    T, eps, steps = float(sde.T), float(sampler.eps), int(sampler.steps)
    if steps < 2:
        raise UserError(f"a grid of {steps} step has no inner time to fit: use steps >= 2")
    start = time.perf_counter()
    own = sampler.grid(steps, eps, T, sde=sde).to(torch.float64).cpu()
    lam = _lambdas(sde, torch.tensor([T, eps], dtype=torch.float64)).tolist()
    count = {"n": 0, "best": math.inf, "best_ts": own.tolist()}

    def error(ts: Sequence[float], x: torch.Tensor, ref: torch.Tensor) -> float:
        trial = copy.copy(sampler)
        trial.grid = FittedGrid(ts)
        chunk = batch_size or len(x)
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(x), chunk):
                out, _ = trial(score_fn, sde, x_init=x[i:i + chunk], generator=_NoNoise())
                diff = (out.double() - ref[i:i + chunk].double()).flatten(1)
                per_sample = (diff ** 2).mean(1)
                total += float((per_sample if distance == "mse" else per_sample.sqrt()).sum())
        value = total / len(x)
        return value if math.isfinite(value) else math.inf

    class _Budget(Exception):
        pass

    def loss(theta: torch.Tensor) -> float:
        if count["n"] >= max_evals:
            raise _Budget
        ts = _grid_of(theta, lam[0], lam[1], sde, T, eps)
        if _points_problem(ts, steps, None, None):  # pieces too small for float64 times: treat as worthless
            value = math.inf
        else:
            value = error(ts, x_fit, ref_fit)
        count["n"] += 1
        if value < count["best"]:
            count["best"], count["best_ts"] = value, ts
        if progress is not None:
            progress(count["n"], count["best"])
        return value

    loss_before = error(own.tolist(), x_fit, ref_fit)
    count["best"] = loss_before
    theta = _theta_of(own, sde).clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_evals, max_eval=max_evals,
                                  tolerance_grad=1e-12, tolerance_change=1e-12, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        base = theta.detach().clone()
        f0 = loss(base)
        grad = torch.zeros_like(base)
        if math.isfinite(f0):
            for i in range(len(base)):
                probe = base.clone()
                probe[i] += step
                grad[i] = (loss(probe) - f0) / step
        theta.grad = torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad))
        return torch.tensor(f0 if math.isfinite(f0) else 1e30, dtype=torch.float64)

    try:
        optimiser.step(closure)
    except _Budget:
        pass
    best = count["best_ts"]
    return FitResult(best, loss_before, count["best"], error(own.tolist(), x_holdout, ref_holdout),
                     error(best, x_holdout, ref_holdout), count["n"], time.perf_counter() - start)


def read_table_file(path: str, what: str = "fitted grids file") -> dict[str, dict[str, Any]]:
    """The checked table of a ``fitted_grids.json`` written by ``fit_grid.py`` (or of a checkpoint that holds one)."""
    import json
    from pathlib import Path

    from ..core.io import load_torch_file

    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise UserError(f"{what} not found: {p}; pass the fitted_grids.json that fit_grid.py wrote, or a checkpoint")
    if p.suffix == ".json":
        try:
            table = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{what} {p} cannot be read as JSON ({type(exc).__name__}: {exc})"[:400]) from None
    else:
        stored = load_torch_file(p, "checkpoint")
        table = stored.get(TABLE_KEY) if isinstance(stored, dict) else None
    return check_table(table, str(p))
