"""Reference statistics of a dataset split, computed once per (dataset, split, extractor, count) and cached.

Files live in ``<cache_dir>/fid_stats/`` (``$SCORELAB_CACHE``, default ``~/.cache/scorelab``) as
``<dataset>_<split>_<all | n<count>>_<extractor id>.npz``. A cached file is used only if its extractor id,
preprocessing and count match what is asked; a mismatch is an error, never a silent reuse.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..core.console import Progress, say
from ..core.errors import UserError
from ..core.io import cache_dir
from .evaluation import extract_features
from .frechet import FeatureStats

DEFAULT_KEEP_FEATURES = 10_000  # raw reference features kept for KID (80 MB of Inception features)


def stats_file(dataset: str, split: str, extractor_id: str, count: int | None = None,
               cache: str | os.PathLike | None = None) -> Path:
    """The cache path of a dataset split's statistics for an extractor."""
    safe_id = re.sub(r"[^A-Za-z0-9.-]+", "-", extractor_id).strip("-")
    tag = "all" if count is None else f"n{count}"
    return Path(cache or cache_dir()) / "fid_stats" / f"{dataset}_{split}_{tag}_{safe_id}.npz"


def compute_stats(extractor: nn.Module, images: torch.Tensor, batch_size: int = 100,
                  device: torch.device | str = "cpu", keep_features: int = DEFAULT_KEEP_FEATURES,
                  dataset: str = "", split: str = "", seed: int = 0,
                  progress: Callable[[int], None] | None = None, n: int | None = None) -> FeatureStats:
    """Feature statistics of the first ``n`` (default all) uint8 images ``[N, C, H, W]`` (a tensor, or images decoded
    on access such as :class:`~scorelab.data.sources.LazyImages`), keeping ``keep_features`` raw rows for KID."""
    features = extract_features(extractor, images, len(images) if n is None else n, batch_size, device, progress)
    return FeatureStats.from_features(features, keep_features=min(keep_features, len(features)),
                                      generator=torch.Generator().manual_seed(seed),
                                      extractor_id=extractor.extractor_id, preprocessing=extractor.preprocessing,
                                      dataset=dataset, split=split)


def reference_stats(datamodule, split: str, extractor: nn.Module, count: int | None = None,
                    cache: str | os.PathLike | None = None, batch_size: int = 100,
                    device: torch.device | str = "cpu", keep_features: int = DEFAULT_KEEP_FEATURES,
                    rebuild: bool = False, progress_factory: Callable[[int, str], Callable] | None = None,
                    log: Callable[[str], None] = say) -> tuple[FeatureStats, Path]:
    """Load a data module split's statistics from the cache, or compute and cache them.

    Args:
        datamodule: an image data module with ``dataset_name`` and ``images(split)``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        extractor: the feature extractor (on ``device``).
        count: use only the first ``count`` images of the split (None: all of them).
        cache: cache folder (default :func:`~scorelab.core.io.cache_dir`).
        batch_size, device: for the feature pass.
        keep_features: raw features kept for KID.
        rebuild: recompute even if a cached file exists.
        progress_factory: ``(total, description) -> update(n)`` for a progress bar (default: a bar with an ETA on
            rank 0, :class:`~scorelab.core.console.Progress`).
        log: where to say what happened (and, before a pass over the split, what it costs).

    Returns:
        ``(stats, path of the cached file)``.
    """
    if datamodule.domain.kind != "images":
        raise UserError(f"{type(datamodule).__name__} has no images: reference statistics need an image data "
                        "module (data=mnist, cifar10, npz, ...)")
    path = stats_file(datamodule.dataset_name, split, extractor.extractor_id, count, cache)
    if path.is_file() and not rebuild:
        stats = FeatureStats.load(path)
        stats.check(extractor.extractor_id, extractor.preprocessing, count, what="cached reference statistics",
                    num_features=getattr(extractor, "num_features", None))
        log(f"reference statistics: {path} ({stats.count} images of {stats.dataset} {stats.split})")
        return stats, path
    images, _ = datamodule.images(split)  # images decoded on access are read batch by batch, never all at once
    if count is not None and count > len(images):
        raise UserError(f"asked for {count} reference images but {datamodule.dataset_name} {split} has {len(images)}")
    n = len(images) if count is None else count
    log(f"computing reference statistics of {n} {datamodule.dataset_name} {split} images "
        f"({extractor.extractor_id}) -> {path}: one pass of {-(-n // batch_size)} batches of {batch_size}, once "
        "(cached for later runs; a statistics .npz as the reference, e.g. eval.ref=<file>, skips it)")
    if progress_factory is None:
        update = Progress(n, "reference features", "image").update
    else:
        update = progress_factory(n, "reference features")
    stats = compute_stats(extractor, images, batch_size, device, keep_features, datamodule.dataset_name, split,
                          progress=update, n=n)
    stats.save(path)
    return stats, path
