"""Evaluation cost: Inception feature throughput and the time of a 10k-sample FID, on CPU and (when present) GPU.

    python bench/evaluation.py                       # CPU (and CUDA if available), 10k-sample FID extrapolated
    python bench/evaluation.py --full                # actually run the 10k feature pass (~25 min on 2 CPU cores)
    python bench/evaluation.py --weights <file>      # offline: the Inception weights file

Without real weights (offline, nothing cached) the network runs with random weights of the same architecture:
the cost is identical. Prints a Markdown table. With ``SCORELAB_SMOKE=1`` it is a smoke run (``scorelab.cli.smoke``):
8 images, and statistics of 256 feature rows instead of 10k; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scorelab.cli.smoke import smoke_active, smoke_cap  # noqa: E402
from scorelab.core.errors import UserError  # noqa: E402
from scorelab.metrics.evaluation import SampleEvaluator, extract_features  # noqa: E402
from scorelab.metrics.frechet import FeatureStats  # noqa: E402
from scorelab.metrics.inception import InceptionFeatures  # noqa: E402


def _extractor(weights: str | None) -> tuple[InceptionFeatures, str]:
    try:
        return InceptionFeatures(weights_path=weights), "2015-12-05"
    except UserError:
        from tests.evaluation_utils import write_random_inception_weights

        path = write_random_inception_weights(Path(tempfile.mkdtemp()) / "inception_random.pth")
        return InceptionFeatures(weights_path=path), "random (same architecture)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(device: torch.device, extractor: InceptionFeatures, n_images: int, batch_size: int, full: bool,
            n_fid: int = 10_000) -> dict:
    """Images/s of the feature pass on 32x32 RGB images, and the time of an ``n_fid``-sample FID."""
    extractor = extractor.to(device)
    images = torch.randint(0, 256, (n_images, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    extract_features(extractor, images[:batch_size], batch_size, batch_size, device)  # warm-up
    _sync(device)
    began = time.perf_counter()
    features = extract_features(extractor, images, n_images, batch_size, device)
    _sync(device)
    per_image = (time.perf_counter() - began) / n_images
    ref = FeatureStats.from_features(features, extractor_id=extractor.extractor_id,
                                     preprocessing=extractor.preprocessing)
    evaluator = SampleEvaluator(extractor, ref).to(device)
    stand_in = features.repeat((n_fid + n_images - 1) // n_images, 1)[:n_fid].to(device)  # n_fid feature rows
    began = time.perf_counter()
    evaluator.update_features(stand_in)
    evaluator.compute()  # float64 2048 x 2048 moments of n_fid rows and the trace of the matrix square root
    _sync(device)
    stats_seconds = time.perf_counter() - began
    fid_seconds, how = n_fid * per_image + stats_seconds, f"extrapolated from {n_images} images"
    if full:
        big = images.repeat((n_fid + n_images - 1) // n_images, 1, 1, 1)[:n_fid]
        began = time.perf_counter()
        evaluator.reset()
        evaluator.update_features(extract_features(extractor, big, n_fid, batch_size, device).to(device))
        evaluator.compute()
        _sync(device)
        fid_seconds, how = time.perf_counter() - began, "measured"
    return {"images_per_s": 1.0 / per_image, "stats_s": stats_seconds, "fid_s": fid_seconds, "how": how}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="Inception weights file (feature_extractor_weights_path)")
    parser.add_argument("--images", type=int, default=200, help="images timed on CPU (x10 on GPU)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--full", action="store_true", help="run the whole 10k-sample feature pass")
    args = parser.parse_args()
    n_fid = smoke_cap(10_000, 256)  # SCORELAB_SMOKE=1: the same table from a few images (scorelab.cli.smoke)
    if smoke_active():
        print(f"SCORELAB_SMOKE=1: a smoke run, its numbers mean nothing (images {args.images} -> "
              f"{smoke_cap(args.images, 8)}, batch size {args.batch_size} -> {smoke_cap(args.batch_size, 8)}, "
              f"FID feature rows 10000 -> {n_fid})", flush=True)
        args.images, args.batch_size = smoke_cap(args.images, 8), smoke_cap(args.batch_size, 8)
    extractor, weights = _extractor(args.weights)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"Inception-v3 features (weights: {weights}), 32x32 RGB inputs resized to 299, batch {args.batch_size}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPU threads available ({torch.get_num_threads()} used), "
          f"{platform.processor() or platform.machine()}\n")
    print("| device | images/s | FID statistics of 10k features [s] | 10k-sample FID [s] | how |")
    print("| --- | ---: | ---: | ---: | --- |")
    for device in devices:
        name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
        n = args.images * (10 if device.type == "cuda" else 1)
        row = measure(device, extractor, n, args.batch_size * (4 if device.type == "cuda" else 1), args.full, n_fid)
        print(f"| {name} | {row['images_per_s']:.1f} | {row['stats_s']:.2f} | {row['fid_s']:.0f} | {row['how']} |")


if __name__ == "__main__":
    main()
