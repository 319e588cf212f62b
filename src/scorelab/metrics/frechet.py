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

from ..core.errors import UnsafeFileError, UserError
from ..core.io import UnreadableFileError, load_npz, save_npz_atomic

STATS_FORMAT = "scorelab-feature-stats-v1"


class StatsMismatchError(UserError):
    """Cached statistics were made with another feature extractor, preprocessing or sample count."""


class InvalidStatsError(UserError, ValueError):
    """Statistics that no set of features could have: non-finite, misshapen, asymmetric or indefinite covariance.

    Also a ``ValueError``, which :func:`frechet_distance` raised for mismatched shapes before.
    """


REBUILD_HINT = "delete it and rebuild it with: python fid.py mode=ref data=<name> (or rebuild=true)"
SYMMETRY_TOL = 1e-6   # max |S - S^T| allowed, relative to max(1, max |S|)
PSD_TOL = 1e-6        # smallest eigenvalue allowed: -PSD_TOL * max(1, largest |eigenvalue|)
MAX_ABS = 1e150       # larger entries would overflow to inf in S_1 S_2


def _as_float64(x: Any, what: str, name: str, hint: str) -> np.ndarray:
    try:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":  # strings, objects, complex numbers: nothing a statistic can be
            raise TypeError(f"dtype {arr.dtype}")
        return arr.astype(np.float64, copy=False)
    except (TypeError, ValueError) as exc:
        raise InvalidStatsError(f"{what} has a non-numeric {name} ({exc}); {hint}") from None


def check_moments(mu: Any, sigma: Any, what: str = "feature statistics", hint: str = REBUILD_HINT,
                  names: tuple[str, str] = ("mu", "sigma")) -> tuple[np.ndarray, np.ndarray]:
    """A mean ``[F]`` and covariance ``[F, F]`` as float64 arrays, refused unless some features could have them.

    Checked in this order (so linear algebra never sees a non-finite matrix, which can crash LAPACK/MKL):
    numeric, shapes (``mu`` 1-D and non-empty, ``sigma`` ``[F, F]``), finite, not absurdly large (``|x| <= 1e150``,
    so ``S_1 S_2`` cannot overflow), symmetric (``max |S - S^T| <= 1e-6 max(1, max |S|)``) and positive
    semi-definite (smallest eigenvalue of ``(S + S^T) / 2``, in float64, ``>= -1e-6 max(1, largest |eigenvalue|)``:
    room for round-off, none for a covariance that is not one).

    Args:
        mu, sigma: array-likes or tensors.
        what: how the message names their owner (``statistics file /x/ref.npz``).
        hint: what to do, appended to the message.
        names: how the message names ``mu`` and ``sigma``.

    Raises:
        InvalidStatsError: one line naming ``what``, the problem and ``hint``.
    """
    mu_name, sigma_name = names
    mu = _as_float64(mu, what, mu_name, hint)
    sigma = _as_float64(sigma, what, sigma_name, hint)
    if mu.ndim != 1 or mu.size == 0:
        raise InvalidStatsError(f"{what} has a mean {mu_name} of shape {list(mu.shape)}; expected a vector [F] "
                                f"with F >= 1; {hint}")
    f = mu.shape[0]
    if sigma.shape != (f, f):
        raise InvalidStatsError(f"{what} has a covariance {sigma_name} of shape {list(sigma.shape)}, which does not "
                                f"match its mean {mu_name} of shape [{f}] (expected [{f}, {f}]); {hint}")
    for name, arr in ((mu_name, mu), (sigma_name, sigma)):
        if not np.isfinite(arr).all():
            raise InvalidStatsError(f"{what} holds non-finite values (nan/inf) in {name}; {hint}")
        if np.abs(arr).max() > MAX_ABS:
            raise InvalidStatsError(f"{what} holds implausibly large values in {name} (|x| up to "
                                    f"{np.abs(arr).max():.3g}); {hint}")
    scale = max(1.0, float(np.abs(sigma).max()))
    asymmetry = float(np.abs(sigma - sigma.T).max())
    if asymmetry > SYMMETRY_TOL * scale:
        raise InvalidStatsError(f"{what} has a covariance {sigma_name} that is not symmetric (max |S - S^T| = "
                                f"{asymmetry:.3g}); {hint}")
    eig = np.linalg.eigvalsh((sigma + sigma.T) / 2)  # finite, symmetric: safe for LAPACK
    if eig[0] < -PSD_TOL * max(1.0, float(np.abs(eig).max())):
        raise InvalidStatsError(f"{what} has a covariance {sigma_name} that is not positive semi-definite "
                                f"(smallest eigenvalue {eig[0]:.3g}); {hint}")
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2, checked: bool = False) -> float:
    """Fréchet distance between two Gaussians given their means ``[F]`` and covariances ``[F, F]`` (float64).

    Args:
        mu1, sigma1: mean and covariance of the first set (array-likes or tensors).
        mu2, sigma2: mean and covariance of the second set.
        checked: the inputs already passed :func:`check_moments` (validated :class:`FeatureStats`).

    Returns:
        The squared Fréchet distance (what papers call FID when the features are Inception's); round-off below
        zero (within ``1e-6`` of the trace terms) is returned as 0.

    Raises:
        InvalidStatsError (a ``UserError`` and a ``ValueError``): inputs that are not finite, of mismatched shapes,
            or not covariances (see :func:`check_moments`), checked before any linear algebra; or a result that
            is not finite or is negative beyond round-off (never returned).
    """
    if checked:  # both pairs passed check_moments already (FeatureStats does on construction): skip the repeat
        mu1, s1, mu2, s2 = (np.asarray(a, dtype=np.float64) for a in (mu1, sigma1, mu2, sigma2))
    else:
        hint = "the features they come from must be finite, and the covariances symmetric positive semi-definite"
        mu1, s1 = check_moments(mu1, sigma1, "the input of frechet_distance", hint, ("mu1", "sigma1"))
        mu2, s2 = check_moments(mu2, sigma2, "the input of frechet_distance", hint, ("mu2", "sigma2"))
    if mu1.shape != mu2.shape:
        raise InvalidStatsError(f"shapes do not match: mu {list(mu1.shape)} / {list(mu2.shape)}, sigma "
                                f"{list(s1.shape)} / {list(s2.shape)}; compare features of the same extractor")
    mu1, mu2, s1, s2 = (torch.from_numpy(np.ascontiguousarray(a)) for a in (mu1, mu2, s1, s2))
    # eigenvalues of S1 S2 are real and >= 0 in exact arithmetic; clamp the round-off below zero
    trace_sqrt = torch.linalg.eigvals(s1 @ s2).real.clamp_min(0).sqrt().sum()
    positive = float((mu1 - mu2).square().sum() + s1.trace() + s2.trace())
    distance = positive - 2 * float(trace_sqrt)
    if not np.isfinite(distance) or distance < -PSD_TOL * max(1.0, positive):
        raise InvalidStatsError(f"frechet_distance came out as {distance:.6g}, which no pair of Gaussians has (the "
                                "eigenvalue solver failed on these covariances); check the statistics, e.g. rebuild "
                                "them with: python fid.py mode=ref data=<name> rebuild=true")
    return max(distance, 0.0)


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

    def __post_init__(self) -> None:
        self.validate()

    def _owner(self) -> tuple[str, str]:
        """How messages name these statistics, and what they say to do."""
        if self.source:
            return f"statistics file {self.source}", REBUILD_HINT
        return "feature statistics", "compute them from finite features of at least 2 images"

    def validate(self) -> None:
        """Refuse statistics no image set could have, before anything computes with them (run on construction).

        ``mu`` and ``sigma`` pass :func:`check_moments` (numeric, ``[F]`` and ``[F, F]``, finite, symmetric,
        positive semi-definite) and become float64 arrays; ``count`` is an integer >= 2 (an unbiased covariance
        needs two images); ``features``, when present, is a finite ``[M, F]`` array.

        Raises:
            InvalidStatsError: one line naming the file (when read from one), the problem and how to rebuild it.
        """
        what, hint = self._owner()
        self.mu, self.sigma = check_moments(self.mu, self.sigma, what, hint)
        count = self.count
        if isinstance(count, np.ndarray) and count.size == 1:
            count = count.reshape(()).item()
        if isinstance(count, (bool, np.bool_)) or not isinstance(count, (int, np.integer)) or count < 2:
            raise InvalidStatsError(f"{what} has an image count of {count!r}; statistics need an integer count of at "
                                    f"least 2 images; {hint}")
        self.count = int(count)
        if self.features is not None:
            feats = np.asarray(self.features)
            f = self.mu.shape[0]
            if feats.dtype.kind not in "biuf" or feats.ndim != 2 or feats.shape[1] != f:
                raise InvalidStatsError(f"{what} keeps raw features of {feats.dtype} {list(feats.shape)}; expected "
                                        f"numbers [M, {f}] (F = {f} as in mu); {hint}")
            if not np.isfinite(feats).all():
                raise InvalidStatsError(f"{what} holds non-finite values (nan/inf) in features; {hint}")
            self.features = feats

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
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma, checked=True)

    def check(self, extractor_id: str, preprocessing: str, count: int | None = None,
              what: str = "reference statistics", num_features: int | None = None) -> None:
        """Refuse statistics made differently: another extractor, preprocessing, (if given) sample count or (if given)
        feature dimension than the extractor's ``num_features``.

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
        if num_features is not None and self.mu.shape[0] != int(num_features):
            raise StatsMismatchError(
                f"{what}{where} hold features of dimension {self.mu.shape[0]}, but the feature extractor "
                f"{extractor_id!r} gives {int(num_features)}; rebuild them with this extractor: python fid.py mode=ref "
                "data=<name> (or rebuild=true)")

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
        except UnsafeFileError:
            raise
        except UnreadableFileError as exc:
            raise UserError(f"statistics file {path} cannot be read ({exc.reason}); it may be truncated: "
                            f"{REBUILD_HINT}") from None
        except Exception as exc:
            raise UserError(f"statistics file {path} cannot be read ({type(exc).__name__}: {exc}); "
                            f"{REBUILD_HINT}") from None
        missing = [k for k in ("mu", "sigma", "count", "extractor_id", "preprocessing") if k not in data]
        if missing:
            raise UserError(f"{path} is not a scorelab statistics file (missing {', '.join(missing)}); build one "
                            "with: python fid.py mode=ref data=<name>")
        # validate() (run on construction) refuses values no image set has before anything computes with them
        return cls(mu=data["mu"], sigma=data["sigma"], count=data["count"], extractor_id=str(data["extractor_id"]),
                   preprocessing=str(data["preprocessing"]), dataset=str(data.get("dataset", "")),
                   split=str(data.get("split", "")), features=data.get("features"), source=str(path))
