"""Few-step samplers on a trained MNIST model: wall time and quality against the paper's Euler–Maruyama.

For each sampler this runs ``sample.py`` on the checkpoint as a user would (``n`` samples, seeds ``0..n-1``,
``eval.fid=true``, so MNIST samples are scored by the offline domain metric ``fd_mnist`` against the 60000
training images) and prints one row: NFE, the wall time of sampling alone and of the whole command (loading,
reference statistics and evaluation included), fd_mnist, kd_mnist, the largest gap between a digit's predicted
fraction and its share of the training labels (class gap), and the predicted-class counts.

The same seeds are used by every sampler, so rows differ only by the sampler. ``fd_mnist`` of ``n`` real
test images is printed first, as the floor (fd_mnist is biased upwards at small ``n``: compare rows at one ``n``).

    python bench/mnist_sampling.py --ckpt <run>/checkpoints/last.ckpt [--data-dir DIR] [--n 2000] [--out FILE]
    python bench/mnist_sampling.py --ckpt ... --samplers "ipndm" "dpmpp_3m sampler.steps=19"

Each sampler spec is ``<sampler config> [key=value ...]``, the overrides ``sample.py`` itself takes. ``sample.py``
runs in the current folder (the folder relative paths, ``--ckpt`` and ``--data-dir`` included, are read from).
With ``SCORELAB_SMOKE=1`` it is a smoke run (``scorelab.cli.smoke``): 16 samples, one sampler, a classifier and
reference statistics from 2048 training images; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from scorelab.cli.smoke import smoke_active, smoke_cap
from scorelab.metrics.mnist_classifier import class_deviation

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLERS = (
    "euler_maruyama sampler.steps=300",
    "ipndm",
    "ipndm sampler.steps=19",
    "dpmpp_3m",
    "unipc",
    "dpmpp_2m",
    "edm",
)


def run_sampler(spec: str, ckpt: str, n: int, batch_size: int, data_dir: str, workdir: Path) -> dict:
    """``sample.py`` with one sampler spec; returns its ``sample.json`` plus the process's wall time."""
    name, *overrides = shlex.split(spec)
    out = workdir / name.replace("/", "_") / str(abs(hash(spec)))
    cmd = [sys.executable, str(ROOT / "sample.py"), f"ckpt_path={ckpt}", f"sampler={name}", *overrides,
           f"n_samples={n}", f"batch_size={batch_size}", "eval.fid=true", "progress=false",
           f"paths.data_dir={data_dir}", f"hydra.run.dir={out}"]
    began = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)  # in this folder: paths.root_dir is the current one
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"{spec}: sample.py failed\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    summary = json.loads((out / "sample.json").read_text())
    summary["process_seconds"] = wall
    return summary


def reference(n: int, data_dir: str) -> tuple[torch.Tensor, dict]:
    """Training-label counts, and the floor row: fd_mnist and classes of ``n`` real test images."""
    from scorelab.data.sources import load_mnist
    from scorelab.metrics.frechet import FeatureStats
    from scorelab.metrics.mnist_classifier import class_histogram, mnist_features

    max_train = smoke_cap(None, 2048)  # None (all 60000) unless SCORELAB_SMOKE=1
    extractor = mnist_features(None, data_dir=data_dir, train_if_missing=True, max_train_images=max_train)
    train_images, train_labels = load_mnist(data_dir, "train")
    train_images, train_labels = train_images[:max_train], train_labels[:max_train]
    test_images = load_mnist(data_dir, "test")[0][:n]
    pre = dict(extractor_id=extractor.extractor_id, preprocessing=extractor.preprocessing)
    ref = FeatureStats.from_features(extractor(train_images), **pre)
    fd = ref.distance(FeatureStats.from_features(extractor(test_images), **pre))
    return class_histogram(train_labels), {"fd": fd, "hist": class_histogram(extractor.logits(test_images))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a train.py checkpoint of an MNIST model")
    parser.add_argument("--data-dir", default=os.environ.get("SCORELAB_DATA") or "./data",
                        help="folder holding MNIST/raw (the reference statistics and the classifier read it; "
                             "default: $SCORELAB_DATA or ./data)")
    parser.add_argument("--n", type=int, default=2000, help="samples per sampler (seeds 0..n-1)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--samplers", nargs="+", default=list(DEFAULT_SAMPLERS),
                        help='sampler specs: "<config> [key=value ...]"')
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    if smoke_active():  # SCORELAB_SMOKE=1: the same rows from a few samples (scorelab.cli.smoke)
        caps = [f"n {args.n} -> {smoke_cap(args.n, 16)}", f"batch size {args.batch_size} -> "
                f"{smoke_cap(args.batch_size, 16)}", f"samplers {len(args.samplers)} -> "
                f"{len(smoke_cap(args.samplers, 1))}", "reference and classifier: 2048 training images"]
        args.n, args.batch_size = smoke_cap(args.n, 16), smoke_cap(args.batch_size, 16)
        args.samplers = smoke_cap(args.samplers, 1)
        print(f"SCORELAB_SMOKE=1: a smoke run, its numbers mean nothing ({', '.join(caps)})", flush=True)

    lines = [f"## Samplers on a trained MNIST model ({Path(args.ckpt).name}, n = {args.n}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'})", "",
             "| sampler | NFE | sampling s | whole command s | fd_mnist | kd_mnist | class gap "
             "| predicted classes 0-9 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    print("\n".join(lines), flush=True)
    train_counts, floor = reference(args.n, args.data_dir)
    gap = class_deviation(floor["hist"], train_counts)
    line = (f"| real test images (floor) | - | - | - | {floor['fd']:.3f} | - | {gap:.3f} | "
            f"{' '.join(str(int(c)) for c in floor['hist'])} |")
    lines.append(line)
    print(line, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.samplers:
            s = run_sampler(spec, args.ckpt, args.n, args.batch_size, args.data_dir, Path(tmp))
            run = s["runs"][0]
            hist = run.get("class_histogram", [])
            gap = class_deviation(torch.tensor(hist), train_counts) if hist else float("nan")
            kd = run.get("kd_mnist", float("nan"))
            line = (f"| {spec} | {run['nfe']} | {run['seconds']:.1f} | {s['process_seconds']:.1f} | "
                    f"{run['fd_mnist']:.3f} | {kd:.5f} | "
                    f"{gap:.3f} | {' '.join(str(c) for c in hist)} |")
            lines.append(line)
            print(line, flush=True)
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    lines.append(f"\nLoad average when the table ended: {load} (1/5/15 min).")
    print(lines[-1])
    if args.out:
        args.out.write_text("\n".join((["(smoke run: numbers mean nothing)", ""] if smoke_active() else []) + lines)
                            + "\n")


if __name__ == "__main__":
    main()
