"""Training throughput and peak memory of the image score networks.

For each preset (``conf/model/*.yaml``) at its batch size, time full training steps (forward + backward +
Adam step, the DSM loss of the preset's SDE) and record peak memory. Every (preset, variant) runs in a fresh
subprocess so peak memory is its own.

Variants: ``fp32``, ``channels_last``, ``compile`` (torch.compile of the backbone) and, on GPU, ``bf16``
(autocast bf16-mixed) and ``bf16+cl+compile``. CPU memory is the process's peak resident set size (includes
the Python/torch baseline, printed in its own row); GPU memory is ``torch.cuda.max_memory_allocated``.

    python bench/throughput.py                       # CPU table (and GPU table when CUDA is available)
    python bench/throughput.py --quick               # smoke run: tiny batches, 2 steps
    python bench/throughput.py --presets unet_small --variants fp32,channels_last --steps 10

With ``SCORELAB_SMOKE=1`` it is a smoke run (``scorelab.cli.smoke``): the first preset only, as ``--quick`` (batch 2,
1 warm-up and 1 timed step); its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# preset -> (shape C, H, W, SDE, batch size of the recipe, default CPU batch size)
PRESETS = {
    "unet_small": ((1, 28, 28), "vp", 128, 128),
    "ddpmpp": ((3, 32, 32), "vp", 128, 16),
    "ddpmpp_deep": ((3, 32, 32), "vp", 128, 8),
    "ncsnpp": ((3, 32, 32), "ve", 128, 16),
    "ncsnpp_deep": ((3, 32, 32), "ve", 128, 8),
}
CPU_VARIANTS = ["fp32", "channels_last"]  # compile gives no CPU speed-up here; --variants adds it
GPU_VARIANTS = ["fp32", "bf16", "channels_last", "compile", "bf16+cl+compile"]


def worker(preset: str, variant: str, device: str, batch: int, steps: int, warmup: int) -> dict:
    """Build the preset, run ``warmup`` untimed and ``steps`` timed training steps, return a result row."""
    import resource

    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from scorelab.objectives.score_matching import DSMLoss
    from scorelab.sde import VESDE, VPSDE

    torch.manual_seed(0)
    (c, h, w), sde_name, _, _ = PRESETS[preset]
    sde = VPSDE() if sde_name == "vp" else VESDE()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name=f"model/{preset}").model  # presets extend conf/model/ddpmpp.yaml
    cfg.net.in_channels, cfg.net.image_size = c, h
    model = instantiate(cfg, sde=sde).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    channels_last = "cl" in variant or variant == "channels_last"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if "compile" in variant:
        model.net = torch.compile(model.net)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    loss_fn = DSMLoss(sde)
    x = torch.rand(batch, c, h, w, device=device) * 2 - 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if "bf16" in variant else None

    def step():
        opt.zero_grad(set_to_none=True)
        if amp is not None:
            with amp:
                loss = loss_fn(model, x)
        else:
            loss = loss_fn(model, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    cuda = device.startswith("cuda")
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"preset": preset, "variant": variant, "device": device, "params": n_params, "batch": batch,
            "step_s": elapsed / steps, "img_per_s": batch * steps / elapsed, "peak_mib": peak / 2**20}


def baseline_rss() -> float:
    """Peak RSS (MiB) of a process that imports torch and scorelab and does nothing else."""
    code = ("import resource, torch, scorelab.models, hydra;"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def run_isolated(args: list[str], timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout}s"}
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1][:80]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "", "| preset | params | variant | batch | s/step | images/s | peak memory [MiB] |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['preset']} | | {r['variant']} | {r.get('batch', '')} | | | {r['error']} |")
        else:
            lines.append(f"| {r['preset']} | {r['params']:,} | {r['variant']} | {r['batch']} | {r['step_s']:.3f} | "
                         f"{r['img_per_s']:.1f} | {r['peak_mib']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated conf/model presets")
    parser.add_argument("--variants", default=None, help="comma-separated variants (default: all for the device)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (x4 on GPU)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (compile happens here)")
    parser.add_argument("--cpu-batch", type=int, default=None, help="override the CPU batch sizes")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU table")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 2, 1 warm-up and 1 timed step")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per row")
    parser.add_argument("--out", default=None, help="also write the tables to this Markdown file")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        preset, variant, device, batch, steps, warmup = args.worker
        print(json.dumps(worker(preset, variant, device, int(batch), int(steps), int(warmup))))
        return

    import torch

    from scorelab.cli.smoke import smoke_active, smoke_cap

    presets = args.presets.split(",")
    if smoke_active():  # SCORELAB_SMOKE=1: the same table, small (scorelab.cli.smoke)
        print(f"SCORELAB_SMOKE=1: a smoke run, its numbers mean nothing (presets {len(presets)} -> "
              f"{len(smoke_cap(presets, 1))}, as --quick: batch 2, 1 warm-up and 1 timed step)", flush=True)
        presets, args.quick = smoke_cap(presets, 1), True
    steps, warmup = (1, 1) if args.quick else (args.steps, args.warmup)
    out = [f"## Training throughput (torch {torch.__version__}, {torch.get_num_threads()} CPU threads)"]
    if not args.no_cpu:
        variants = args.variants.split(",") if args.variants else CPU_VARIANTS
        rows = []
        for p in presets:
            batch = 2 if args.quick else (args.cpu_batch or PRESETS[p][3])
            for v in variants:
                r = run_isolated([p, v, "cpu", str(batch), str(steps), str(warmup)], args.timeout)
                rows.append({"preset": p, "variant": v, "batch": batch, **r})
                print(table(rows[-1:], "row").splitlines()[-1], flush=True)
        note = f"Baseline process RSS (torch + scorelab imported): {baseline_rss():.0f} MiB."
        out.append(table(rows, "CPU") + "\n\n" + note)
    if torch.cuda.is_available():
        variants = args.variants.split(",") if args.variants else GPU_VARIANTS
        rows = []
        for p in presets:
            batch = 2 if args.quick else PRESETS[p][2]
            for v in variants:
                r = run_isolated([p, v, "cuda", str(batch), str(steps * 4), str(warmup + 3)], args.timeout)
                rows.append({"preset": p, "variant": v, "batch": batch, **r})
        out.append(table(rows, f"GPU: {torch.cuda.get_device_name()}"))
    text = "\n\n".join(out)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(("(smoke run: numbers mean nothing)\n\n" if smoke_active() else "") + text + "\n")


if __name__ == "__main__":
    main()
