"""``likelihood(cfg)``: negative log-likelihood of a checkpoint, or of the exact toy score, over a data split.

The probability-flow ODE gives ``log p(x) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt`` (Song et al. 2021,
Sec. 4.3 and App. D.2: RK45, rtol = atol = 1e-5, from eps = 1e-5). Images are uniformly dequantised,
``(x + u) / 256`` onto the model's data range, and reported in bits/dim; their divergence uses Hutchinson's trace
estimator with Rademacher probes (Grathwohl et al. 2019, FFJORD). Toy points are reported in nats, next to the exact
NLL of the same points under the true mixture and the mixture's entropy.

``method=vlb`` reports DDPM's variational bound instead (Ho et al. 2020, Eq. 5; :mod:`scorelab.objectives.vlb`):
the discrete chain of the checkpoint's SDE (``sde.ddpm_alphas_cumprod``), the 8-bit values themselves under the
discretised decoder (no dequantisation), the sum over times in full or estimated without bias from
``vlb.timesteps`` times; the reverse variance ``vlb.variance`` is the model's learned one when it has one
(improved DDPM, :mod:`scorelab.objectives.hybrid`), else ``beta_t``, or forced to ``beta`` / ``beta_tilde``.

``repeats`` draws independent dequantisation noise and probes (for the bound: times and noises). The reported
standard error is over examples: each example's values are averaged over the repeats, and ``se = std / sqrt(n)`` of
those per-example means (the error of the split's mean as an estimate of the expected NLL; it includes the
estimator's noise).

Randomness is seeded per (seed, repeat, example) and batches are fixed by index, so results do not depend on the
number of processes: under ``torchrun`` each rank solves its own batches and the results are gathered once at the end
(:mod:`scorelab.core.distributed` explains why).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from ..core.distributed import device_for_rank, is_main_process, process_group, run_and_gather, shard, world_size
from ..core.io import save_npz_atomic, write_text_atomic
from ..metrics.likelihood import PROBES, batch_nll, derive_seed, example_generator
from ..objectives.vlb import LEARNED, VARIANCES, DDPMChain, eps_from_score, pixels_to_data, variational_bound
from ..ops.divergence import choose_divergence
from ..ops.flow import ADAPTIVE
from .common import compose_group, resolve_device
from .errors import UserError
from .sample import load_score_model, untrained_source

SPLITS = ("train", "val", "test")
DIVERGENCES = ("auto", "exact", "hutchinson")
PRIORS = ("auto", "sde", "exact")
ENTROPY_POINTS = 200_000
VLB = "vlb"  # method=vlb: DDPM's variational bound instead of the ODE
VLB_TERMS = ("prior", "decoder", "diffusion")
VLB_VARIANCES = ("auto", LEARNED, *VARIANCES)  # auto: the model's learned variance if it has one, else beta
RESULT_FILE, VALUES_FILE = "likelihood.json", "likelihood_values.npz"
_TEST_POINTS_STREAM = 2**40  # seed key of toy test points, apart from the (repeat, example) keys of the probes


@dataclass(frozen=True)
class Options:
    """Everything a batch solve needs besides the model and the data (resolved from the config)."""

    images: bool
    data_range: tuple[float, float] | None
    device: torch.device
    dtype: torch.dtype
    seed: int
    repeats: int
    batch_size: int
    stochastic: bool
    divergence: str
    probe: str
    method: str
    rtol: float
    atol: float
    eps: float
    prior: str
    prior_logp: Any = None
    vlb_alphas: torch.Tensor | None = None  # method=vlb: the chain's alpha_bar_1..N
    vlb_timesteps: int | None = None
    vlb_variance: str = "beta"
    progress: bool = True  # a progress bar with an ETA (rank 0)


# --- inputs -----------------------------------------------------------------------------------------------------
def _check_config(cfg: DictConfig) -> None:
    """Refuse bad values up front, before anything is loaded or solved."""
    def positive_int(value, allow_none: bool = False) -> bool:
        return (allow_none and value is None) or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)

    checks = [
        (cfg.split in SPLITS, f"split must be one of {SPLITS}, got {cfg.split!r}"),
        (positive_int(cfg.n, allow_none=True), f"n must be a positive integer or null (all), got {cfg.n!r}"),
        (positive_int(cfg.batch_size), f"batch_size must be a positive integer, got {cfg.batch_size!r}"),
        (positive_int(cfg.repeats), f"repeats must be a positive integer, got {cfg.repeats!r}"),
        (cfg.divergence in DIVERGENCES, f"divergence must be one of {DIVERGENCES}, got {cfg.divergence!r}"),
        (cfg.probe in PROBES, f"probe must be one of {PROBES}, got {cfg.probe!r}"),
        (cfg.prior in PRIORS, f"prior must be one of {PRIORS}, got {cfg.prior!r}"),
        (cfg.method in ADAPTIVE or cfg.method == VLB,
         f"method must be an adaptive solver {ADAPTIVE} or {VLB!r} (the variational bound), got {cfg.method!r}"),
        (float(cfg.rtol) > 0 and float(cfg.atol) > 0, f"rtol and atol must be positive, got {cfg.rtol}, {cfg.atol}"),
        (float(cfg.eps) > 0, f"eps must be positive (the start time of the integration), got {cfg.eps}"),
    ]
    if cfg.method == VLB:
        vlb = cfg.get("vlb") or {}
        checks += [
            (positive_int(vlb.get("num_steps")) and vlb.get("num_steps") >= 2,
             f"vlb.num_steps must be an integer >= 2, got {vlb.get('num_steps')!r}"),
            (positive_int(vlb.get("timesteps"), allow_none=True),
             f"vlb.timesteps must be a positive integer or null (all), got {vlb.get('timesteps')!r}"),
            (vlb.get("variance") in VLB_VARIANCES,
             f"vlb.variance must be one of {VLB_VARIANCES}, got {vlb.get('variance')!r}"),
        ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def _check_same_data(given, trained, ckpt_path: str) -> None:
    """The data passed with ``data=`` must have the checkpoint's sample shape and data range."""
    shape, expected = tuple(given.sample_shape), tuple(trained.sample_shape)
    if shape != expected:
        raise UserError(f"data= gives examples of shape {shape} but {ckpt_path} was trained on {expected}: pass the "
                        "data it was trained on, or omit data= to use the checkpoint's own")
    if given.data_range != trained.data_range:
        raise UserError(f"data= scales pixels to {list(given.data_range)} but {ckpt_path} was trained on "
                        f"{list(trained.data_range)}: pass data.data_range={list(trained.data_range)}")


def load_source(cfg: DictConfig) -> tuple[torch.nn.Module, Any, Any, str | None]:
    """The score model, SDE and data module to evaluate: from ``ckpt_path``, or the exact score (``model=oracle``).

    Returns:
        ``(score_fn, sde, datamodule, checkpoint path or None)``.
    """
    given = instantiate(cfg.data) if cfg.get("data") else None
    if cfg.get("ckpt_path"):
        score, sde, trained, _ = load_score_model(cfg.ckpt_path, cfg.use_ema, cfg)
        if given is not None:
            _check_same_data(given, trained, cfg.ckpt_path)
        return score, sde, given or trained, str(cfg.ckpt_path)
    if cfg.get("data") is None and cfg.get("model"):  # the exact score: the two_modes mixture by default
        with open_dict(cfg):
            cfg.data = compose_group(cfg, "data", "toy_two_modes")
    score, sde, datamodule = untrained_source(cfg, "evaluate")
    return score, sde, datamodule, None


def load_split(datamodule, split: str, n: int | None, seed: int) -> torch.Tensor:
    """The first ``n`` examples of a split: uint8 images ``[N, C, H, W]`` or float points ``[N, D]``.

    Toy data: ``train`` is the fixed training set, ``val`` the validation set, ``test`` ``n`` fresh points of the
    mixture drawn with ``seed`` (``n=null``: as many as the validation set).
    """
    if datamodule.domain.kind == "images":
        try:
            x, _ = datamodule.images(split)
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
    else:
        x = datamodule.points(split, n, derive_seed(seed, _TEST_POINTS_STREAM))
    return x[:n] if n is not None else x


def resolve_options(cfg: DictConfig, score, sde, datamodule, x: torch.Tensor, device: torch.device,
                    oracle: bool) -> Options:
    """Turn ``auto`` choices into concrete ones: divergence by dimension, prior and dtype by model.

    ``auto`` divergence is exact up to 16 dimensions, Hutchinson above
    (:func:`scorelab.ops.divergence.choose_divergence`); ``auto`` prior is the exact ``p_T`` of the mixture for the
    oracle (its NLL is then exact up to solver error) and the SDE's ``N(0, I)``-type prior for a checkpoint. The
    oracle runs in float64, a checkpoint in its parameters' dtype.
    """
    images = datamodule.domain.kind == "images"
    dim = x[0].numel()
    divergence = choose_divergence(cfg.divergence, dim)
    if not float(cfg.eps) < sde.T:
        raise UserError(f"eps must be smaller than the SDE's end time T = {sde.T}, got {cfg.eps}")
    prior = cfg.prior if cfg.prior != "auto" else ("exact" if oracle else "sde")
    prior_logp = None
    if cfg.method == VLB:
        return _vlb_options(cfg, score, sde, datamodule, images, device, oracle)
    if prior == "exact":
        prior_logp = datamodule.domain.exact_prior(sde)
    stochastic = images or divergence == "hutchinson"
    repeats = cfg.repeats if stochastic else 1
    if repeats != cfg.repeats and is_main_process():
        print(f"note: repeats={cfg.repeats} ignored: exact divergence on continuous data is deterministic")
    return Options(images=images, data_range=datamodule.data_range, device=device,
                   dtype=torch.float64 if oracle else next(score.parameters()).dtype, seed=int(cfg.seed),
                   repeats=repeats, batch_size=int(cfg.batch_size), stochastic=stochastic, divergence=divergence,
                   probe=cfg.probe, method=cfg.method, rtol=float(cfg.rtol), atol=float(cfg.atol), eps=float(cfg.eps),
                   prior=prior, prior_logp=prior_logp)


def _vlb_options(cfg: DictConfig, score, sde, datamodule, images: bool, device: torch.device,
                 oracle: bool) -> Options:
    """Options of ``method=vlb``: 8-bit images and an SDE with a discrete DDPM chain (VP, linear or cosine)."""
    if not images:
        raise UserError("method=vlb bounds the probability of 8-bit values: it needs image data, not toy points")
    num_steps, timesteps = int(cfg.vlb.num_steps), cfg.vlb.timesteps
    try:
        alphas = sde.ddpm_alphas_cumprod(num_steps)
    except ValueError as exc:
        raise UserError(f"vlb.num_steps={num_steps}: {exc}") from None
    if alphas is None:
        raise UserError(f"method=vlb needs an SDE that is the limit of a discrete DDPM chain (VP: sde=vp or "
                        f"sde=vp_cosine), got {type(sde).__name__}")
    if timesteps is not None and timesteps > num_steps - 1:
        raise UserError(f"vlb.timesteps must be at most vlb.num_steps - 1 = {num_steps - 1} (null: all), "
                        f"got {timesteps}")
    variance = _vlb_variance(cfg.vlb.variance, score)
    return Options(images=True, data_range=datamodule.data_range, device=device,
                   dtype=torch.float64 if oracle else next(score.parameters()).dtype, seed=int(cfg.seed),
                   repeats=cfg.repeats, batch_size=int(cfg.batch_size), stochastic=True, divergence="none",
                   probe=cfg.probe, method=VLB, rtol=float(cfg.rtol), atol=float(cfg.atol), eps=float(cfg.eps),
                   prior="sde", vlb_alphas=alphas, vlb_timesteps=timesteps, vlb_variance=variance)


def _vlb_variance(name: str, score) -> str:
    """The reverse variance of ``method=vlb``: ``auto`` is the model's learned one (Nichol & Dhariwal 2021, Eq. 15)
    when it has one, else ``beta``; ``learned`` needs a model trained with ``model.learn_variance=true``."""
    learned = bool(getattr(score, "learn_variance", False))
    if name == "auto":
        return LEARNED if learned else "beta"
    if name == LEARNED and not learned:
        raise UserError("vlb.variance=learned needs a model with a learned variance (trained with "
                        "model.learn_variance=true, e.g. loss=hybrid); this one has none: use beta or beta_tilde")
    return name


# --- solves -----------------------------------------------------------------------------------------------------
def solve_batch(score, sde, x: torch.Tensor, index: range, repeat: int,
                opts: Options) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
    """Per-example NLL of one batch and one repeat: bits/dim for images, nats for points; and the solve's NFE.

    Args:
        score: the score model ``(x, t [B]) -> [B, ...]``.
        sde: its SDE.
        x: raw examples ``[B, ...]`` (uint8 images or float points).
        index: the examples' global indices (their seeds).
        repeat: the repeat number (its seeds).
        opts: the resolved options.

    Returns:
        ``(values [B] float64 on the CPU, nfe, parts)``; ``parts`` holds the bound's terms ``{prior, decoder,
        diffusion}`` in bits/dim (``[B]`` each) for ``method=vlb``, else nothing.
    """
    if opts.method == VLB:
        gen = example_generator(opts.seed, repeat, index) if opts.stochastic else None
        return _vlb_batch(score, sde, x, gen, opts)
    values, nfe = batch_nll(score, sde, x, index, seed=opts.seed, repeat=repeat,
                            data_range=opts.data_range if opts.images else None, stochastic=opts.stochastic,
                            divergence=opts.divergence, probe=opts.probe, eps=opts.eps, method=opts.method,
                            rtol=opts.rtol, atol=opts.atol, prior_logp=opts.prior_logp, device=opts.device,
                            dtype=opts.dtype)
    return values, nfe, {}


def _vlb_batch(score, sde, x: torch.Tensor, gen, opts: Options) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
    """The variational bound of one batch of 8-bit images, in bits/dim, with its terms (see :func:`solve_batch`)."""
    x0 = pixels_to_data(x, opts.data_range).to(opts.device, opts.dtype)
    with torch.no_grad():
        eps_fn = eps_from_score(score, sde, opts.vlb_alphas, with_variance=opts.vlb_variance == LEARNED)
        res = variational_bound(eps_fn, x0, opts.vlb_alphas,
                                timesteps=opts.vlb_timesteps, variance=opts.vlb_variance,
                                data_range=opts.data_range, generator=gen)
    dim = x0[0].numel()  # nats -> bits/dim of the 8-bit values (no dequantisation offset: these are probabilities)
    parts = {name: DDPMChain.bits_per_dim(getattr(res, name), dim).double().cpu() for name in VLB_TERMS}
    return DDPMChain.bits_per_dim(res.total, dim).double().cpu(), res.nfe, parts


def solve_shard(score, sde, x: torch.Tensor, batches: list[int], opts: Options) -> list[tuple[int, np.ndarray, list]]:
    """Solve this rank's batches alone (no collective: adaptive step counts differ per rank), with a progress bar.

    Returns:
        ``[(batch index, values [B, repeats], [nfe per repeat], {part: [B, repeats]}), ...]``.
    """
    from ..core.console import Progress

    label = "likelihood" if world_size() == 1 else f"likelihood (rank 0 of {world_size()})"
    out = []
    with Progress(len(batches) * opts.repeats, label, "solve", opts.progress and is_main_process()) as bar:
        for b in batches:
            index = range(b * opts.batch_size, min((b + 1) * opts.batch_size, len(x)))
            columns, nfes, parts = [], [], []
            for repeat in range(opts.repeats):
                values, nfe, part = solve_batch(score, sde, x[index.start:index.stop], index, repeat, opts)
                columns.append(values)
                nfes.append(nfe)
                parts.append(part)
                bar.set_postfix_str(f"nfe {nfe}")
                bar.update(1)
            stacked = {k: torch.stack([p[k] for p in parts], dim=1).numpy() for k in parts[0]}
            out.append((b, torch.stack(columns, dim=1).numpy(), nfes, stacked))
    return out


# --- results ----------------------------------------------------------------------------------------------------
def summarize(values: np.ndarray) -> dict[str, Any]:
    """Mean and standard errors of per-example values ``[n, repeats]``.

    Returns:
        ``mean``; ``se``: std / sqrt(n) of the per-example means over repeats (None for n = 1);
        ``per_repeat_mean`` ``[repeats]``; ``se_between_repeats``: std / sqrt(repeats) of those (None for 1 repeat).
    """
    per_example, per_repeat = values.mean(axis=1), values.mean(axis=0)
    n, repeats = values.shape

    def se(v: np.ndarray) -> float | None:
        return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None

    return {"mean": float(per_example.mean()), "se": se(per_example), "n": n, "repeats": repeats,
            "per_repeat_mean": per_repeat.tolist(), "se_between_repeats": se(per_repeat)}


def toy_reference(domain, x: torch.Tensor, model_nll: np.ndarray, seed: int) -> tuple[dict, np.ndarray] | None:
    """The exact NLL of the same points under the true distribution, the paired difference, and the true entropy
    (None when the domain knows neither).

    Returns:
        ``({"exact_nll", "model_minus_exact", "entropy"}: each {"mean", "se"}, exact NLL per point [n])``.
    """
    exact_nll = domain.exact_nll(x)
    if exact_nll is None:
        return None
    exact = exact_nll.numpy()
    entropy, entropy_se = domain.entropy(ENTROPY_POINTS, seed)
    exact_summary = summarize(exact[:, None])
    diff = summarize((model_nll.mean(axis=1) - exact)[:, None])
    return {"exact_nll": {"mean": exact_summary["mean"], "se": exact_summary["se"]},
            "model_minus_exact": {"mean": diff["mean"], "se": diff["se"]},
            "entropy": {"mean": entropy, "se": entropy_se, "points": ENTROPY_POINTS}}, exact


def _merge(parts: list) -> tuple[np.ndarray, list[int], dict[str, np.ndarray]]:
    """Put every rank's batches back in index order: values ``[n, repeats]``, the NFE of every solve, and the
    bound's terms ``{name: [n, repeats]}`` (``method=vlb``; else empty)."""
    batches = sorted((item for part in parts for item in part), key=lambda item: item[0])
    extra = {k: np.concatenate([b[3][k] for b in batches]) for k in batches[0][3]} if batches else {}
    return (np.concatenate([b[1] for b in batches]), [nfe for b in batches for nfe in b[2]], extra)


def _fmt(stats: dict, spec: str = ".4f") -> str:
    mean = format(stats["mean"], spec)
    return mean if stats["se"] is None else f"{mean} ± {format(stats['se'], spec)}"


def report(result: dict) -> None:
    """Print the result: mean ± standard error, the toy comparison when there is one, and NFE."""
    unit, n, r = result["unit"], result["n"], result["repeats"]
    vlb = result.get("vlb")
    how = (f"variational bound, N={vlb['num_steps']}, timesteps={vlb['timesteps'] or 'all'}, "
           f"variance={vlb['variance']}" if vlb else f"divergence={result['divergence']}, prior={result['prior']}")
    print(f"split={result['split']}: {n} examples x {r} repeat(s); ± is the standard error over examples "
          f"(of each example's mean over repeats); {how}")
    toy = result.get("toy")
    if vlb:
        print(f"{'VLB ' + unit:>16}  {_fmt(result)}")
        for name, meaning in (("prior", "L_N, KL(q(x_N | x_0) || N(0, I))"), ("decoder", "L_0, -log p(x_0 | x_1)"),
                              ("diffusion", "sum_{t=2}^N L_{t-1}")):
            print(f"{name:>16}  {_fmt(vlb[name])}  ({meaning})")
    elif toy is None:
        print(f"{unit:>12}  {_fmt(result)}")
    else:
        print(f"{'model NLL':>12}  {_fmt(result)} nats")
        print(f"{'exact NLL':>12}  {_fmt(toy['exact_nll'])} nats  (the same points under the true mixture)")
        print(f"{'difference':>12}  {_fmt(toy['model_minus_exact'], '.2e')} nats  (model - exact, paired)")
        print(f"{'entropy':>12}  {_fmt(toy['entropy'])} nats  (true mixture; the floor of any model's expected NLL)")
    if r > 1:
        print(f"per-repeat means {[round(v, 4) for v in result['per_repeat_mean']]}, "
              f"± {result['se_between_repeats']:.4f} between repeats")
    nfe = result["nfe"]
    print(f"NFE {nfe['total']} in {nfe['solves']} solves ({nfe['per_solve_mean']:.1f} each), "
          f"{result['time_s']:.1f} s on {result['world_size']} process(es)")


def likelihood(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the NLL over ``cfg.split``; rank 0 prints it and writes ``likelihood.json`` and
    ``likelihood_values.npz`` (``index``, ``values [n, repeats]``, toy: ``exact_nll``, ``method=vlb``:
    ``vlb_prior``, ``vlb_decoder``, ``vlb_diffusion``) into ``cfg.paths.output_dir``.

    Everything that can be refused (config values, checkpoint, data, split) is checked before the first solve, and
    the files are written atomically at the end: a failed run leaves no result behind.

    Returns:
        The result dictionary written to ``likelihood.json`` (on every rank).
    """
    _check_config(cfg)
    device = device_for_rank(resolve_device(cfg.device))
    score, sde, datamodule, ckpt = load_source(cfg)
    x = load_split(datamodule, cfg.split, cfg.n, cfg.seed)
    opts = resolve_options(cfg, score, sde, datamodule, x, device, oracle=ckpt is None)
    opts = dataclasses.replace(opts, progress=bool(cfg.get("progress", True)))
    score = score.to(device).eval()
    with process_group(device):
        start = time.perf_counter()
        batches = shard(math.ceil(len(x) / opts.batch_size))  # by batch index: batches are the same at any W
        parts = run_and_gather(solve_shard, score, sde, x, batches, opts)
        elapsed, processes = time.perf_counter() - start, world_size()
    values, nfes, terms = _merge(parts)
    result = {"unit": datamodule.domain.unit, "split": cfg.split, **summarize(values),
              "se_over": "examples (each example's values averaged over repeats first)",
              "nfe": {"total": sum(nfes), "solves": len(nfes), "per_solve_mean": sum(nfes) / len(nfes)},
              "time_s": elapsed, "world_size": processes, "checkpoint": ckpt, "divergence": opts.divergence,
              "prior": opts.prior, "dtype": str(opts.dtype).removeprefix("torch.")}
    arrays = {"index": np.arange(len(x)), "values": values}
    if opts.method == VLB:
        result["vlb"] = {"num_steps": len(opts.vlb_alphas), "timesteps": opts.vlb_timesteps,
                         "variance": opts.vlb_variance, **{k: summarize(v) for k, v in terms.items()}}
        arrays.update({f"vlb_{k}": v for k, v in terms.items()})
    reference = toy_reference(datamodule.domain, x, values, cfg.seed)
    if reference is not None:
        result["toy"], arrays["exact_nll"] = reference
    result.update(values_file=VALUES_FILE, config=OmegaConf.to_container(cfg, resolve=True))
    if is_main_process():
        report(result)
        out = Path(cfg.paths.output_dir)
        save_npz_atomic(out / VALUES_FILE, **arrays)
        write_text_atomic(out / RESULT_FILE, json.dumps(result, indent=2))  # last: its presence means complete
        print(f"wrote {out / RESULT_FILE}")
    return result
