"""The offline MNIST domain metric on image sets of known quality: fd_mnist and predicted-class histograms.

Trains the fd_mnist classifier if its file is missing (as ``make mnist-features`` does), then compares with the
statistics of the 60000 MNIST training images, in the classifier's 128 penultimate features:

* **real test**: the 10000 test images (never trained on): the floor a perfect generator would reach;
* **blurred test**: the same images through a 3x3 box filter (zero padding, rounded back to uint8);
* **uniform noise**: 10000 images of independent uniform pixels in 0..255;
* **real test, digits 0 and 1 only**: real images from two classes, the case the class histogram exists for.

Each row gives fd_mnist (the Fréchet distance of Gaussian fits to the features; not comparable with FID), the
largest gap between a class's predicted fraction and its fraction in the training labels, and the predicted-class
counts. Run ``python bench/mnist_metric.py --data-dir DIR [--out docs/mnist_metric.md]`` (``make mnist-metric``).
With ``SCORELAB_SMOKE=1`` it is a smoke run (``scorelab.cli.smoke``): a classifier trained 1 epoch on 2048 images when
it has to be trained (in the cache's ``smoke/`` folder), 2048 reference and 1000 test images; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from scorelab.cli.smoke import smoke_active, smoke_cap
from scorelab.core.io import write_text_atomic
from scorelab.data.sources import load_mnist
from scorelab.metrics.frechet import FeatureStats
from scorelab.metrics.mnist_classifier import (
    class_deviation,
    class_histogram,
    default_path,
    load_mnist_features,
    train_mnist_classifier,
)


def box_blur(images: torch.Tensor) -> torch.Tensor:
    """3x3 box filter of uint8 images ``[N, C, H, W]`` (zero padding), rounded back to uint8."""
    return F.avg_pool2d(images.float(), 3, stride=1, padding=1).round().clamp(0, 255).to(torch.uint8)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("SCORELAB_DATA") or "./data",
                        help="folder holding MNIST/raw (default: $SCORELAB_DATA or ./data)")
    parser.add_argument("--classifier", type=Path, default=None,
                        help=f"the classifier file; trained there when missing (default: {default_path()})")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs when it has to be trained (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the classifier and of the noise images")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report (Markdown) to this file")
    args = parser.parse_args(argv)
    # SCORELAB_SMOKE=1: the same rows from a few images (scorelab.cli.smoke); None: all of them
    max_train, max_test, epochs = smoke_cap(None, 2048), smoke_cap(None, 1000), smoke_cap(args.epochs, 1)
    if smoke_active():
        print(f"SCORELAB_SMOKE=1: a smoke run, its numbers mean nothing (reference images 60000 -> {max_train}, "
              f"test images 10000 -> {max_test}; a classifier to train: epochs {args.epochs} -> {epochs}, "
              f"training images 60000 -> {max_train})", flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    path = args.classifier if args.classifier is not None else default_path()
    how = f"loaded from {path}"
    if not path.is_file():
        t = time.perf_counter()
        train_mnist_classifier(args.data_dir, path, epochs=epochs, seed=args.seed, max_train_images=max_train)
        how = f"trained in {time.perf_counter() - t:.0f} s ({epochs} epochs, seed {args.seed})"
    extractor = load_mnist_features(path)

    train_x, train_y = load_mnist(args.data_dir, "train")
    test_x, test_y = load_mnist(args.data_dir, "test")
    train_x, train_y, test_x, test_y = train_x[:max_train], train_y[:max_train], test_x[:max_test], test_y[:max_test]
    reference_counts = class_histogram(train_y)
    meta = {"extractor_id": extractor.extractor_id, "preprocessing": extractor.preprocessing, "dataset": "mnist"}
    reference = FeatureStats.from_features(extractor(train_x), split="train", **meta)
    noise = torch.randint(0, 256, test_x.shape, generator=torch.Generator().manual_seed(args.seed), dtype=torch.uint8)
    sets = {"real test": test_x, "blurred test (3x3 box)": box_blur(test_x), "uniform noise": noise,
            "real test, digits 0 and 1 only": test_x[test_y <= 1]}

    rows = []
    for name, images in sets.items():
        features, logits = extractor.features_and_logits(images)
        fd = reference.distance(FeatureStats.from_features(features, **meta))
        counts = class_histogram(logits)
        rows.append(f"| {name} | {images.shape[0]} | {fd:.2f} | {class_deviation(counts, reference_counts):.3f} | "
                    + " | ".join(str(int(c)) for c in counts) + " |")
    params = sum(p.numel() for p in extractor.parameters())
    lines = [
        *(["(smoke run: numbers mean nothing)", ""] if smoke_active() else []),
        "# fd_mnist: the offline MNIST domain metric",
        "",
        "`python bench/mnist_metric.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
        "",
        f"Classifier: `{extractor.extractor_id}`, {params:,} parameters, {extractor.num_features} features, {how}; "
        f"**test accuracy {extractor.test_accuracy:.4f}** on the 10000 MNIST test images.",
        f"Reference: the {train_x.shape[0]} training images. Preprocessing: `{extractor.preprocessing}`.",
        "fd_mnist is a Fréchet distance in this classifier's feature space: it ranks MNIST samples, and is not FID.",
        "",
        "| images | n | fd_mnist | max class gap | " + " | ".join(str(k) for k in range(10)) + " |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in range(10)) + " |",
        *rows,
        "",
        "max class gap: largest |predicted fraction - training-label fraction| over the 10 digits; the last ten "
        "columns count the predicted classes.",
        f"Whole run: {time.perf_counter() - start:.0f} s on {platform.machine()} with {torch.get_num_threads()} "
        f"torch thread(s), torch {torch.__version__}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out is not None:
        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
