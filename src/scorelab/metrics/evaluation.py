"""FID / KID (or a domain Fréchet distance) of generated images against cached reference statistics.

Features are extracted once per image by a feature extractor (Inception-v3 for FID, a domain classifier for
e.g. ``fd_mnist``) and fed to torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance``
through an identity "network", so one pass serves both metrics, precision / recall (Kynkäänniemi et al. 2019) and
the class histogram. Under DDP every rank
updates with its own share and ``compute()`` all-reduces (call it on every rank). The reference set enters the
metric states on one rank only, so the reduction counts it once.

A feature extractor is an ``nn.Module`` mapping uint8 images ``[B, C, H, W]`` to ``[B, F]`` with attributes
``num_features``, ``extractor_id``, ``preprocessing``, ``metric_name`` (``"fid"``, ``"fd_mnist"``) and
optionally ``kernel_metric_name`` and ``logits(images) -> [B, K]`` (for the class histogram).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics import Metric

from .frechet import FeatureStats


class _Features(nn.Module):
    """The identity on precomputed features, presented to torchmetrics as its "feature network"."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.double()


class ClassHistogram(Metric):
    """Counts of predicted classes, summed over ranks."""

    def __init__(self, num_classes: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor) -> None:
        self.counts += torch.bincount(logits.argmax(dim=1), minlength=self.num_classes).to(self.counts.device)

    def compute(self) -> torch.Tensor:
        return self.counts.clone()


class PrecisionRecall(Metric):
    """Improved precision and recall (Kynkäänniemi et al. 2019) of generated features against real ones.

    Each set's k-nearest-neighbour balls (radius: the distance to its k-th neighbour, k = 3 in the paper) estimate
    its manifold: precision is the share of generated samples inside some real ball, recall the share of real samples
    inside some generated ball. A set against itself scores 1 and 1; two disjoint sets 0 and 0. The computation is
    torch-fidelity's (``calculate_precision_recall_part``). Both radii depend on the set sizes, so the two sets are
    compared at one size, as in the paper: the larger is cut to the smaller's size (the generated set to its first
    rows, the real one to a fixed random subset, :meth:`reference_subset`: reference features may be stored in class
    order).

    Args:
        real: real features ``[N, F]`` (every rank holds them; they are not a metric state).
        k: the neighbourhood size.
    """

    def __init__(self, real: torch.Tensor, k: int = 3, **kwargs: Any):
        super().__init__(**kwargs)
        self.real, self.k = torch.as_tensor(real).float(), int(k)
        self.add_state("fake", [], dist_reduce_fx="cat")

    def update(self, features: torch.Tensor) -> None:
        self.fake.append(features.detach().float())

    def reference_subset(self, n: int) -> torch.Tensor:
        """``n`` of the real features: all of them when there are no more, else a random subset of fixed seed (0)."""
        if n >= len(self.real):
            return self.real
        idx = torch.randperm(len(self.real), generator=torch.Generator().manual_seed(0))[:n].sort().values
        return self.real[idx]

    def compute(self) -> tuple[float, float]:
        from torch_fidelity.metric_prc import calculate_precision_recall_part

        fake = torch.cat(self.fake) if isinstance(self.fake, list) else self.fake
        n = min(len(fake), len(self.real))
        if n <= self.k:
            raise ValueError(f"precision and recall with k = {self.k} need more than {self.k} samples in each set, "
                             f"got {len(fake)} generated and {len(self.real)} real")
        precision, recall = calculate_precision_recall_part(fake[:n].cpu(), self.reference_subset(n), self.k, 10_000)
        return float(precision), float(recall)


def feature_name(extractor: nn.Module) -> str:
    """The name of an extractor's feature space: ``inception`` for ``fid``, ``mnist`` for ``fd_mnist``."""
    metric = extractor.metric_name
    return "inception" if metric == "fid" else metric.removeprefix("fd_")


def _is_reference_rank() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
        torch.distributed.get_rank() == 0


def kernel_metric_name(extractor: nn.Module) -> str:
    """``kid`` for Inception, ``kd_<domain>`` for a domain extractor (``fd_mnist`` -> ``kd_mnist``)."""
    name = getattr(extractor, "kernel_metric_name", None)
    return name or "k" + extractor.metric_name.removeprefix("f")


class SampleEvaluator(nn.Module):
    """Fréchet distance, kernel distance and class histogram of generated images against reference statistics.

    Args:
        extractor: a feature extractor (see the module docstring).
        reference: statistics of the reference set, made with the same extractor and preprocessing (refused
            otherwise); its ``features`` (a subset of raw reference features), when present, give the KID.
        kid_subsets: number of random subsets KID averages over (100 as in torch-fidelity).
        kid_subset_size: size of each subset (1000), lowered to the smaller set's size when needed.
        reference_rank: whether this process holds the reference in the metric states (default: rank 0).
    """

    def __init__(self, extractor: nn.Module, reference: FeatureStats, kid_subsets: int = 100,
                 kid_subset_size: int = 1000, reference_rank: bool | None = None):
        super().__init__()
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        reference.check(extractor.extractor_id, extractor.preprocessing, num_features=int(extractor.num_features))
        self.extractor, self.reference = extractor, reference
        self.metric_name, self.kernel_name = extractor.metric_name, kernel_metric_name(extractor)
        holds_reference = _is_reference_rank() if reference_rank is None else reference_rank
        f = int(extractor.num_features)
        self.fid = FrechetInceptionDistance(feature=_Features(f), reset_real_features=False)
        if holds_reference:
            self._load_reference_moments(reference)
        self.kid = None
        if reference.features is not None and len(reference.features) >= 2:
            self.kid = KernelInceptionDistance(feature=_Features(f), subsets=kid_subsets, subset_size=kid_subset_size,
                                               reset_real_features=False)
            if holds_reference:
                self.kid.real_features.append(torch.as_tensor(reference.features).double())
        self.prc = None  # precision / recall, on the reference's kept raw features
        if reference.features is not None and len(reference.features) > 3:
            self.prc = PrecisionRecall(torch.as_tensor(reference.features))
        logits = getattr(extractor, "logits", None)
        num_classes = getattr(extractor, "num_classes", None)
        self.histogram = ClassHistogram(num_classes) if callable(logits) and num_classes else None

    def _load_reference_moments(self, ref: FeatureStats) -> None:
        # torchmetrics keeps sum(x) and sum(x x^T); rebuild them from (mean, unbiased covariance, count).
        mu = torch.as_tensor(ref.mu, dtype=torch.float64)
        sigma = torch.as_tensor(ref.sigma, dtype=torch.float64)
        self.fid.real_features_sum = mu * ref.count
        self.fid.real_features_cov_sum = sigma * (ref.count - 1) + ref.count * torch.outer(mu, mu)
        self.fid.real_features_num_samples = torch.tensor(ref.count, dtype=torch.long)

    @torch.no_grad()
    def update(self, images: torch.Tensor) -> torch.Tensor:
        """Add generated uint8 images ``[B, C, H, W]``; returns their features ``[B, F]``."""
        if self.histogram is not None and hasattr(self.extractor, "features_and_logits"):
            features, logits = self.extractor.features_and_logits(images)  # one pass for both
        else:
            features = self.extractor(images)
            logits = self.extractor.logits(images) if self.histogram is not None else None
        self.update_features(features)
        if logits is not None:
            self.histogram.update(logits)
        return features

    def update_features(self, features: torch.Tensor) -> None:
        """Add precomputed features ``[B, F]`` of generated images."""
        self.fid.update(features, real=False)
        if self.kid is not None:
            self.kid.update(features, real=False)
        if self.prc is not None:
            self.prc.update(features)

    @property
    def count(self) -> int:
        """Generated images seen so far on this rank."""
        return int(self.fid.fake_features_num_samples)

    def compute(self, seed: int = 0) -> dict[str, Any]:
        """All metrics at once (collective under DDP: call on every rank).

        Returns:
            ``{<metric_name>: float, <kernel_name>: float, <kernel_name>_std: float, "n": int,
            "n_reference": int, "precision_<features>": float, "recall_<features>": float, "class_histogram": [K]
            counts}`` (kernel, precision/recall and histogram entries when available; ``<features>`` is
            :func:`feature_name`, e.g. ``precision_mnist``).
        """
        result: dict[str, Any] = {self.metric_name: float(self.fid.compute())}
        n = int(self.fid.fake_features_num_samples)  # synchronised by compute()
        result.update(n=n, n_reference=int(self.reference.count))
        if self.kid is not None:
            n_ref = len(self.reference.features)
            self.kid.subset_size = min(self.kid.subset_size, n, n_ref)
            with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global generator
                torch.manual_seed(seed)
                mean, std = self.kid.compute()
            result[self.kernel_name], result[f"{self.kernel_name}_std"] = float(mean), float(std)
            result["kid_subset_size"] = int(self.kid.subset_size)
        if self.prc is not None and n > self.prc.k:
            name = feature_name(self.extractor)
            result[f"precision_{name}"], result[f"recall_{name}"] = self.prc.compute()
        if self.histogram is not None:
            result["class_histogram"] = self.histogram.compute().tolist()
        return result

    def reset(self) -> None:
        """Forget the generated images (the reference stays)."""
        self.fid.reset()
        if self.kid is not None:
            self.kid.reset()
        if self.prc is not None:
            self.prc.reset()
        if self.histogram is not None:
            self.histogram.reset()


@torch.no_grad()
def extract_features(extractor: nn.Module, images: torch.Tensor | Callable[[int, int], torch.Tensor], n: int,
                     batch_size: int = 100, device: torch.device | str = "cpu",
                     progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Features ``[n, F]`` of ``n`` uint8 images, batch by batch on ``device`` (returned on the CPU, float32).

    Args:
        extractor: the feature extractor (already on ``device``).
        images: uint8 ``[N, C, H, W]`` (CPU), or a function ``(start, stop) -> images[start:stop]``.
        n: how many images to use (the first ``n``).
        batch_size: images per forward pass.
        device: where the extractor runs.
        progress: called with the number of images done after each batch.
    """
    get = images if callable(images) else (lambda a, b: images[a:b])
    out = []
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        out.append(extractor(get(start, stop).to(device)).float().cpu())
        if progress is not None:
            progress(stop - start)
    return torch.cat(out) if out else torch.empty(0, int(extractor.num_features))


def to_uint8(x: torch.Tensor, data_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Map images in ``data_range`` to uint8 [0, 255] by rounding to the nearest level (as torchvision's
    ``save_image`` does); values outside the range are clipped."""
    lo, hi = data_range
    return ((x.float() - lo) / (hi - lo) * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of a few repeated measurements (NaN standard error for one)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size < 2:
        return float(arr.mean()), math.nan
    return float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(arr.size))
