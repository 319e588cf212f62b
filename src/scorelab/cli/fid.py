"""``fid(cfg)``: FID / KID of a folder or ``.npz`` of images against reference statistics, or build those statistics."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from ..core.io import write_text_atomic
from ..data.sample_files import ImageSet
from ..metrics.evaluation import SampleEvaluator
from ..metrics.reference import reference_stats
from .common import progress_bar, resolve_device
from .errors import UserError
from .evaluate import build_extractor, load_reference

MODES = ("eval", "ref")


def result_path(samples: str | Path, metric_name: str) -> Path:
    """Where the JSON goes: next to the samples, ``<samples stem>_<metric>.json``."""
    p = Path(samples).expanduser()
    return p.parent / f"{p.stem if p.is_file() else p.name}_{metric_name}.json"


def score_images(images: ImageSet, evaluator: SampleEvaluator, n: int, batch_size: int, device: torch.device,
                 progress: bool = True) -> None:
    """Feed the first ``n`` images of ``images`` to ``evaluator`` batch by batch."""
    bar, update = progress_bar(n, "sample features", progress)
    try:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            evaluator.update(images.read(start, stop).to(device))
            update(stop - start)
    finally:
        bar.close()


def format_result(result: dict[str, Any], metric: str, kernel: str) -> str:
    """``fid 12.345 | kid 0.01234 ± 0.00045 | n 50000`` (the kernel part when present)."""
    text = f"{metric} {result[metric]:.4f}"
    if kernel in result:
        text += f" | {kernel} {result[kernel]:.5f} ± {result[kernel + '_std']:.5f}"
    return text + f" | n {result['n']} (reference {result['n_reference']})"


def fid(cfg: DictConfig) -> dict[str, Any]:
    """Run ``fid.py``: ``mode=eval`` scores ``cfg.samples`` against ``cfg.ref``; ``mode=ref`` caches statistics.

    Returns:
        The result dictionary (also written as JSON next to the samples in ``eval`` mode).
    """
    if cfg.mode not in MODES:
        raise UserError(f"mode must be one of {MODES}, got {cfg.mode!r}")
    device = resolve_device(cfg.device)
    if cfg.mode == "ref":
        if not cfg.get("data"):
            raise UserError("mode=ref needs the dataset: data=<name> (mnist, cifar10, npz data.path=...)")
        extractor = build_extractor(cfg.features, device)
        stats, path = reference_stats(instantiate(cfg.data), cfg.split, extractor, count=cfg.get("ref_count"),
                                      cache=Path(str(cfg.cache_dir)).expanduser(), batch_size=cfg.batch_size,
                                      device=device, keep_features=cfg.kid_reference_features, rebuild=cfg.rebuild,
                                      progress_factory=lambda total, desc: progress_bar(total, desc, cfg.progress)[1])
        print(f"reference statistics of {stats.count} {stats.dataset} {stats.split} images: {path}")
        return {"path": str(path), "count": stats.count, "extractor_id": stats.extractor_id}
    if not cfg.get("samples"):
        raise UserError("nothing to score: pass samples=<folder of PNGs | .npz | folder of .npz shards>")
    images = ImageSet(cfg.samples)
    ref = cfg.get("ref")
    if ref is None and not cfg.get("data"):
        raise UserError("no reference: pass ref=<statistics .npz> or ref=<data name> (e.g. ref=cifar10)")
    extractor = build_extractor(cfg.features, device)
    reference = load_reference(cfg, cfg, ref, extractor, device,
                               datamodule=instantiate(cfg.data) if ref is None else None)
    evaluator = SampleEvaluator(extractor, reference, cfg.kid_subsets, cfg.kid_subset_size).to(device)
    n = len(images) if cfg.get("n") is None else min(int(cfg.n), len(images))
    if n < 2:
        raise UserError(f"{cfg.samples} has {len(images)} image(s); a Fréchet distance needs at least 2")
    started = time.perf_counter()
    score_images(images, evaluator, n, cfg.batch_size, device, cfg.get("progress", True))
    result = evaluator.compute(seed=cfg.seed)
    result.update(samples=str(Path(cfg.samples).expanduser().resolve()), reference=str(ref or reference.dataset),
                  reference_dataset=reference.dataset, reference_split=reference.split,
                  extractor_id=extractor.extractor_id, preprocessing=extractor.preprocessing,
                  seconds=round(time.perf_counter() - started, 2))
    out = result_path(cfg.samples, evaluator.metric_name)
    write_text_atomic(out, json.dumps(result, indent=2))
    print(format_result(result, evaluator.metric_name, evaluator.kernel_name))
    print(f"wrote {out}")
    return result
