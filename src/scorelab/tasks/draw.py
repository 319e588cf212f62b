"""The tasks that draw seeded samples: ``task=sample`` (plain), ``task=labels`` (class-conditional, with
classifier-free or classifier guidance) and ``task=teach`` (plain, with pictures that teach).

Sample ``i`` uses seed ``seed + i``; with ``task=labels`` it is drawn for a label that is a pure function of ``i`` as
well, so the batch size and the number of processes never change which sample gets which class: ``task.label=k`` gives
every sample class ``k``; ``task.labels=all`` (or a list of classes) gives ``per_class`` samples to each class in turn,
sample ``i`` the class ``classes[i // per_class]``, which makes the picture a grid with one row per class.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..core.errors import UserError
from ..guidance.free import ClassifierFreeGuidance
from ..viz.teaching import TeachSettings
from .base import Task, is_int, positive_int


class ClassRequest(NamedTuple):
    """The labels asked for: one per sample position, the classes in row order, samples per row, the scale."""

    labels: list[int]
    classes: list[int]
    per_class: int | None  # samples per row of a ``task.labels=...`` grid; None for ``task.label=k``
    guidance: float

    def score_for(self, score: torch.nn.Module, start: int, count: int) -> torch.nn.Module:
        """The guided score of the samples at positions ``start .. start + count - 1``."""
        return ClassifierFreeGuidance(score, torch.tensor(self.labels[start:start + count]), self.guidance)

    def summary(self) -> dict:
        """What ``sample.json`` / ``metrics.json`` record about the request."""
        return {"guidance": self.guidance, "classes": self.classes, "per_class": self.per_class}


class Sample(Task):
    """``task=sample``: ``n_samples`` samples from seeds ``seed, seed + 1, ...`` (no options).

    The tasks that draw samples subclass it and change what :meth:`request` (the class of each sample) and
    :meth:`teaching` (pictures drawn first) return.
    """

    name = "sample"
    classifier: str | None = None  # a noisy-classifier checkpoint that guides the samples (task=labels)

    def request(self, num_classes: int, n_samples: int) -> ClassRequest | None:
        """The label of each sample position (None: unconditional samples)."""
        del num_classes, n_samples
        return None

    def teaching(self, T: float) -> TeachSettings | None:
        """The pictures that teach to draw first, their times checked against the SDE's end ``T`` (None: none)."""
        del T
        return None


class Labels(Sample):
    """``task=labels``: samples of chosen classes (Ho & Salimans 2022; Song et al. 2021, App. I.1).

    Args:
        label: every sample is drawn for class ``label`` (``n_samples`` of them).
        labels: ``"all"`` or a list of classes: ``per_class`` samples of each in turn (a grid, one row per class).
        per_class: samples per class with ``labels``.
        guidance: classifier-free guidance ``w`` of a class-conditional model: ``s(x,t,null) + w (s(x,t,y) -
            s(x,t,null))`` (0 unconditional, 1 conditional, > 1 stronger).
        classifier: a noisy-classifier checkpoint: guide an unconditional model with it instead (classifier
            guidance, ``s + classifier_scale * grad log p(y | x_t)``).
        classifier_scale: the classifier guidance scale (0 unconditional, 1 Bayes' rule, > 1 sharper).
    """

    name = "labels"

    def __init__(self, label: int | None = None, labels: str | Sequence[int] | None = None, per_class: int = 8,
                 guidance: float = 1.0, classifier: str | None = None, classifier_scale: float = 1.0):
        if label is not None and labels is not None:
            raise UserError("give task.label=<k> (every sample class k) or task.labels=all (one row per class), not "
                            "both")
        if label is None and labels is None:
            raise UserError("task=labels draws chosen classes: say which with task.label=<k> or task.labels=all "
                            "(or a list such as task.labels=[3,5])")
        if label is not None and not is_int(label):
            raise UserError(f"task.label must be a class index (an integer), got {label!r}")
        if labels is not None and labels != "all" and not (isinstance(labels, (list, tuple)) and labels
                                                           and all(is_int(v) for v in labels)):
            raise UserError(f"task.labels must be all or a list of class indices such as [3,5], got {labels!r}")
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
            raise UserError(f"task.guidance must be a finite number (0: unconditional, 1: conditional, >1: "
                            f"stronger), got {guidance!r}")
        if classifier is not None and float(guidance) != 1.0:
            raise UserError("task.guidance is classifier-free guidance of a class-conditional model; with "
                            "task.classifier the scale is task.classifier_scale=<w>")
        if isinstance(classifier_scale, bool) or not isinstance(classifier_scale, (int, float)) \
                or not math.isfinite(classifier_scale):
            raise UserError(f"task.classifier_scale must be a finite number, got {classifier_scale!r}")
        if classifier is None and float(classifier_scale) != 1.0:
            raise UserError("task.classifier_scale scales a noisy classifier's guidance: give it with "
                            "task.classifier=<classifier checkpoint>, or use task.guidance=<w> for classifier-free "
                            "guidance of a class-conditional model")
        self.label, self.labels = label, (list(labels) if isinstance(labels, (list, tuple)) else labels)
        self.per_class = positive_int(per_class, "per_class")
        self.guidance, self.classifier, self.classifier_scale = float(guidance), classifier, float(classifier_scale)

    def request(self, num_classes: int, n_samples: int) -> ClassRequest:
        """The label of each sample position for a model (or classifier) of ``num_classes`` classes.

        Raises:
            UserError: classes asked of an unconditional model, or a class outside ``0..num_classes-1``.
        """
        if not num_classes:
            raise UserError("task=labels needs a class-conditional model, but this one has no classes: train one "
                            "with model.net.num_classes=auto and module.label_dropout=0.1 (e.g. "
                            "experiment=mnist_small_cond), or for toy data use model=oracle model.conditional=true; or "
                            "guide this one with task.classifier=<noisy classifier checkpoint> "
                            "(docs/classifier_guidance.md)")
        classes = [int(self.label)] if self.label is not None else (
            list(range(num_classes)) if self.labels == "all" else [int(v) for v in self.labels])
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise UserError(f"class {bad[0]} does not exist: this model has {num_classes} classes, "
                            f"0..{num_classes - 1}")
        if self.label is not None:
            return ClassRequest([int(self.label)] * int(n_samples), classes, None, self.guidance)
        return ClassRequest([c for c in classes for _ in range(self.per_class)], classes, self.per_class,
                            self.guidance)


class Teach(Sample):
    """``task=teach``: the samples of ``task=sample``, and before them pictures that teach what the sampler does
    (docs/teaching_pictures.md), each from its own small sampler call on the first seeds (the samples are the same
    as without them). 2-D points: ``score_field.png``, ``trajectories.png``, ``marginals.gif``; images:
    ``denoising_strip.png``.

    Args:
        times: score field: the time of each column as a fraction of the SDE's end ``T``, in ``(0, 1]`` (``t = f T``:
            the same columns mean the same stage of the process on VP (``T = 1``), EDM's ``T = 80`` or the
            rectified flow's ``T = 0.99``).
        grid: score field: arrows per side (>= 2).
        paths: trajectories.png: reverse paths drawn (the first points of the cloud).
        cloud: marginals.gif: points in the cloud.
        frames: marginals.gif: at most this many frames (>= 2; recorded steps thinned evenly).
        images: denoising_strip.png: samples, each a row of states ``x_t`` and a row of estimates ``E[x0 | x_t]``.
        columns: denoising_strip.png: times from ``T`` (the prior) to 0 (the sample), >= 3.
    """

    name = "teach"

    def __init__(self, times: float | Sequence[float] = (0.05, 0.2, 0.5, 1.0), grid: int = 15, paths: int = 300,
                 cloud: int = 2000, frames: int = 60, images: int = 4, columns: int = 10):
        if isinstance(times, (int, float)) and not isinstance(times, bool):
            times = [times]
        try:
            times = tuple(float(t) for t in times)
        except (TypeError, ValueError):
            raise UserError(f"task.times must be a list of fractions of T in (0, 1], got {times!r}") from None
        if not times:
            raise UserError("task.times must be a non-empty list of fractions of T in (0, 1], got []")
        ints = {key: positive_int(value, key, least) for key, value, least in (
            ("grid", grid, 2), ("paths", paths, 1), ("cloud", cloud, 1), ("frames", frames, 2), ("images", images, 1),
            ("columns", columns, 3))}
        if ints["paths"] > ints["cloud"]:
            raise UserError(f"task.paths ({ints['paths']}) cannot exceed task.cloud ({ints['cloud']}): the paths are "
                            "the first points of the cloud")
        self.settings = TeachSettings(times=times, **ints)

    def teaching(self, T: float) -> TeachSettings:
        """The settings with ``task.times`` turned into times of the SDE, ``t = f T``."""
        if not all(0.0 < t <= 1.0 for t in self.settings.times):
            raise UserError(f"task.times must be a non-empty list of fractions of T in (0, 1] (t = f T, T = {T:g} "
                            f"here), got {list(self.settings.times)}")
        return dataclasses.replace(self.settings, times=tuple(f * T for f in self.settings.times))

    def check_model(self, shape: Sequence[int], kind: str) -> None:
        if kind != "images" and tuple(shape) != (2,):
            raise UserError(f"task=teach draws 2-D points and images; these samples have shape {tuple(shape)}")

    def __repr__(self) -> str:
        return f"Teach({self.settings})"
