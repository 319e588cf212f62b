"""Fréchet distances between feature statistics, and the statistics files that FID reference sets are cached in.

The Fréchet distance between ``N(mu_1, S_1)`` and ``N(mu_2, S_2)`` is (Dowson & Landau 1982; Heusel et al. 2017)

    ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}).

``Tr (S_1 S_2)^{1/2}`` is the sum of the square roots of the eigenvalues of ``S_1 S_2``, which are real and
non-negative (``S_1 S_2`` is similar to ``S_1^{1/2} S_2 S_1^{1/2}``). Everything is computed in float64.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..io import load_npz, save_npz_atomic

STATS_FORMAT = "scorelab-feature-stats-v1"


class StatsMismatchError(UserError):
    """Cached statistics were made with another feature extractor, preprocessing or sample count."""


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between two Gaussians given their means ``[F]`` and covariances ``[F, F]`` (float64).

    Args:
        mu1, sigma1: mean and covariance of the first set (array-likes or tensors).
        mu2, sigma2: mean and covariance of the second set.

    Returns:
        The squared Fréchet distance (what papers call FID when the features are Inception's).
    """
    mu1, mu2 = (torch.as_tensor(np.asarray(m), dtype=torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(np.asarray(s), dtype=torch.float64) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"shapes do not match: mu {tuple(mu1.shape)} / {tuple(mu2.shape)}, "
                         f"sigma {tuple(s1.shape)} / {tuple(s2.shape)}")
    # eigenvalues of S1 S2 are real and >= 0 in exact arithmetic; clamp the round-off below zero
    trace_sqrt = torch.linalg.eigvals(s1 @ s2).real.clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * trace_sqrt)


def mean_and_covariance(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[F]`` and unbiased covariance ``[F, F]`` of features ``[N, F]``, accumulated in float64."""
    f = torch.as_tensor(np.asarray(features)).double()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features of shape [N >= 2, F], got {tuple(f.shape)}")
    mu = f.mean(0)
    centred = f - mu
    return mu.numpy(), (centred.T @ centred / (f.shape[0] - 1)).numpy()


@dataclass
class FeatureStats:
    """Mean, covariance and count of features of an image set, with what they were computed with.

    Attributes:
        mu: float64 ``[F]``.
        sigma: float64 ``[F, F]`` (unbiased covariance).
        count: number of images.
        extractor_id: which network and weights made the features (e.g. ``inception-v3-compat-2048:<sha>``).
        preprocessing: how images reached the network (channels, resize, antialiasing).
        dataset, split: where the images came from (empty for generated samples).
        features: optional float32 ``[M, F]`` subset of the raw features (kernel distances such as KID need them).
    """

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    extractor_id: str
    preprocessing: str
    dataset: str = ""
    split: str = ""
    features: np.ndarray | None = field(default=None, repr=False)
    source: str = field(default="", repr=False, compare=False)  # the file it was read from, for messages

    @classmethod
    def from_features(cls, features: torch.Tensor | np.ndarray, keep_features: int = 0,
                      generator: torch.Generator | None = None, **meta: Any) -> FeatureStats:
        """Statistics of features ``[N, F]``; keep a random subset of ``keep_features`` rows of the raw features."""
        f = torch.as_tensor(np.asarray(features))
        mu, sigma = mean_and_covariance(f)
        kept = None
        if keep_features:
            idx = torch.randperm(f.shape[0], generator=generator)[:keep_features].sort().values
            kept = f[idx].float().numpy()
        return cls(mu, sigma, int(f.shape[0]), features=kept, **meta)

    def distance(self, other: FeatureStats) -> float:
        """Fréchet distance to ``other`` (which must come from the same extractor and preprocessing)."""
        other.check(self.extractor_id, self.preprocessing, what="the statistics compared with")
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)

    def check(self, extractor_id: str, preprocessing: str, count: int | None = None,
              what: str = "reference statistics") -> None:
        """Refuse statistics made differently: another extractor, preprocessing or (if given) sample count.

        Raises:
            StatsMismatchError: naming the field that differs and how to rebuild the statistics.
        """
        where = f" ({self.source})" if self.source else ""
        for name, mine, wanted in (("feature extractor", self.extractor_id, extractor_id),
                                   ("preprocessing", self.preprocessing, preprocessing),
                                   ("image count", self.count, count)):
            if wanted is not None and mine != wanted:
                raise StatsMismatchError(
                    f"{what}{where} were made with {name} {mine!r}, not {wanted!r}: distances between them would "
                    "not be comparable. Rebuild them with this extractor (python fid.py mode=ref ...) or pass the "
                    "matching ones")

    # --- files ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` atomically (plain arrays and strings only: loadable without unpickling)."""
        arrays = {"format": np.array(STATS_FORMAT), "mu": np.asarray(self.mu, np.float64),
                  "sigma": np.asarray(self.sigma, np.float64), "count": np.array(self.count, np.int64),
                  "extractor_id": np.array(self.extractor_id), "preprocessing": np.array(self.preprocessing),
                  "dataset": np.array(self.dataset), "split": np.array(self.split)}
        if self.features is not None:
            arrays["features"] = np.asarray(self.features, np.float32)
        return save_npz_atomic(path, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """Read statistics written by :meth:`save` (``allow_pickle=False``).

        Raises:
            UserError: the file is missing, unreadable or not a statistics file.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"statistics file not found: {path}. Build one with: python fid.py mode=ref data=<name>")
        try:
            data = load_npz(path)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"statistics file {path} cannot be read ({type(exc).__name__}: {exc}); delete it and "
                            "rebuild it with: python fid.py mode=ref data=<name>") from None
        missing = [k for k in ("mu", "sigma", "count", "extractor_id", "preprocessing") if k not in data]
        if missing:
            raise UserError(f"{path} is not a scorelab statistics file (missing {', '.join(missing)}); build one "
                            "with: python fid.py mode=ref data=<name>")
        stats = cls(mu=data["mu"].astype(np.float64), sigma=data["sigma"].astype(np.float64),
                    count=int(data["count"]), extractor_id=str(data["extractor_id"]),
                    preprocessing=str(data["preprocessing"]), dataset=str(data.get("dataset", "")),
                    split=str(data.get("split", "")), features=data.get("features"), source=str(path))
        return stats
