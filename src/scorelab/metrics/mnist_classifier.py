"""Offline MNIST domain metric: a small CNN whose penultimate features give ``fd_mnist``, and class histograms.

Inception features suit 28x28 digits poorly and need downloaded weights. Instead a ~240k-parameter CNN is trained
on the MNIST training set (``make mnist-features``, cached in ``cache_dir() / "mnist_classifier.pt"``). The Fréchet
distance between Gaussians fitted to its 128 penultimate features (Heusel et al. 2017, with another network) is
reported as ``fd_mnist``: it ranks MNIST samples, but its values are not comparable with FID. The predicted classes
of generated digits give a histogram: a model that draws only some digits shows it there.

The saved file is a plain dict (format, architecture arguments, ``state_dict``, test accuracy, training settings)
that loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserError
from ..core.io import atomic_path, cache_dir, load_torch_file

FORMAT = "scorelab-mnist-classifier-v1"
ARCH = "mnist-cnn-v1"
METRIC_NAME = "fd_mnist"
DEFAULT_FILENAME = "mnist_classifier.pt"
NUM_CLASSES = 10
DOMAIN = "mnist"  # the dataset_name of the data it measures (MNISTDataModule, data=torchvision data.name=MNIST)
PIXEL_MEAN, PIXEL_STD = 0.1307, 0.3081  # of the MNIST training pixels in [0, 1]
PREPROCESSING = f"uint8 [B, 1, 28, 28] -> (x / 255 - {PIXEL_MEAN}) / {PIXEL_STD}, no resize"


class MNISTClassifier(nn.Module):
    """Three conv-BN-ReLU-maxpool blocks (28 -> 14 -> 7 -> 3), a hidden layer of ``num_features``, 10 logits.

    Args:
        channels: output channels of the three convolution blocks.
        num_features: width of the penultimate layer (the features of ``fd_mnist``).
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128), num_features: int = 128):
        super().__init__()
        self.channels, self.num_features = tuple(int(c) for c in channels), int(num_features)
        blocks, c_in = [], 1
        for c in self.channels:
            blocks += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        side = 28 // 2 ** len(self.channels)
        self.body = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(c_in * side * side, self.num_features), nn.ReLU())
        self.head = nn.Linear(self.num_features, NUM_CLASSES)

    def arch(self) -> dict:
        """The constructor arguments, as stored in the saved file."""
        return {"channels": list(self.channels), "num_features": self.num_features}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate features ``[B, num_features]`` (after the ReLU) and logits ``[B, 10]``.

        Args:
            x: float32 images standardised by :func:`normalize`.
        """
        features = self.body(x)
        return features, self.head(features)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images ``[B, 1, 28, 28]`` in 0..255 -> float32 standardised with the MNIST pixel mean and std."""
    return (images.float() / 255 - PIXEL_MEAN) / PIXEL_STD


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) of a state dict's names, dtypes, shapes and values: equal digests mean equal weights."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class MNISTFeatures(nn.Module):
    """The ``fd_mnist`` feature extractor: uint8 digits in, penultimate features (and logits) out; always eval, no grad.

    Args:
        classifier: a trained :class:`MNISTClassifier` (frozen and put in eval mode here).
        test_accuracy: its accuracy on the MNIST test set, when known (reported with the metric).
        batch_size: images per forward pass (inputs of any size are processed in chunks of this many).
    """

    metric_name: str = METRIC_NAME
    preprocessing: str = PREPROCESSING
    num_classes: int = NUM_CLASSES
    domain: str = DOMAIN  # the data it measures: the FID callback runs it only on MNIST

    def __init__(self, classifier: MNISTClassifier, test_accuracy: float | None = None, batch_size: int = 1000):
        super().__init__()
        self.net = classifier.eval().requires_grad_(False)
        self.num_features = classifier.num_features
        self.test_accuracy = test_accuracy
        self.batch_size = int(batch_size)
        self.eval()

    @property
    def extractor_id(self) -> str:
        """``mnist-cnn-v1:<12 hex of sha256 of the weights>``: statistics of different weights never mix."""
        return f"{ARCH}:{weights_digest(self.net.state_dict())[:12]}"

    def train(self, mode: bool = True) -> MNISTFeatures:
        """Stay in eval mode whatever is asked (a metric must not update batch-norm statistics)."""
        return super().train(False)

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``[B, num_features]`` and logits ``[B, 10]`` (float32, on the network's device) in one pass.

        Args:
            images: uint8 ``[B, 1, 28, 28]`` with values 0..255 (generated samples quantised as saved).

        Raises:
            ValueError: another dtype or shape.
        """
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
            raise ValueError(f"MNIST features expect uint8 images of shape [B, 1, 28, 28] in 0..255, got "
                             f"{images.dtype} {list(images.shape)}")
        device = next(self.net.parameters()).device
        outs = [self.net(normalize(chunk.to(device))) for chunk in images.split(self.batch_size)]
        if not outs:
            return torch.zeros(0, self.num_features, device=device), torch.zeros(0, NUM_CLASSES, device=device)
        return torch.cat([f for f, _ in outs]), torch.cat([lg for _, lg in outs])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[B, num_features]`` (float32) of uint8 images ``[B, 1, 28, 28]``."""
        return self.features_and_logits(images)[0]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, 10]`` (float32) of uint8 images ``[B, 1, 28, 28]``."""
        return self.features_and_logits(images)[1]


# --- class histograms -------------------------------------------------------------------------------------------
def class_histogram(logits_or_labels: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """How many images fall in each class: ``counts [num_classes]`` (int64).

    Args:
        logits_or_labels: logits ``[N, num_classes]`` (the predicted class is the argmax) or integer labels ``[N]``.
    """
    x = logits_or_labels
    labels = x.argmax(1) if x.ndim == 2 else x
    integer = labels.ndim == 1 and not labels.is_floating_point() and labels.dtype != torch.bool
    if not integer or (labels.numel() and (labels.min() < 0 or labels.max() >= num_classes)):
        raise ValueError(f"expected logits [N, {num_classes}] or integer labels [N] in 0..{num_classes - 1}, got "
                         f"{x.dtype} {list(x.shape)}")
    return torch.bincount(labels.long().cpu(), minlength=num_classes)


def class_fractions(counts: torch.Tensor) -> torch.Tensor:
    """Fraction of images per class ``[K]`` (float64, sums to 1) from counts ``[K]``."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    return counts / counts.sum().clamp_min(1)


def class_deviation(counts: torch.Tensor, reference: torch.Tensor | None = None) -> float:
    """Largest ``|fraction - reference fraction|`` over classes: 0 for a matching mix, 0.4 for two digits of ten.

    Args:
        counts: class counts ``[K]`` of the images judged.
        reference: class counts (or fractions) ``[K]`` to compare with, e.g. of the test set; default uniform.
    """
    p = class_fractions(counts)
    q = class_fractions(reference) if reference is not None else torch.full_like(p, 1 / p.numel())
    return float((p - q).abs().max())


# --- training, saving, loading ----------------------------------------------------------------------------------
def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image ``[B, C, H, W]`` by its own whole-pixel offset in ``-max_shift..max_shift``, zero-filled."""
    b, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4).permute(0, 2, 3, 1)  # [B, H + 2s, W + 2s, C]
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b, 1, 1), generator=generator)
    rows, cols = dy + torch.arange(h)[:, None], dx + torch.arange(w)
    return padded[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)


def fit_mnist_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 3, batch_size: int = 128,
                         lr: float = 3e-3, max_shift: int = 2, seed: int = 0, device: str = "cpu",
                         log: Callable[[str], None] | None = None, progress: bool = True) -> MNISTClassifier:
    """Train a :class:`MNISTClassifier` with AdamW and a one-cycle learning rate, on randomly shifted digits.

    Args:
        images: uint8 ``[N, 1, 28, 28]``; labels: int ``[N]``.
        epochs, batch_size, lr: passes over the data, images per step (the last partial batch is dropped),
            peak learning rate.
        max_shift: largest random translation in pixels (generated digits are rarely centred exactly).
        seed: seeds the initial weights, the data order and the shifts (the global RNG is left as it was).
        log: called with one line per epoch.
        progress: a progress bar over all batches with an ETA (:class:`scorelab.core.console.Progress`).

    Returns:
        The trained classifier, in eval mode, on ``device``.
    """
    from ..core.console import Progress

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MNISTClassifier().to(device)
    batch_size = min(batch_size, images.shape[0])
    steps = images.shape[0] // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.2)
    model.train()
    bar = Progress(epochs * steps, "training the fd_mnist classifier", "batch", progress)
    for epoch in range(epochs):
        start, total = time.perf_counter(), 0.0
        for idx in torch.randperm(images.shape[0], generator=gen)[: steps * batch_size].view(steps, batch_size):
            x = normalize(random_shift(images[idx], max_shift, gen)).to(device)
            loss = F.cross_entropy(model(x)[1], labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
            bar.update(1)
            bar.set_postfix_str(f"epoch {epoch + 1}/{epochs}")
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: train loss {total / steps:.4f} ({time.perf_counter() - start:.0f} s)")
    bar.close()
    return model.eval()


def accuracy(extractor: MNISTFeatures, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of uint8 images ``[N, 1, 28, 28]`` whose predicted class equals ``labels [N]``."""
    return float((extractor.logits(images).argmax(1).cpu() == labels.cpu()).double().mean())


def save_mnist_classifier(classifier: MNISTClassifier, path: str | os.PathLike, test_accuracy: float,
                          **training: int | float | str) -> Path:
    """Write the classifier atomically as a plain dict that loads with ``torch.load(weights_only=True)``.

    Args:
        training: settings recorded with it (epochs, seed, ...): numbers and strings only.
    """
    state = {k: v.detach().cpu().clone() for k, v in classifier.state_dict().items()}
    obj = {"format": FORMAT, "arch": classifier.arch(), "state_dict": state, "test_accuracy": float(test_accuracy),
           "training": dict(training)}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def default_path() -> Path:
    """Where ``make mnist-features`` saves the classifier: ``cache_dir() / "mnist_classifier.pt"``."""
    return cache_dir() / DEFAULT_FILENAME


def load_mnist_features(path: str | os.PathLike | None = None, device: str = "cpu") -> MNISTFeatures:
    """Load the saved classifier as the ``fd_mnist`` extractor (``torch.load(weights_only=True)``).

    Args:
        path: the file; default :func:`default_path`.
        device: where the network runs.

    Raises:
        UserError: the file is missing (run ``make mnist-features``), unreadable or not such a classifier.
    """
    path = Path(path).expanduser() if path is not None else default_path()
    if not path.is_file():
        raise UserError(f"MNIST feature classifier not found: {path}. Train it once with `make mnist-features` "
                        "(python -m scorelab.metrics.mnist_classifier), or pass the path of an existing one")
    try:
        obj = load_torch_file(path, "MNIST classifier")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"MNIST classifier {path} cannot be read ({type(exc).__name__}: {exc}); delete it and run "
                        "`make mnist-features` again") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"{path} is not a scorelab MNIST classifier (format {FORMAT}); rebuild it with "
                        "`make mnist-features ARGS=--force`")
    try:
        net = MNISTClassifier(**obj["arch"])
        net.load_state_dict(obj["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise UserError(f"{path} does not match the MNIST classifier architecture ({type(exc).__name__}); rebuild "
                        "it with `make mnist-features ARGS=--force`") from None
    return MNISTFeatures(net.to(device), test_accuracy=obj.get("test_accuracy"))


def mnist_features(path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
                   train_if_missing: bool = True, device: str = "cpu",
                   max_train_images: int | None = None) -> MNISTFeatures:
    """The ``fd_mnist`` extractor for configs: load the classifier, training it once (cached) if it is missing.

    Args:
        path: the classifier file; default :func:`default_path`.
        data_dir: the MNIST root folder used when the classifier has to be trained (a few minutes on a CPU).
        train_if_missing: train when the file is missing (else the ``UserError`` of :func:`load_mnist_features`).
        device: where the network runs.
        max_train_images: train on at most this many images (None: all 60,000).
    """
    target = Path(path).expanduser() if path is not None else default_path()
    if not target.is_file() and train_if_missing and data_dir is not None:
        _print_now(f"fd_mnist: no classifier at {target}; training it once on {data_dir}: 3 epochs over "
                   f"{max_train_images or 60000} MNIST images, a few CPU minutes, cached for later runs (make "
                   "mnist-features does it ahead; features=inception avoids it)")
        train_mnist_classifier(data_dir, target, max_train_images=max_train_images)
    return load_mnist_features(target, device)


mnist_features.domain = DOMAIN  # read from the config's _target_ before anything is built (or trained)

def _print_now(message: str) -> None:
    """Say ``message`` now (console and the command's log; rank 0)."""
    from ..core.console import say

    say(message)


def train_mnist_classifier(data_dir: str | os.PathLike, out: str | os.PathLike | None = None, epochs: int = 3,
                           seed: int = 0, device: str = "cpu", max_train_images: int | None = None,
                           download: bool = False, log: Callable[[str], None] | None = _print_now,
                           **fit_kwargs) -> tuple[Path, float]:
    """Train the ``fd_mnist`` classifier on the MNIST training set, measure it on the test set, save it.

    Args:
        data_dir: root folder holding ``MNIST/raw`` (torchvision layout).
        out: where to save; default :func:`default_path`.
        epochs, seed, device: as :func:`fit_mnist_classifier` (``fit_kwargs`` passes the others).
        max_train_images: train on the first this many training images only (quick checks).
        download: fetch MNIST when missing.

    Returns:
        ``(path, test_accuracy)``: the saved file and the accuracy on the 10000 test images.
    """
    from ..data.sources import load_mnist

    images, labels = load_mnist(data_dir, "train", download)
    test_images, test_labels = load_mnist(data_dir, "test")
    images, labels = images[:max_train_images], labels[:max_train_images]
    start = time.perf_counter()
    net = fit_mnist_classifier(images, labels, epochs=epochs, seed=seed, device=device, log=log, **fit_kwargs)
    seconds = time.perf_counter() - start
    acc = accuracy(MNISTFeatures(net), test_images, test_labels)
    path = save_mnist_classifier(net, out if out is not None else default_path(), acc, epochs=epochs, seed=seed,
                                 train_images=int(images.shape[0]), train_seconds=round(seconds, 1))
    return path, acc

