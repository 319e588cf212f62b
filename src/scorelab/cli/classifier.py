"""Classifier guidance from the commands: train a noisy classifier with ``train.py``, guide ``sample.py`` with it.

* ``python train.py experiment=mnist_noisy_classifier`` (or ``toy_eight_gaussians_classifier``): the config's
  ``classifier_module`` names :class:`~scorelab.lit.classifier_module.NoisyClassifierModule` and its ``model`` a
  :class:`~scorelab.models.noisy_classifier.NoisyClassifier`; :func:`build_classifier_module` builds them.
* ``python sample.py ckpt_path=<score model> task=labels task.classifier=<classifier ckpt>
  task.label=3`` (or ``task.labels=all task.per_class=10``)
  samples with ``s + classifier_scale * grad log p_phi(y | x, t)`` (:mod:`scorelab.guidance.classifier`).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from ..guidance.classifier import ClassifierGuidance
from ..lit.classifier_module import NoisyClassifierModule
from ..models.noisy_classifier import NoisyClassifier
from ..tasks import ClassRequest
from .errors import UserError

CLASSIFIER_EXPERIMENTS = "experiment=mnist_noisy_classifier or experiment=toy_eight_gaussians_classifier"


# --- training ------------------------------------------------------------------------------------------------
def build_classifier_module(cfg: DictConfig, parts: dict[str, Any]) -> NoisyClassifierModule:
    """The module ``cfg.classifier_module`` names, around the ``NoisyClassifier`` that ``cfg.model`` built."""
    classifier = parts["score_model"]  # build_core builds whatever cfg.model describes
    if not isinstance(classifier, NoisyClassifier):
        raise UserError(f"classifier_module trains a noisy classifier, but model builds {type(classifier).__name__}: "
                        f"use model=noisy_classifier_mlp or noisy_classifier_cnn ({CLASSIFIER_EXPERIMENTS})")
    return instantiate(cfg.classifier_module, classifier, parts["sde"], optimizer=instantiate(cfg.optimizer),
                       scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None, _convert_="all")


def refuse_classifier_model(parts: dict[str, Any]) -> None:
    """A noisy classifier configured as the model of a score-model run is a config mistake: say what to use."""
    if isinstance(parts["score_model"], NoisyClassifier):
        raise UserError("model is a noisy classifier but classifier_module is not set, so this run would train it "
                        f"as a score model; train it with {CLASSIFIER_EXPERIMENTS} (they set classifier_module)")


# --- loading -------------------------------------------------------------------------------------------------
class LoadedClassifier(NamedTuple):
    """What a classifier checkpoint rebuilds into."""

    classifier: NoisyClassifier
    sde: Any
    datamodule: Any
    path: str


def load_classifier(path: str, cfg: DictConfig | None = None, data_dir: str | None = None) -> LoadedClassifier:
    """Rebuild a noisy classifier from a ``train.py`` checkpoint named by ``task.classifier=`` (a file, a run folder,
    ``last`` or ``auto``), read with ``weights_only=True`` and its stored config checked before anything is built
    (:func:`~scorelab.cli.runs.restore_run`). ``cfg``: the running command's config; outside a command,
    ``data_dir`` is the data folder instead."""
    from .runs import restore_run

    def must_be_a_classifier(stored_path: str, stored: DictConfig) -> None:
        if not stored.get("classifier_module"):
            raise UserError(f"task.classifier={stored_path} is a score-model checkpoint, not a noisy classifier; train "
                            f"one with {CLASSIFIER_EXPERIMENTS}")

    run = restore_run(path, cfg, key="task.classifier", data_dir=data_dir, check=must_be_a_classifier)
    return LoadedClassifier(run.module.classifier.eval(), run.sde, run.datamodule, run.path)


def refuse_score_as_classifier(ckpt_path: str, stored: dict) -> None:
    """``ckpt_path`` must be a score model: a classifier checkpoint there gets a message saying where it goes."""
    if stored.get("classifier_module"):
        raise UserError(f"ckpt_path={ckpt_path} is a noisy classifier, not a score model; pass it as "
                        "task=labels task.classifier=<that file> together with ckpt_path=<a score model>")


# --- sampling ------------------------------------------------------------------------------------------------
class ClassifierRequest(NamedTuple):
    """The classes asked for (a :class:`~scorelab.tasks.ClassRequest`) drawn by classifier guidance: the
    score model's unconditional score plus ``scale`` times the noisy classifier's gradient."""

    request: ClassRequest
    classifier: NoisyClassifier
    scale: float
    path: str

    @property
    def labels(self) -> list[int]:
        return self.request.labels

    @property
    def classes(self) -> list[int]:
        return self.request.classes

    @property
    def per_class(self) -> int | None:
        return self.request.per_class

    @property
    def guidance(self) -> float:
        return self.scale

    def score_for(self, score: torch.nn.Module, start: int, count: int) -> ClassifierGuidance:
        """The classifier-guided score of the samples at positions ``start .. start + count - 1``."""
        return ClassifierGuidance(score, self.classifier, torch.tensor(self.labels[start:start + count]), self.scale)

    def summary(self) -> dict:
        return {**self.request.summary(), "classifier": self.path, "classifier_scale": self.scale}


def check_compatible(loaded: LoadedClassifier, trained) -> None:
    """One clear message when the classifier cannot guide the score model: other data shape, classes or SDE."""
    shape, own = tuple(trained.datamodule.sample_shape), tuple(loaded.datamodule.sample_shape)
    if shape != own:
        raise UserError(f"the classifier {loaded.path} was trained on data of shape {own}, the score model on "
                        f"{shape}: train a classifier on the score model's data")
    classes = getattr(trained.datamodule, "num_classes", None)
    mine = loaded.classifier.num_classes
    if classes and classes != mine:
        raise UserError(f"the classifier {loaded.path} has {mine} classes but the score model's data have {classes}: "
                        "train a classifier on the score model's data")
    model_classes = getattr(trained.score, "num_classes", 0) or 0
    if model_classes and model_classes != mine:
        raise UserError(f"the classifier {loaded.path} has {mine} classes but the score model {model_classes}")
    if repr(loaded.sde) != repr(trained.sde):
        raise UserError(f"the classifier {loaded.path} was trained on {loaded.sde!r} but the score model diffuses with "
                        f"{trained.sde!r}: p(y | x_t) depends on the SDE; train the classifier with the same sde")


def classifier_request(task, cfg: DictConfig, trained, device: torch.device) -> ClassifierRequest:
    """The request of ``task=labels task.classifier=<ckpt>``: the classes of ``task`` drawn with classifier guidance
    (the task's own options are checked when it is built, :class:`scorelab.tasks.Labels`)."""
    loaded = load_classifier(task.classifier, cfg)
    check_compatible(loaded, trained)
    request = task.request(loaded.classifier.num_classes, int(cfg.n_samples))
    return ClassifierRequest(request, loaded.classifier.to(device).eval(), task.classifier_scale, loaded.path)
