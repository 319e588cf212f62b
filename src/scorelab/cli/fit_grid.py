"""``fit_grid(cfg)``: fit a few-step solver's time grid to one model and save it with the model (``fit_grid.py``).

With a checkpoint the grid is written into it (``scorelab_fitted_grids``, atomically; or into a copy, ``out=``),
where ``sample.py`` and the FID callback find it. With the exact toy score (``model=oracle``) it goes to a
``fitted_grids.json`` that ``sample.py fitted_grids=<file>`` reads. The method is
:mod:`scorelab.sampling.fitted`'s.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from ..core.io import atomic_path, write_text_atomic
from ..sampling import GridSampler
from ..sampling.fitted import (
    TABLE_KEY,
    check_table,
    fit_time_grid,
    grid_key,
    is_deterministic,
    new_entry,
    read_table_file,
    reference_solution,
)
from .common import compose_group, progress_bar, resolve_device
from .errors import UserError
from .restore import read_stored_run
from .sample import Trained, _with_overrides, load_trained, untrained_source
from .smoke import cap_sampler, smoke_active

ORACLE_SAMPLER = "dpmpp_2m"  # model=oracle without sampler=: the deterministic DPM-Solver++(2M)
ORACLE_FILE = "fitted_grids.json"
DISTANCE_WORDS = {"rms": "mean rms distance", "mse": "mean squared error"}


def _check(cfg: DictConfig) -> None:
    for key in ("n_fit", "n_holdout", "batch_size", "max_evals"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise UserError(f"{key} must be a positive integer, got {cfg[key]!r}")
    steps = cfg.get("steps")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 2):
        raise UserError(f"steps must be an integer >= 2 (a grid with inner times to fit) or null, got {steps!r}")
    if cfg.get("distance", "rms") not in DISTANCE_WORDS:
        raise UserError(f"distance must be one of {', '.join(DISTANCE_WORDS)}, got {cfg.get('distance')!r}")
    ref_steps = cfg.reference.get("steps")
    if ref_steps is not None and (not isinstance(ref_steps, int) or isinstance(ref_steps, bool) or ref_steps < 2):
        raise UserError(f"reference.steps must be an integer >= 2 or null (dopri5), got {ref_steps!r}")
    for key in ("rtol", "atol"):
        value = cfg.reference.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise UserError(f"reference.{key} must be a positive number, got {value!r}")


def _source(cfg: DictConfig) -> tuple[Trained, DictConfig]:
    """The model and the sampler config to fit (the checkpoint's own sampler unless one is named)."""
    chosen = cfg.get("sampler")
    if cfg.get("ckpt_path"):
        trained = load_trained(cfg.ckpt_path, cfg.use_ema, cfg)
        base, source = trained.sampler_cfg, "the checkpoint's sampler"
    else:
        trained = Trained(*untrained_source(cfg, "fit a grid for"), None, cfg)
        base, source = None, "the default sampler"
    if chosen and "_target_" in chosen:
        sampler_cfg = chosen
    else:
        if not base:
            base, source = compose_group(cfg, "sampler", ORACLE_SAMPLER), "the default sampler"
        sampler_cfg = _with_overrides(base, chosen, source)
    sampler_cfg = copy.deepcopy(sampler_cfg)
    if cfg.get("steps") is not None:
        with open_dict(sampler_cfg):
            sampler_cfg.steps = int(cfg.steps)
    return trained, cap_sampler(sampler_cfg)


def _noise(sde, shape, n: int, seed: int, device, dtype) -> torch.Tensor:
    return sde.prior_sampling((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


def fit_grid(cfg: DictConfig) -> dict[str, Any]:
    """Fit the grid of ``cfg``'s sampler at its step count and write it (see the module docstring).

    Returns:
        ``{"out", "key", "ts", "loss_before", "loss_after", "holdout_before", "holdout_after", "evaluations",
        "seconds", "written"}``.
    """
    _check(cfg)
    device = resolve_device(cfg.device)
    trained, sampler_cfg = _source(cfg)
    sampler = instantiate(sampler_cfg)
    if not isinstance(sampler, GridSampler):
        raise UserError(f"{sampler!r} walks no time grid: fit_grid.py fits the grid of a few-step solver "
                        "(e.g. sampler=dpmpp_2m, ipndm, unipc, deis, ddim, edm)")
    sde, score = trained.sde, trained.score.to(device).eval()
    shape = tuple(trained.datamodule.sample_shape)
    exact = not any(True for _ in score.parameters())  # the exact toy score: float64, so tiny differences count
    dtype = torch.float64 if exact else torch.float32
    x_fit = _noise(sde, shape, cfg.n_fit, cfg.seed, device, dtype)
    x_hold = _noise(sde, shape, cfg.n_holdout, cfg.seed + cfg.n_fit, device, dtype)
    if not is_deterministic(sampler, score, sde, x_fit):
        raise UserError(f"{sampler!r} draws fresh noise at every step, which the reference solve cannot share: "
                        "fit_grid.py fits deterministic solvers (e.g. sampler=dpmpp_2m instead of dpmpp_2m_sde, "
                        "DDIM with eta=0, EDM without churn)")
    key = grid_key(sampler)
    print(f"fitting the {sampler.steps + 1}-point time grid of {key} on {cfg.n_fit} noise draws "
          f"({cfg.n_holdout} held out)", flush=True)
    rtol, atol = float(cfg.reference.rtol), float(cfg.reference.atol)
    ref_steps = cfg.reference.get("steps")
    described = f"{ref_steps} steps of the same solver" if ref_steps else f"dopri5 rtol={rtol:g} atol={atol:g}"
    bar, _ = progress_bar(2, f"reference solves ({described})", cfg.progress, unit="set")
    ref_fit = reference_solution(score, sde, x_fit, sampler.eps, sampler.denoise, rtol, atol, cfg.batch_size,
                                 sampler, ref_steps)
    bar.update(1)
    ref_hold = reference_solution(score, sde, x_hold, sampler.eps, sampler.denoise, rtol, atol, cfg.batch_size,
                                  sampler, ref_steps)
    bar.update(1)
    bar.close()
    bar, _ = progress_bar(cfg.max_evals, "fitting the grid", cfg.progress, unit="solve")

    def progress(n: int, best: float) -> None:
        bar.set_postfix_str(f"error {best:.3g}")
        bar.set_to(n)

    try:
        result = fit_time_grid(sampler, score, sde, x_fit, ref_fit, x_hold, ref_hold, max_evals=cfg.max_evals,
                               batch_size=cfg.batch_size, distance=str(cfg.get("distance", "rms")),
                               progress=progress)
    finally:
        bar.close()
    summary = {"key": key, "ts": result.ts, "loss_before": result.loss_before, "loss_after": result.loss_after,
               "holdout_before": result.holdout_before, "holdout_after": result.holdout_after,
               "evaluations": result.evaluations, "seconds": round(result.seconds, 2), "written": False, "out": None}
    words = DISTANCE_WORDS[cfg.get("distance", "rms")]
    line = (f"{words} from the reference: fit {result.loss_before:.4g} -> {result.loss_after:.4g}, "
            f"held out {result.holdout_before:.4g} -> {result.holdout_after:.4g} ({result.evaluations} solver runs, "
            f"{result.seconds:.0f} s)")
    print(line, flush=True)
    print("fitted times: " + ", ".join(f"{t:.5g}" for t in result.ts), flush=True)
    if not result.holdout_after < result.holdout_before and not smoke_active():  # a smoke run writes its files
        print("the fitted grid does not beat the sampler's own grid on the held-out noise: nothing written "
              "(try more n_fit or max_evals)", flush=True)
        return summary
    entry = new_entry(sampler, sde, result.ts, loss_before=result.loss_before, loss_after=result.loss_after,
                      holdout_before=result.holdout_before, holdout_after=result.holdout_after,
                      n_fit=cfg.n_fit, n_holdout=cfg.n_holdout, seconds=round(result.seconds, 2),
                      reference=described, distance=str(cfg.get("distance", "rms")))
    out = _write(cfg, trained, entry)
    summary.update(written=True, out=str(out))
    print(f"wrote the fitted grid for {key} to {out}", flush=True)
    return summary


def _write(cfg: DictConfig, trained: Trained, entry: dict[str, Any]) -> Path:
    """Add ``entry`` to the table of the checkpoint (or of the oracle's JSON file) and write it atomically."""
    if cfg.get("ckpt_path"):
        stored = read_stored_run(cfg.ckpt_path, cfg, "ckpt_path")
        checkpoint = copy.copy(stored.checkpoint)
        table = check_table(checkpoint.get(TABLE_KEY), stored.path)
        table[entry["key"]] = entry
        check_table(table, "the new table")
        checkpoint[TABLE_KEY] = table
        out = Path(cfg.out).expanduser() if cfg.get("out") else Path(stored.path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            torch.save(checkpoint, tmp)
        return out
    out = Path(cfg.out).expanduser() if cfg.get("out") else Path(cfg.paths.output_dir) / ORACLE_FILE
    table = read_table_file(str(out)) if out.is_file() else {}
    table[entry["key"]] = entry
    check_table(table, "the new table")
    return write_text_atomic(out, json.dumps(table, indent=2))
