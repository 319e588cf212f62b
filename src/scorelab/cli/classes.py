"""``sample.py label=k | labels=all guidance=w``: which class each sample is drawn for, and the guided score.

Sample ``i`` is drawn for a label that is a pure function of ``i`` (as its seed ``seed + i`` is), so the batch size
and the number of processes never change which sample gets which class: ``label=k`` gives every sample class ``k``;
``labels=all`` (or a list of classes) gives ``per_class`` samples to each class in turn, sample ``i`` the class
``classes[i // per_class]``, which makes the picture a grid with one row per class.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from omegaconf import DictConfig, ListConfig

from ..guidance.free import ClassifierFreeGuidance
from .errors import UserError


class ClassRequest(NamedTuple):
    """The labels asked for: one per sample position, the classes in row order, samples per row, the scale."""

    labels: list[int]
    classes: list[int]
    per_class: int | None  # samples per row of a ``labels=...`` grid; None for ``label=k``
    guidance: float

    def score_for(self, score: torch.nn.Module, start: int, count: int) -> torch.nn.Module:
        """The guided score of the samples at positions ``start .. start + count - 1``."""
        return ClassifierFreeGuidance(score, torch.tensor(self.labels[start:start + count]), self.guidance)

    def summary(self) -> dict:
        """What ``sample.json`` / ``metrics.json`` record about the request."""
        return {"guidance": self.guidance, "classes": self.classes, "per_class": self.per_class}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_class_keys(cfg: DictConfig) -> None:
    """Refuse malformed ``label``, ``labels``, ``per_class`` and ``guidance`` values (before any model is loaded)."""
    label, labels, guidance = cfg.get("label"), cfg.get("labels"), cfg.get("guidance", 1.0)
    if label is not None and labels is not None:
        raise UserError("give label=<k> (every sample class k) or labels=all (one row per class), not both")
    if label is not None and not _is_int(label):
        raise UserError(f"label must be a class index (an integer), got {label!r}")
    if labels is not None and labels != "all" and not (isinstance(labels, (list, ListConfig)) and labels
                                                       and all(_is_int(v) for v in labels)):
        raise UserError(f"labels must be all or a list of class indices such as [3,5], got {labels!r}")
    per_class = cfg.get("per_class", 8)
    if not _is_int(per_class) or per_class < 1:
        raise UserError(f"per_class must be a positive integer, got {per_class!r}")
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise UserError(f"guidance must be a finite number (0: unconditional, 1: conditional, >1: stronger), got "
                        f"{guidance!r}")
    if label is None and labels is None and float(guidance) != 1.0:
        raise UserError(f"guidance={guidance} steers samples towards a class: also pass label=<k> or labels=all")


def class_request(cfg: DictConfig, num_classes: int) -> ClassRequest | None:
    """The labels of ``cfg`` for a model with ``num_classes`` classes; None when no class is asked for.

    Raises:
        UserError: classes asked of an unconditional model, or a class outside ``0..num_classes-1``.
    """
    check_class_keys(cfg)
    label, labels = cfg.get("label"), cfg.get("labels")
    if label is None and labels is None:
        return None
    if not num_classes:
        raise UserError("label/labels need a class-conditional model, but this one has no classes: train one with "
                        "model.net.num_classes=auto and module.label_dropout=0.1 (e.g. experiment=mnist_small_cond), "
                        "or for toy data use model=oracle model.conditional=true; or guide this one with "
                        "classifier=<noisy classifier checkpoint> (docs/classifier_guidance.md)")
    classes = [int(label)] if label is not None else (list(range(num_classes)) if labels == "all"
                                                      else [int(v) for v in labels])
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise UserError(f"class {bad[0]} does not exist: this model has {num_classes} classes, 0..{num_classes - 1}")
    guidance = float(cfg.get("guidance", 1.0))
    if label is not None:
        return ClassRequest([int(label)] * int(cfg.n_samples), classes, None, guidance)
    per_class = int(cfg.get("per_class", 8))
    return ClassRequest([c for c in classes for _ in range(per_class)], classes, per_class, guidance)
