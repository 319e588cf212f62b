"""What ``fid.py``, ``sample.py eval.fid=true`` and the FID callback share: a feature extractor from config and
reference statistics from a file, a data config name, or a data module (cached under ``<cache_dir>/fid_stats``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from ..metrics.evaluation import SampleEvaluator
from ..metrics.frechet import FeatureStats
from ..metrics.reference import reference_stats
from .common import compose_group, progress_bar


def build_extractor(features_cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    """Instantiate a feature extractor config (``conf/features/*.yaml``) on ``device``, in evaluation mode."""
    return instantiate(features_cfg).to(device).eval()


def load_reference(settings: DictConfig, root: DictConfig, ref: Any, extractor: torch.nn.Module,
                   device: torch.device, datamodule: Any = None) -> FeatureStats:
    """Reference statistics for ``extractor``, refused if made with another extractor, preprocessing or count.

    Args:
        settings: ``split``, ``ref_count``, ``batch_size``, ``kid_reference_features``, ``rebuild``,
            ``cache_dir`` and ``progress`` (top level of ``fid.yaml``, ``eval`` of ``sample.yaml``).
        root: the whole config (to compose ``data=<ref>`` against its ``paths``).
        ref: a statistics ``.npz``; a data config name; or None to use ``datamodule``.
        extractor: the feature extractor.
        device: where features are computed.
        datamodule: the data module used when ``ref`` is None.
    """
    if ref is not None and (str(ref).endswith(".npz") or Path(str(ref)).expanduser().is_file()):
        stats = FeatureStats.load(str(ref))
        stats.check(extractor.extractor_id, extractor.preprocessing, settings.get("ref_count"), what="ref")
        return stats
    if ref is not None:
        datamodule = instantiate(compose_group(root, "data", str(ref)))

    def progress(total: int, desc: str):
        return progress_bar(total, desc, settings.get("progress", True))[1]

    stats, _ = reference_stats(datamodule, settings.split, extractor, count=settings.get("ref_count"),
                               cache=Path(str(settings.cache_dir)).expanduser(), batch_size=settings.batch_size,
                               device=device, keep_features=settings.kid_reference_features,
                               rebuild=settings.rebuild, progress_factory=progress)
    return stats


def build_evaluator(cfg: DictConfig, trained, device: torch.device) -> SampleEvaluator:
    """The evaluator of ``sample.py eval.fid=true``: ``cfg.eval.features`` against ``cfg.eval.ref`` (default: the
    checkpoint's own dataset, ``cfg.eval.split``)."""
    settings = cfg.eval
    # auto: the data's own metric where one exists (fd_mnist for MNIST), Inception (FID) otherwise
    name = trained.datamodule.domain.default_features() if settings.features == "auto" else settings.features
    extractor = build_extractor(compose_group(cfg, "features", name), device)
    # ref = None: the checkpoint's own data module, which reads this machine's paths.data_dir
    reference = load_reference(settings, cfg, settings.ref, extractor, device, trained.datamodule)
    return SampleEvaluator(extractor, reference, settings.kid_subsets, settings.kid_subset_size).to(device)
