"""Does a class-conditional sampler draw the class it was asked for? Accuracy of a classifier's verdicts.

For guided sampling (classifier-free or classifier guidance) the asked-for label of every sample is known; a
classifier that was not part of the sampling (on MNIST the domain metric's CNN, :mod:`.mnist_classifier`; on toy
mixtures the exact most probable component) judges each sample. The fraction it assigns to the asked-for class is
the accuracy, overall and per class.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def label_accuracy(predicted: torch.Tensor, asked: torch.Tensor, num_classes: int) -> dict:
    """Overall and per-class accuracy of predictions ``[N]`` against the asked-for labels ``[N]``.

    Args:
        predicted: the class each sample was judged to be (integers).
        asked: the class each sample was drawn for (integers in ``0..num_classes-1``).
        num_classes: number of classes ``K``.

    Returns:
        ``{"accuracy": float, "accuracy_per_class": {k: float or None}, "count_per_class": {k: int}, "n": N}``
        with the per-class entries keyed by the class as a string (JSON) and ``None`` for a class never asked for.
    """
    predicted, asked = torch.as_tensor(predicted).long().cpu().flatten(), torch.as_tensor(asked).long().cpu().flatten()
    if predicted.shape != asked.shape:
        raise ValueError(f"{predicted.numel()} predictions for {asked.numel()} asked-for labels")
    if asked.numel() and (int(asked.min()) < 0 or int(asked.max()) >= num_classes):
        raise ValueError(f"asked-for labels must lie in 0..{num_classes - 1}")
    hit = (predicted == asked).double()
    counts = torch.bincount(asked, minlength=num_classes)
    hits = torch.bincount(asked, weights=hit, minlength=num_classes)
    per_class = {str(k): (float(hits[k] / counts[k]) if counts[k] else None) for k in range(num_classes)}
    return {"accuracy": float(hit.mean()) if hit.numel() else float("nan"), "accuracy_per_class": per_class,
            "count_per_class": {str(k): int(counts[k]) for k in range(num_classes)}, "n": int(asked.numel())}


class LabelAccuracy:
    """Accumulate a classifier's verdicts on batches of samples and their asked-for labels.

    Args:
        classify: ``samples [B, ...] -> predicted classes [B]`` (or logits ``[B, K]``, argmax taken).
        num_classes: number of classes ``K``.
    """

    def __init__(self, classify: Callable[[torch.Tensor], torch.Tensor], num_classes: int):
        self.classify, self.num_classes = classify, int(num_classes)
        self.predicted: list[torch.Tensor] = []
        self.asked: list[torch.Tensor] = []

    def predict(self, samples: torch.Tensor) -> torch.Tensor:
        """The class the classifier sees in each of ``samples [B, ...]``: ``[B]`` (int64, CPU)."""
        out = self.classify(samples)
        return (out.argmax(dim=1) if out.ndim == 2 else out).long().cpu()

    def update(self, samples: torch.Tensor, labels: torch.Tensor) -> None:
        """Judge ``samples [B, ...]`` drawn for ``labels [B]``."""
        self.predicted.append(self.predict(samples))
        self.asked.append(torch.as_tensor(labels).long().cpu())

    def compute(self) -> dict:
        """:func:`label_accuracy` of everything judged so far."""
        if not self.asked:
            return label_accuracy(torch.zeros(0), torch.zeros(0), self.num_classes)
        return label_accuracy(torch.cat(self.predicted), torch.cat(self.asked), self.num_classes)


def mnist_label_accuracy(extractor, num_classes: int = 10) -> LabelAccuracy:
    """:class:`LabelAccuracy` judged by the MNIST domain classifier (an :class:`~.mnist_classifier.MNISTFeatures`,
    which takes uint8 digits ``[B, 1, 28, 28]``)."""
    return LabelAccuracy(extractor.logits, num_classes)


def mixture_label_accuracy(mixture) -> LabelAccuracy:
    """:class:`LabelAccuracy` judged by a toy mixture's exact most probable component (points ``[B, D]``)."""
    return LabelAccuracy(lambda x: mixture.classify(x.to(torch.float64)), mixture.n_components)
