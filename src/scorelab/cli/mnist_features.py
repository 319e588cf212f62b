"""`make mnist-features` (`python -m scorelab.cli.mnist_features`): train and cache the fd_mnist classifier."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from ..metrics.mnist_classifier import default_path, load_mnist_features, train_mnist_classifier
from .smoke import smoke_cap


def main(argv: list[str] | None = None) -> int:
    """``python -m scorelab.cli.mnist_features``: train and cache the ``fd_mnist`` classifier."""
    p = argparse.ArgumentParser(prog="python -m scorelab.cli.mnist_features",
                                description="Train the small MNIST classifier whose penultimate features give the "
                                            "offline fd_mnist metric (not FID), and cache it.")
    p.add_argument("--data-dir", default=os.environ.get("SCORELAB_DATA") or "./data",
                   help="folder holding MNIST/raw (default: $SCORELAB_DATA or ./data)")
    p.add_argument("--out", type=Path, default=None, help=f"file to write (default: {default_path()})")
    p.add_argument("--epochs", type=int, default=3, help="passes over the 60000 training images (default: 3)")
    p.add_argument("--max-train-images", type=int, default=None,
                   help="train on at most this many images (default: all 60000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device to train on (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--download", action="store_true", help="download MNIST into --data-dir when missing")
    p.add_argument("--force", action="store_true", help="retrain even if the file exists")
    args = p.parse_args(argv)
    out = args.out if args.out is not None else default_path()
    if out.is_file() and not args.force:
        print(f"{out} exists (test accuracy {load_mnist_features(out).test_accuracy:.4f}); nothing to do "
              "(--force retrains)")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    path, acc = train_mnist_classifier(args.data_dir, out, epochs=smoke_cap(args.epochs, 1), seed=args.seed,
                                       device=args.device, download=args.download,
                                       max_train_images=smoke_cap(args.max_train_images, 512))
    print(f"test accuracy {acc:.4f} ({acc * 10000:.0f}/10000); saved {path}")
    return 0


if __name__ == "__main__":
    from .errors import run_or_exit

    raise SystemExit(run_or_exit(main))
