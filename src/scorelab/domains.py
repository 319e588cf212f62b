"""The kind of data a data module holds, as an object: 2-D (or D-dimensional) points, or 8-bit images.

Every data module carries a :class:`Domain` (``datamodule.domain``), and everything that depends on the kind of data
asks it: the exact score and the exact prior (a known mixture), the measures of samples (toy metrics against the
mixture; FID/KID or the MNIST domain metric for images), the judge of class-conditional samples, the units of a
likelihood (nats, or dequantised bits/dim) and the picture of samples (a scatter plot or an image grid). No command,
callback or picture guesses the kind from a shape, an attribute or a dataset name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .core.errors import UserError
from .data.toy import GaussianMixture
from .metrics.label_accuracy import LabelAccuracy, mixture_label_accuracy, mnist_label_accuracy
from .metrics.toy import toy_metrics
from .sde import SDE
from .viz.plotting import save_image_grid, save_points_picture

MNIST = "mnist"  # the dataset whose domain metric (fd_mnist) and label judge exist (scorelab.metrics.mnist_classifier)


class Domain:
    """What depends on the kind of data. Subclasses: :class:`Points`, :class:`Images`.

    Attributes:
        kind: ``"points"`` or ``"images"``.
        unit: the unit of a likelihood: ``"nats"`` or ``"bits/dim"``.
        measures_samples: whether samples have exact measures here (a known mixture).
    """

    kind: str = ""
    unit: str = ""
    measures_samples: bool = False  # whether :meth:`sample_metrics` has exact measures to give

    def exact_score(self, sde: SDE, conditional: bool = False):
        """The exact score of the data under ``sde``, when the data are a known mixture (else a one-line error)."""
        raise UserError(f"the exact score (model=oracle) needs toy data of a known mixture (data=toy_*); "
                        f"{self.describe()} have none")

    def exact_prior(self, sde: SDE):
        """``z -> log p_T(z)``, the true marginal at ``T`` (likelihood ``prior=exact``), when the data are a known
        mixture (else a one-line error)."""
        raise UserError(f"prior=exact needs toy data (the exact p_T of the mixture); {self.describe()} have none: "
                        "use prior=sde")

    def sample_metrics(self, x: torch.Tensor, seed: int) -> dict[str, Any] | None:
        """Exact measures of samples ``x`` against the data (toy mixtures), or None when there are none."""
        return None

    def label_judge(self, device: torch.device, extractor_factory=None) -> LabelAccuracy | None:
        """What judges the class of a class-conditional sample (an exact classifier, MNIST's domain classifier), or
        None. ``extractor_factory(name)`` builds a feature extractor of ``conf/features/<name>``."""
        return None

    def default_features(self) -> str | None:
        """The ``conf/features`` option that measures samples of these data (``features=auto``), or None."""
        return None

    def accepts_features(self, features_domain: str | None) -> bool:
        """Whether a feature extractor made for ``features_domain`` (None: any image, e.g. Inception) measures
        these data."""
        return False

    def exact_nll(self, x: torch.Tensor) -> torch.Tensor | None:
        """``-log p(x)`` of each example ``[N]`` (float64) under the true distribution, or None when unknown."""
        return None

    def entropy(self, n: int, seed: int) -> tuple[float, float] | None:
        """The true distribution's entropy and its Monte Carlo standard error (``n`` points), or None."""
        return None

    def preview(self, x: torch.Tensor, path: str | Path, title: str | None = None) -> Path:
        """Draw samples ``x`` into ``path`` (a PNG)."""
        raise NotImplementedError  # abstract: each domain draws its own picture

    def describe(self) -> str:
        """How messages name these data."""
        return self.kind


class Points(Domain):
    """Continuous points ``[N, D]``, optionally drawn from a known :class:`~scorelab.data.toy.GaussianMixture`.

    Args:
        dim: ``D``.
        mixture: the mixture the points come from, when known (then the exact score, prior, NLL, classifier).
    """

    kind, unit = "points", "nats"

    def __init__(self, dim: int, mixture: GaussianMixture | None = None):
        self.dim, self.mixture = int(dim), mixture
        self.measures_samples = mixture is not None

    def describe(self) -> str:
        return f"{self.dim}-D points" + ("" if self.mixture is not None else " of an unknown distribution")

    def _known(self) -> GaussianMixture:
        if self.mixture is None:
            raise UserError(f"{self.describe()} have no exact answers: use toy data of a known mixture (data=toy_*)")
        return self.mixture

    def exact_score(self, sde: SDE, conditional: bool = False):
        return self._known().oracle(sde, conditional=conditional)

    def exact_prior(self, sde: SDE):
        oracle = self._known().oracle(sde)

        def log_p_T(z: torch.Tensor) -> torch.Tensor:
            return oracle.log_prob(z, torch.full((len(z),), sde.T, dtype=z.dtype, device=z.device))

        return log_p_T

    def reference(self, n: int, seed: int = 0) -> torch.Tensor | None:
        """``n`` true points (seeded), the grey cloud behind pictures; None when the distribution is unknown."""
        if self.mixture is None:
            return None
        return self.mixture.sample(n, generator=torch.Generator().manual_seed(seed))

    def sample_metrics(self, x: torch.Tensor, seed: int) -> dict[str, Any] | None:
        if self.mixture is None:
            return None
        return toy_metrics(self.mixture, x.cpu(), generator=torch.Generator().manual_seed(seed))

    def label_judge(self, device: torch.device, extractor_factory=None) -> LabelAccuracy | None:
        return mixture_label_accuracy(self.mixture) if self.mixture is not None else None

    def exact_nll(self, x: torch.Tensor) -> torch.Tensor | None:
        return None if self.mixture is None else -self.mixture.log_prob(x.double())

    def entropy(self, n: int, seed: int) -> tuple[float, float] | None:
        return None if self.mixture is None else self.mixture.entropy(n, generator=torch.Generator().manual_seed(seed))

    def preview(self, x: torch.Tensor, path: str | Path, title: str | None = None) -> Path:
        return save_points_picture(x, path, reference=self.reference(min(len(x), 5000)), title=title)


class Images(Domain):
    """8-bit images ``[N, C, H, W]`` scaled to ``data_range`` for the model.

    Args:
        dataset_name: the dataset's name (``mnist``, ``cifar10``, ``fashionmnist``, ``folder-...``): statistics are
            cached per name, and MNIST has a domain metric and a label judge of its own.
        data_range: the model's pixel range ``(low, high)``.
    """

    kind, unit = "images", "bits/dim"

    def __init__(self, dataset_name: str, data_range: tuple[float, float]):
        self.dataset_name, self.data_range = str(dataset_name), (float(data_range[0]), float(data_range[1]))

    def describe(self) -> str:
        return f"images ({self.dataset_name})"

    def default_features(self) -> str:
        return "mnist" if self.dataset_name == MNIST else "inception"

    def accepts_features(self, features_domain: str | None) -> bool:
        return features_domain is None or features_domain == self.dataset_name

    def label_judge(self, device: torch.device, extractor_factory=None) -> LabelAccuracy | None:
        if self.dataset_name != MNIST or extractor_factory is None:
            return None
        return mnist_label_accuracy(extractor_factory("mnist"))

    def preview(self, x: torch.Tensor, path: str | Path, title: str | None = None) -> Path:
        return save_image_grid(x, path, data_range=self.data_range)
