"""``sample(cfg)``: draw samples from a checkpoint (or the exact toy oracle), write them as they are made, and
optionally score them (FID / KID, or the MNIST domain metric).

Sample ``i`` uses seed ``seed + i``, so a seed range gives the same samples at any batch size, and on any number
of processes: under ``torchrun --nproc_per_node=N sample.py ...`` batch ``b`` of the seed range is drawn by rank
``b mod N``, every rank writes its own image shards into the one run folder (rank 0's), and rank 0 gathers the
points, NFE counts and picture into the same files a 1-process run writes (:mod:`scorelab.core.distributed`).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from ..core.console import SamplingProgress, say
from ..core.distributed import (
    device_for_rank,
    env_world_size,
    gather,
    is_main_process,
    process_group,
    run_and_gather,
    shard,
    world_size,
)
from ..core.io import save_npz_atomic, write_text_atomic
from ..data.sample_files import write_npz_shard, write_png_images
from ..metrics.evaluation import mean_and_stderr, to_uint8
from ..metrics.label_accuracy import LabelAccuracy, label_accuracy
from ..sampling.base import describe_sampler
from ..sampling.fitted import read_table_file, with_fitted_grid
from ..sampling.seeded import SeededBatch, seeded_batches
from ..tasks import ClassRequest, ImageTask, Sample, Task
from ..viz.plotting import save_class_grid, save_image_grid
from ..viz.teaching import write_teaching_pictures
from .classifier import classifier_request, refuse_score_as_classifier
from .common import build_object, compose_group, resolve_device
from .errors import UserError
from .evaluate import build_evaluator, build_extractor
from .runs import restore_run
from .smoke import cap_sampler

FORMATS = ("npz", "png")
PROTOCOLS = ("single", "edm")


class Trained(NamedTuple):
    """What a ``train.py`` checkpoint rebuilds into."""

    score: torch.nn.Module
    sde: Any
    datamodule: Any
    sampler_cfg: DictConfig | None
    config: DictConfig
    fitted_grids: dict | None = None  # time grids fit_grid.py stored in the checkpoint


def load_trained(ckpt_path: str, use_ema: bool = True, cfg: DictConfig | None = None,
                 data_dir: str | None = None) -> Trained:
    """Rebuild data module, SDE and score model from the config stored in a ``train.py`` checkpoint (read safely,
    its stored config checked before anything is built; :func:`~scorelab.cli.runs.restore_run`).

    Args:
        ckpt_path: a ``.ckpt`` file, a run folder, ``last`` or ``auto``.
        use_ema: sample with the EMA weights.
        cfg: the running command's config: its run folder (for ``last``/``auto``) and data folder (the stored data
            config reads this machine's). None: outside a command (notebooks, benches).
        data_dir: outside a command, the data folder (default ``$SCORELAB_DATA``, else ``./data``).
    """
    run = restore_run(ckpt_path, cfg, data_dir=data_dir, check=refuse_score_as_classifier)
    return Trained(run.module.score_fn(use_ema), run.sde, run.datamodule, run.sampler_cfg, run.config,
                   run.fitted_grids)


def load_score_model(ckpt_path: str, use_ema: bool = True, cfg: DictConfig | None = None,
                     data_dir: str | None = None):
    """``(score, sde, datamodule, sampler config)`` of a ``train.py`` checkpoint (see :func:`load_trained`)."""
    return tuple(load_trained(ckpt_path, use_ema, cfg, data_dir))[:4]


def _check(cfg: DictConfig) -> Task:
    """Refuse bad top-level values, and build the task (whose class checks its own options)."""
    for key in ("n_samples", "batch_size"):
        if key == "batch_size" and cfg[key] == "auto":
            continue
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise UserError(f"{key} must be a positive integer{' or auto' if key == 'batch_size' else ''}, got "
                            f"{cfg[key]!r}")
    if cfg.get("format", "npz") not in FORMATS:
        raise UserError(f"format must be one of {FORMATS}, got {cfg.format!r}")
    if cfg.eval.protocol not in PROTOCOLS:
        raise UserError(f"eval.protocol must be one of {PROTOCOLS}, got {cfg.eval.protocol!r}")
    return build_task(cfg)


def build_task(cfg: DictConfig) -> Task:
    """The task ``cfg.task`` names (``conf/task/<name>.yaml``), built by its class, which refuses bad options."""
    node = cfg.get("task")
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise UserError(f"task must name a task, task=<name> (sample, labels, teach, inpaint, colorize, "
                        f"interpolate), got {node!r}")
    task = build_object(node, "task")
    if not isinstance(task, (Sample, ImageTask)):
        raise UserError(f"task: {node._target_} is neither a scorelab.tasks.Sample (draws samples) nor a "
                        "scorelab.tasks.ImageTask")
    if task.one_process and env_world_size() > 1:
        raise UserError(f"task={task.name} runs in one process; launch it without torchrun")
    return task


DEFAULT_SAMPLER = "dpmpp_2m_sde"  # what train.py stores by default, for model=oracle and older checkpoints


def sampler_keys_as_appends(argv: list[str]) -> list[str]:
    """Let ``sampler.<key>=<value>`` change the checkpoint's own sampler when no ``sampler=<name>`` is given.

    ``conf/sample.yaml`` leaves the ``sampler`` group empty (the checkpoint's sampler is the default), so Hydra
    would refuse ``sampler.steps=20`` as a key outside the config. Given as ``+sampler.steps=20`` instead, it
    arrives as a partial node that :func:`_source` lays over the sampler the model was trained with.
    """
    if any(a.split("=", 1)[0].lstrip("+~") in ("sampler", "sampler@sampler") for a in argv):
        return list(argv)
    return [f"+{a}" if a.startswith("sampler.") and "=" in a else a for a in argv]


def _with_overrides(base: DictConfig, chosen: DictConfig | None, source: str) -> DictConfig:
    """``base`` (a full sampler config) with the keys of a partial ``chosen`` node laid over it."""
    if not chosen:
        return base
    if "_target_" in chosen:  # a complete sampler given on the command line replaces the stored one
        return chosen
    unknown = sorted(set(chosen) - set(base))
    if unknown:
        raise UserError(f"sampler.{unknown[0]}: {source} ({base.get('_target_')}) has no option {unknown[0]!r}; its "
                        f"options are {', '.join(k for k in base if not k.startswith('_'))} (or pick another sampler "
                        "with sampler=<name>)")
    return OmegaConf.merge(base, chosen)


def untrained_source(cfg: DictConfig, what: str = "sample from") -> tuple[torch.nn.Module, Any, Any]:
    """``(score, sde, data module)`` of a command run without a checkpoint: a model with nothing to train, the
    exact score of toy data (``model=oracle``). A model that would need trained weights is refused in one line."""
    score = None
    if cfg.get("model"):
        datamodule, sde = instantiate(cfg.data), instantiate(cfg.sde)
        score = build_object(cfg.model, "model", sde=sde)
    if score is None or any(p.requires_grad for p in score.parameters()):
        raise UserError(f"nothing to {what}: pass ckpt_path=<run dir>/checkpoints/last.ckpt (or the run folder), "
                        "or model=oracle for the exact score of toy data")
    return score, sde, datamodule


def _source(cfg: DictConfig) -> tuple[Trained, DictConfig]:
    """The model to sample (a checkpoint or the exact toy score) and the sampler config to use.

    The sampler is ``cfg.sampler`` when it names one (``sampler=<name>``); otherwise the checkpoint's own sampler
    (:data:`DEFAULT_SAMPLER` for ``model=oracle`` and checkpoints stored without one), with any
    ``sampler.<key>=...`` overrides laid over it.
    """
    chosen = cfg.get("sampler")
    if cfg.get("ckpt_path"):
        trained = load_trained(cfg.ckpt_path, cfg.use_ema, cfg)
        base, source = trained.sampler_cfg, "the checkpoint's sampler"
    else:
        trained = Trained(*untrained_source(cfg), None, cfg)
        base, source = None, "the default sampler"
    if chosen and "_target_" in chosen:
        return trained, cap_sampler(chosen)
    if not base:
        base, source = compose_group(cfg, "sampler", DEFAULT_SAMPLER), "the default sampler"
    return trained, cap_sampler(_with_overrides(base, chosen, source))


def sample(cfg: DictConfig) -> Path:
    """Sample ``cfg.n_samples`` points or images and write them into ``cfg.paths.output_dir``.

    Points: ``samples.npz`` (``x``, ``seeds``, ``nfe``), a scatter plot and, for toy data, ``metrics.json``.
    Images: ``samples/`` (``.npz`` shards or PNGs, written batch by batch), ``samples.png`` (a grid) and
    ``sample.json`` (NFE, seeds, timing and, with ``eval.fid=true``, the metrics).

    Under ``torchrun`` every rank draws its share of the batches (the samples equal a 1-process run's); rank 0
    writes the one set of result files into its run folder.

    With ``task=labels`` sample ``i`` is drawn for a class that depends on ``i`` alone, with classifier-free guidance
    of a class-conditional model or with a noisy classifier (:class:`scorelab.tasks.Labels`); the labels are written
    next to the seeds and, where a classifier exists (toy mixtures, MNIST), the accuracy of the drawn classes. With
    ``task=teach`` pictures that teach are written first (:class:`scorelab.tasks.Teach`).

    With ``task=inpaint | colorize | interpolate`` it runs that image task instead (:mod:`scorelab.tasks.images`).

    Returns:
        The path of ``samples.npz`` (points) or of the ``samples/`` folder (images); for a task, its ``.npz``.
    """
    task = _check(cfg)
    if isinstance(task, ImageTask):
        trained, sampler_cfg = _source(cfg)
        return task.run(trained.score, trained.sde, trained.datamodule, sampler_cfg, resolve_device(cfg.device),
                        Path(cfg.paths.output_dir), cfg.seed, cfg.get("ckpt_path"))
    device = device_for_rank(resolve_device(cfg.device))
    with process_group(device):
        trained, sampler_cfg = _source(cfg)
        shape = tuple(trained.datamodule.sample_shape)
        task.check_model(shape, trained.datamodule.domain.kind)
        sampler = use_fitted_grid(cfg, trained, instantiate(sampler_cfg))
        score = trained.score.to(device).eval()
        resolve_batch_size(cfg, shape, trained.datamodule.domain.kind, device)
        classes = _class_request(task, cfg, trained, score, device)
        out = Path(gather(str(cfg.paths.output_dir))[0])  # rank 0's run folder, the only one of the job
        if is_main_process():
            out.mkdir(parents=True, exist_ok=True)
        teaching = task.teaching(float(trained.sde.T))
        if teaching is not None:  # task=teach (docs/teaching_pictures.md): own small sampler calls, samples unchanged
            write_teaching_pictures(teaching, cfg.seed, trained, sampler, score, shape, device, out)
        if trained.datamodule.domain.kind == "images":
            return _sample_images(cfg, trained, sampler, score, shape, device, out, classes)
        if cfg.eval.fid:
            raise UserError("eval.fid is for images; toy data get exact metrics (metrics.json) without it")
        return _sample_points(cfg, trained, sampler, score, shape, device, out, classes)


def use_fitted_grid(cfg: DictConfig, trained: Trained, sampler):
    """``sampler`` on the time grid ``fit_grid.py`` fitted for exactly this solver and step count, when there is one
    (``fitted_grids``: ``auto`` the checkpoint's, ``false`` none, or a ``fitted_grids.json``), saying so; else as is."""
    setting = cfg.get("fitted_grids", "auto")
    if setting is False or setting in ("none", "false"):
        return sampler
    if setting in (None, "auto", True):
        table = trained.fitted_grids
    else:
        table = read_table_file(str(setting))
    sampler, note = with_fitted_grid(sampler, table, trained.sde)
    if note and is_main_process():
        print(note, flush=True)
    return sampler


def _class_request(task: Sample, cfg: DictConfig, trained: Trained, score, device) -> ClassRequest | None:
    """The classes asked for (``task=labels``): guided by a noisy classifier (``task.classifier``) or by the
    class-conditional model itself (classifier-free guidance); None for unconditional samples."""
    if task.classifier:
        return classifier_request(task, cfg, trained, device)
    return task.request(int(getattr(score, "num_classes", 0) or 0), int(cfg.n_samples))


def _nfe_summary(nfes: list[int]) -> dict[str, Any]:
    """NFE per sample (every sample of a batch shares its batch's) and batched evaluations in total."""
    return {"nfe": max(nfes), "nfe_mean": float(np.mean(nfes)), "nfe_total": int(sum(nfes)), "batches": len(nfes)}


def my_batches(seeds: range | list[int], batch_size: int, rank: int | None = None,
               world: int | None = None) -> list[tuple[int, list[int]]]:
    """This rank's batches of a seed range: ``(position of the first sample, seeds)`` of batches ``rank,
    rank + W, ...`` (the batches of a 1-process run, dealt out by index; their union is the whole range)."""
    seeds = list(seeds)
    batches = [(start, seeds[start:start + batch_size]) for start in range(0, len(seeds), batch_size)]
    return [batches[b] for b in shard(len(batches), rank, world)]


def _draw(sampler, score, sde, shape, batches: list[tuple[int, list[int]]], device,
          classes: ClassRequest | None = None, bar: SamplingProgress | None = None) -> Any:
    """Yield this rank's :class:`SeededBatch` es, each positioned in the whole seed range (and, with ``classes``,
    drawn with the guided score of its positions' labels); ``bar`` moves with every sampler step."""
    for start, chunk in batches:
        fn = score if classes is None else classes.score_for(score, start, len(chunk))
        for batch in seeded_batches(sampler, fn, sde, shape, chunk, len(chunk), device,
                                    on_step=bar.on_step if bar is not None else None):
            if bar is not None:
                bar.batch_done(len(batch.seeds))
            yield SeededBatch(start, batch.seeds, batch.x, batch.nfe)


AUTO_BATCH = {"points": 10_000, "images_cpu": 256, "images_gpu": 1000}
"""``batch_size=auto``: samples per sampler call for 2-D points, and for images of up to 3 x 32 x 32 values on the
CPU and on a GPU (larger images: proportionally fewer, at least 8). The samples do not depend on it."""


def auto_batch_size(shape: tuple[int, ...], kind: str, device: torch.device | str) -> int:
    """The batch ``batch_size=auto`` picks (:data:`AUTO_BATCH`): all toy points at once, a memory-bounded number of
    images."""
    if kind != "images":
        return AUTO_BATCH["points"]
    base = AUTO_BATCH["images_gpu" if torch.device(device).type == "cuda" else "images_cpu"]
    values = math.prod(shape)
    return max(8, int(base * min(1.0, 3 * 32 * 32 / max(1, values))))


def resolve_batch_size(cfg: DictConfig, shape: tuple[int, ...], kind: str, device) -> int:
    """Replace ``batch_size: auto`` in ``cfg`` by :func:`auto_batch_size`; return the batch size."""
    if cfg.batch_size == "auto":
        with open_dict(cfg):
            cfg.batch_size = auto_batch_size(shape, kind, device)
    return int(cfg.batch_size)


def _sampling_cost(cfg, sampler, n: int, what: str, runs: int = 1) -> str:
    """``sampling 64 images: 1 batch of 64 (batch_size=auto) x 40 sampler steps (DPM-Solver++...)``."""
    batches = math.ceil(n / cfg.batch_size)
    steps = getattr(sampler, "steps", None)
    per = f" x {steps} sampler steps" if steps else ""
    total = f" x {runs} seed ranges (eval.protocol=edm)" if runs > 1 else ""
    return (f"sampling {n} {what}{total}: {batches} batch{'es' if batches > 1 else ''} of up to {cfg.batch_size} "
            f"(batch_size){per}, {describe_sampler(sampler)}; fewer: n_samples=..., sampler.steps=...")


def _sample_count(cfg, classes: ClassRequest | None) -> int:
    """``n_samples``, or the size of the ``task.labels=...`` grid (classes x ``per_class``)."""
    return len(classes.labels) if classes is not None else int(cfg.n_samples)


def _sample_points(cfg, trained: Trained, sampler, score, shape, device, out: Path,
                   classes: ClassRequest | None = None) -> Path:
    seeds = range(cfg.seed, cfg.seed + _sample_count(cfg, classes))
    batches = my_batches(seeds, cfg.batch_size)

    def solve() -> list[tuple[int, torch.Tensor, int]]:
        with SamplingProgress(sum(len(c) for _, c in batches), len(batches), getattr(sampler, "steps", None),
                              f"sampling {len(seeds)} points", cfg.get("progress", True) and is_main_process()) as bar:
            return [(b.start, b.x.cpu(), b.nfe) for b in _draw(sampler, score, trained.sde, shape, batches, device,
                                                               classes, bar)]

    parts = sorted((item for part in run_and_gather(solve) for item in part), key=lambda item: item[0])
    path = out / "samples.npz"
    if not is_main_process():
        return path
    x, nfe = torch.cat([p[1] for p in parts]), _nfe_summary([p[2] for p in parts])
    extra = {"labels": np.asarray(classes.labels, dtype=np.int64)} if classes is not None else {}
    path = save_npz_atomic(path, x=x.numpy(), seeds=np.asarray(list(seeds)), nfe=np.array(nfe["nfe"]),
                           nfe_total=np.array(nfe["nfe_total"]), **extra)
    domain = trained.datamodule.domain
    domain.preview(x, out / "samples.png", title=f"{describe_sampler(sampler)}, NFE {nfe['nfe']}")
    metrics = domain.sample_metrics(x, cfg.seed)
    if metrics is not None:
        metrics.update(nfe, sampler=repr(sampler), processes=world_size())
        judge = domain.label_judge(device)
        if classes is not None and judge is not None:  # the exact most probable component judges each point
            metrics.update(classes.summary(), label_accuracy=label_accuracy(judge.predict(x), torch.tensor(
                classes.labels), judge.num_classes))
            print(f"label accuracy {metrics['label_accuracy']['accuracy']:.4f} at guidance {classes.guidance:g}")
        write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
        print(json.dumps({k: metrics[k] for k in ("mode_weights", "exact_nll", "entropy", "energy_distance")}))
    print(f"wrote {len(x)} samples (NFE {nfe['nfe']}) to {path}")
    return path


GRID = 64  # images in the preview grid


def _build_evaluator(cfg, trained: Trained, device):
    """The evaluator on every rank; reference statistics made (and cached) by rank 0 first, then read by the rest."""
    if not cfg.eval.fid:
        return None
    evaluator = build_evaluator(cfg, trained, device) if is_main_process() else None
    gather(None)  # the others wait until the statistics are cached
    return evaluator if evaluator is not None else build_evaluator(cfg, trained, device)


def _build_judge(cfg, trained: Trained, classes: ClassRequest | None, device) -> LabelAccuracy | None:
    """The classifier that judges class-conditional images: MNIST's domain classifier (``eval.label_accuracy``
    ``auto``: on MNIST whenever classes are asked for; ``true``: refuse other data; ``false``: none)."""
    setting = cfg.eval.get("label_accuracy", "auto")
    if setting not in ("auto", True, False):
        raise UserError(f"eval.label_accuracy must be auto, true or false, got {setting!r}")
    if classes is None or setting is False:
        return None
    judge = trained.datamodule.domain.label_judge(
        device, lambda name: build_extractor(compose_group(cfg, "features", name), device))
    if judge is None and setting is True:
        raise UserError("eval.label_accuracy=true needs a classifier of the data: only MNIST has one (the "
                        "domain metric's); use eval.label_accuracy=auto")
    return judge


def _solve_images(cfg, trained: Trained, sampler, score, shape, batches, device, folder: Path, evaluator,
                  desc: str, classes: ClassRequest | None = None, judge: LabelAccuracy | None = None) -> dict[str, Any]:
    """This rank's batches: shards written as made, features added, the grid's first images and the NFE kept
    (every image with a ``task.labels=...`` grid) and, with a ``judge``, the class it sees in each image."""
    data_range = tuple(trained.datamodule.data_range)
    grid, nfes, verdicts, began = [], [], [], time.perf_counter()
    keep = math.inf if classes is not None and classes.per_class else GRID
    bar = SamplingProgress(sum(len(c) for _, c in batches), len(batches), getattr(sampler, "steps", None), desc,
                           cfg.get("progress", True) and is_main_process())
    try:
        for batch in _draw(sampler, score, trained.sde, shape, batches, device, classes, bar):
            images = to_uint8(batch.x, data_range)
            labels = classes.labels[batch.start:batch.start + len(batch.seeds)] if classes is not None else None
            if cfg.format == "png":
                write_png_images(images, folder, batch.start)
            else:
                write_npz_shard(images, folder, batch.start, batch.seeds, labels)
            if evaluator is not None:
                evaluator.update(images)
            if judge is not None:
                verdicts.append((batch.start, judge.predict(images)))
            if batch.start < keep:
                grid.append((batch.start, images[: int(min(keep - batch.start, len(images)))].cpu()))
            nfes.append((batch.start, batch.nfe))
    finally:
        bar.close()
    return {"grid": grid, "nfes": nfes, "verdicts": verdicts, "seconds": time.perf_counter() - began}


def _sample_images(cfg, trained: Trained, sampler, score, shape, device, out: Path,
                   classes: ClassRequest | None = None) -> Path:
    evaluator = _build_evaluator(cfg, trained, device)
    judge = _build_judge(cfg, trained, classes, device)
    n = _sample_count(cfg, classes)
    starts = [cfg.seed] if cfg.eval.protocol == "single" else [cfg.seed + k * n for k in range(3)]
    say(_sampling_cost(cfg, sampler, n, "images", len(starts)))
    runs, folders = [], []
    for base in starts:
        folder = out / ("samples" if len(starts) == 1 else f"samples_seeds_{base}-{base + n - 1}")
        batches = my_batches(range(base, base + n), cfg.batch_size)
        parts = run_and_gather(_solve_images, cfg, trained, sampler, score, shape, batches, device, folder,
                               evaluator, f"sampling seeds {base}..{base + n - 1}", classes, judge)
        nfes = [nfe for _, nfe in sorted(item for p in parts for item in p["nfes"])]
        run = {"seeds": [base, base + n - 1], "folder": str(folder),
               "seconds": round(max(p["seconds"] for p in parts), 2), "processes": len(parts), **_nfe_summary(nfes)}
        if evaluator is not None:
            run.update(evaluator.compute(seed=cfg.seed))  # all-reduces the features: every rank calls it
            evaluator.reset()
        if judge is not None:
            predicted = torch.cat([v for _, v in sorted((item for p in parts for item in p["verdicts"]),
                                                        key=lambda i: i[0])])
            run["label_accuracy"] = label_accuracy(predicted, torch.tensor(classes.labels), judge.num_classes)
            print(f"seeds {base}..{base + n - 1}: label accuracy {run['label_accuracy']['accuracy']:.4f} "
                  f"(guidance {classes.guidance:g})")
        if is_main_process():
            grid = torch.cat([g for _, g in sorted((item for p in parts for item in p["grid"]), key=lambda i: i[0])])
            picture = out / ("samples.png" if len(starts) == 1 else f"{folder.name}.png")
            if classes is not None and classes.per_class:  # one row per class
                save_class_grid(grid, picture, classes.per_class)
            else:
                save_image_grid(grid.float() / 255.0, picture, data_range=(0.0, 1.0))
        runs.append(run)
        folders.append(folder)
    if not is_main_process():
        return folders[0]
    summary = {"n_samples": n, "sampler": repr(sampler), "format": cfg.format, "protocol": cfg.eval.protocol,
               "ckpt_path": cfg.get("ckpt_path"), "processes": world_size(), "runs": runs}
    if classes is not None:
        summary.update(classes.summary(), labels=classes.labels)
        if judge is not None:
            summary["label_accuracy"] = runs[0]["label_accuracy"]["accuracy"]
    if evaluator is not None:
        summary.update(_eval_summary(runs, evaluator.metric_name, evaluator.kernel_name))
    write_text_atomic(out / "sample.json", json.dumps(summary, indent=2))
    print(f"wrote {n * len(starts)} images (NFE {runs[0]['nfe']}) to {', '.join(str(f) for f in folders)}")
    return folders[0]


def _eval_summary(runs: list[dict], metric: str, kernel: str) -> dict[str, Any]:
    """The metric of each seed range, and (several ranges, as in Karras et al. 2022) their minimum and mean."""
    values = [r[metric] for r in runs]
    summary: dict[str, Any] = {metric: values[0] if len(values) == 1 else min(values), f"{metric}_each": values}
    if len(values) > 1:
        summary[f"{metric}_mean"], summary[f"{metric}_stderr"] = mean_and_stderr(values)
    line = " | ".join(f"seeds {r['seeds'][0]}..{r['seeds'][1]}: {metric} {r[metric]:.4f}"
                      + (f", {kernel} {r[kernel]:.5f} ± {r[kernel + '_std']:.5f}" if kernel in r else "")
                      for r in runs)
    print(line + (f" | min {metric} {summary[metric]:.4f}" if len(values) > 1 else ""))
    return summary
