"""Classifier guidance from the commands: train a noisy classifier with ``train.py``, guide ``sample.py`` with it.

* ``python train.py experiment=mnist_noisy_classifier`` (or ``toy_eight_gaussians_classifier``): the config's
  ``classifier_module`` names :class:`~scorelab.lit.classifier_module.NoisyClassifierModule` and its ``model`` a
  :class:`~scorelab.models.noisy_classifier.NoisyClassifier`; :func:`build_classifier_module` builds them.
* ``python sample.py ckpt_path=<score model> classifier=<classifier ckpt> label=3`` (or ``labels=all per_class=10``)
  samples with ``s + classifier_scale * grad log p_phi(y | x, t)`` (:mod:`scorelab.classifier_guidance`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from ..classifier_guidance import BatchGuidance, label_grid
from ..io import write_text_atomic
from ..lit.classifier_module import NoisyClassifierModule
from ..models.noisy_classifier import NoisyClassifier
from .common import build_core, check_state_dict, check_stored_targets, load_checkpoint, upgrade_stored_config
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


def load_classifier(path: str, data_dir: str | None = None) -> LoadedClassifier:
    """Rebuild a noisy classifier from a ``train.py`` checkpoint, read with ``weights_only=True`` and its stored
    ``_target_``s checked against the allowlist before anything is built."""
    if not Path(str(path)).expanduser().is_file():
        raise UserError(f"classifier checkpoint not found: {path}. Pass classifier=<run dir>/checkpoints/last.ckpt "
                        f"of a noisy-classifier run ({CLASSIFIER_EXPERIMENTS})")
    path, ckpt = load_checkpoint(path)
    stored = ckpt.get("scorelab_config")
    if stored is None:
        raise UserError(f"{path} has no stored scorelab config; it was not written by scorelab's train.py")
    stored = upgrade_stored_config(stored)
    check_stored_targets(stored, path)  # before anything from the file is instantiated
    if not stored.get("classifier_module"):
        raise UserError(f"classifier={path} is a score-model checkpoint, not a noisy classifier; train one with "
                        f"{CLASSIFIER_EXPERIMENTS}")
    train_cfg = OmegaConf.create(stored)
    if data_dir is not None and "data_dir" in train_cfg.data:
        train_cfg.data.data_dir = str(data_dir)
    parts = build_core(train_cfg)
    module = build_classifier_module(train_cfg, parts)
    check_state_dict(module, ckpt["state_dict"], path)
    module.load_state_dict(ckpt["state_dict"])
    return LoadedClassifier(module.classifier.eval(), parts["sde"], parts["datamodule"], path)


def refuse_score_as_classifier(ckpt_path: str, stored: dict) -> None:
    """``ckpt_path`` must be a score model: a classifier checkpoint there gets a message saying where it goes."""
    if stored.get("classifier_module"):
        raise UserError(f"ckpt_path={ckpt_path} is a noisy classifier, not a score model; pass it as "
                        "classifier=<that file> together with ckpt_path=<a score model>")


# --- sampling ------------------------------------------------------------------------------------------------
def wants_labels(cfg: DictConfig) -> bool:
    return cfg.get("label") is not None or cfg.get("labels") is not None


def requested_labels(cfg: DictConfig, num_classes: int) -> torch.Tensor:
    """The class of every sample: ``label=k`` (all ``n_samples``), ``labels=all`` (``per_class`` of each class, in
    rows) or ``labels=[a,b,...]`` (``per_class`` of each listed class)."""
    if cfg.get("label") is not None and cfg.get("labels") is not None:
        raise UserError("give one of label=<k> (every sample) and labels=all | [a,b,...] (per_class of each)")
    if cfg.get("label") is not None:
        return torch.full((cfg.n_samples,), _class_index(cfg.label, num_classes), dtype=torch.long)
    per_class = cfg.get("per_class", 8)
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise UserError(f"per_class must be a positive integer, got {per_class!r}")
    spec = cfg.labels
    if spec == "all":
        return label_grid(num_classes, per_class)
    items = list(spec) if isinstance(spec, (list, tuple, ListConfig)) else [spec]
    return torch.tensor([_class_index(k, num_classes) for k in items]).repeat_interleave(per_class)


def _class_index(value: Any, num_classes: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_classes:
        raise UserError(f"a class label must be an integer in 0..{num_classes - 1}, got {value!r} (labels=all for "
                        "every class)")
    return value


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


def guided_score(cfg: DictConfig, trained, score: torch.nn.Module, device: torch.device
                 ) -> tuple[Any, DictConfig, torch.Tensor | None]:
    """``(score model or BatchGuidance, cfg with n_samples set, labels or None)`` for ``classifier=`` / ``label=``.

    Without ``classifier`` and labels nothing changes. Labels without a classifier need a class-conditional model.
    """
    if not cfg.get("classifier"):
        if wants_labels(cfg) and not getattr(trained.score, "num_classes", 0):
            raise UserError("label/labels ask for classes but the model is unconditional: add "
                            "classifier=<noisy classifier checkpoint> (classifier guidance, "
                            f"{CLASSIFIER_EXPERIMENTS}) or sample a class-conditional model")
        return score, cfg, None
    if not wants_labels(cfg):
        raise UserError("classifier= guides towards classes: say which with label=<k> or labels=all per_class=<n>")
    loaded = load_classifier(cfg.classifier, data_dir=cfg.paths.data_dir)
    check_compatible(loaded, trained)
    labels = requested_labels(cfg, loaded.classifier.num_classes)
    scale = cfg.get("classifier_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise UserError(f"classifier_scale must be a number, got {scale!r}")
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.n_samples = int(labels.numel())
    return BatchGuidance(score, loaded.classifier.to(device), labels, float(scale)), cfg, labels


def report_labels(cfg: DictConfig, trained, out: Path, labels: torch.Tensor, result: Path) -> dict[str, Any]:
    """Write how well the samples hit their classes: ``label_accuracy`` (and per class) into ``sample.json`` or
    ``metrics.json``, measured by the exact mixture posterior (toy data) or the MNIST domain classifier."""
    predicted = _predicted_classes(cfg, trained, result, len(labels))
    report: dict[str, Any] = {"classifier": str(cfg.classifier), "classifier_scale": float(cfg.classifier_scale),
                              "labels": labels.tolist()}
    if predicted is not None:
        hit = (predicted == labels).double()
        per_class = {int(k): float(hit[labels == k].mean()) for k in labels.unique()}
        report.update(label_accuracy=float(hit.mean()), label_accuracy_per_class=per_class,
                      predicted_classes=predicted.tolist())
        print(f"label accuracy {report['label_accuracy']:.4f} at classifier_scale={report['classifier_scale']:g}")
    summary_file = out / ("sample.json" if len(trained.datamodule.sample_shape) == 3 else "metrics.json")
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    summary["guidance"] = report
    write_text_atomic(summary_file, json.dumps(summary, indent=2))
    return report


def _predicted_classes(cfg: DictConfig, trained, result: Path, n: int) -> torch.Tensor | None:
    """Classes of the written samples: exact mixture components (toy) or the MNIST domain classifier's argmax."""
    mixture = getattr(trained.datamodule, "mixture", None)
    if mixture is not None:
        import numpy as np

        return mixture.classify(torch.from_numpy(np.load(result)["x"][:n]).double()).cpu()
    if getattr(trained.datamodule, "dataset_name", None) != "mnist":
        print("label accuracy: no domain classifier for this data (MNIST and toy mixtures only)")
        return None
    from ..data.sample_files import ImageSet
    from ..metrics.mnist_classifier import mnist_features

    images = ImageSet(result).read(0, n)
    features = mnist_features(data_dir=cfg.paths.data_dir)
    return features.logits(images).argmax(1).cpu()
