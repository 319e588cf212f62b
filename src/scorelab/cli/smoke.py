"""Smoke runs: ``SCORELAB_SMOKE=1 python <command> ...`` checks a command end to end in seconds.

The command runs as typed, through the same code, with its work shrunk by the caps below: at most 2 training steps,
a handful of samples and evaluation images, at most 10 sampler steps, loose ODE tolerances, no data-loader workers.
It writes the same files in the same places, so what a smoke run proves is that the command, its config and its
files work; its numbers mean nothing. README's test runs every documented command this way
(``tests/test_readme.py``), and it is the quick check before a long job goes to a cluster.

Benchmarks (``bench/``) shrink their own loops with :func:`smoke_cap`. Files that a smoke run would cache for later
runs (the MNIST classifier behind ``fd_mnist``, reference statistics) go to a ``smoke/`` subfolder of the cache,
where no real run looks.
"""
from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

ENV = "SCORELAB_SMOKE"

# (dotted key, cap, what null means: "all" -> set the cap, "none" -> leave null). Keys a config lacks are skipped.
_CAPS: dict[str, list[tuple[str, float, str]]] = {
    "train": [
        ("trainer.max_steps", 2, "all"),
        ("data.batch_size", 16, "none"), ("data.n_train", 1024, "none"), ("data.n_val", 256, "none"),
        ("data.val_size", 64, "none"), ("callbacks.samples.n_samples", 16, "none"),
        ("callbacks.toy_metrics.n_samples", 256, "none"), ("callbacks.fid.n_samples", 16, "none"),
        ("callbacks.fid.batch_size", 16, "none"), ("callbacks.fid.ref_count", 64, "all"),
        ("callbacks.likelihood.n", 4, "none"), ("callbacks.likelihood.batch_size", 4, "none"),
        ("sampler.steps", 10, "none"), ("callbacks.fid.sampler.steps", 10, "none"),
        ("features.max_train_images", 512, "all"), ("scheduler.warmup_steps", 1, "none"),
    ],
    "sample": [
        ("n_samples", 16, "none"), ("batch_size", 16, "none"), ("task.per_class", 2, "none"),
        ("task.per_image", 2, "none"), ("task.points", 3, "none"), ("task.steps", 10, "none"),
        ("task.cloud", 200, "none"), ("task.paths", 50, "none"), ("task.frames", 5, "none"),
        ("task.images", 2, "none"), ("task.columns", 4, "none"), ("task.grid", 6, "none"),
        ("eval.ref_count", 64, "all"), ("eval.batch_size", 32, "none"), ("eval.kid_subsets", 2, "none"),
        ("eval.kid_subset_size", 8, "none"), ("eval.kid_reference_features", 64, "none"),
        ("features.max_train_images", 512, "all"),
    ],
    "likelihood": [
        ("n", 4, "all"), ("batch_size", 4, "none"), ("repeats", 2, "none"), ("vlb.num_steps", 25, "none"),
        ("vlb.timesteps", 4, "none"),
    ],
    "fit_grid": [("n_fit", 8, "none"), ("n_holdout", 8, "none"), ("max_evals", 12, "none")],
    "fid": [
        ("n", 16, "all"), ("ref_count", 64, "all"), ("batch_size", 32, "none"), ("kid_subsets", 2, "none"),
        ("kid_subset_size", 8, "none"), ("kid_reference_features", 64, "none"),
        ("features.max_train_images", 512, "all"),
    ],
}
# (dotted key, value) set outright when the key exists
_SETS: dict[str, list[tuple[str, Any]]] = {
    "train": [("trainer.max_time", None), ("trainer.num_sanity_val_steps", 0), ("trainer.limit_val_batches", 1),
              ("data.num_workers", 0),
              ("callbacks.likelihood.rtol", 1e-3), ("callbacks.likelihood.atol", 1e-3)],
    "likelihood": [("rtol", 1e-3), ("atol", 1e-3)],
    "sample": [("task.rtol", 1e-3), ("task.atol", 1e-3)],
    "fit_grid": [("reference.rtol", 1e-3), ("reference.atol", 1e-3)],
}
SAMPLER_STEPS = 10


def smoke_active() -> bool:
    """Whether this process runs in smoke mode (``SCORELAB_SMOKE`` set to anything but ``0`` or empty)."""
    return os.environ.get(ENV, "") not in ("", "0")


def smoke_cap(value: Any, cap: int | float) -> Any:
    """``min(value, cap)`` in smoke mode (``None`` becomes ``cap``), else ``value``: for benchmarks' own sizes."""
    if not smoke_active():
        return value
    if value is None:
        return cap
    if isinstance(value, (list, tuple)):
        return type(value)(value[: int(cap)])
    return type(value)(min(value, cap)) if isinstance(value, (int, float)) else value


def _has(cfg: DictConfig, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def apply_smoke(cfg: DictConfig) -> list[str]:
    """Shrink ``cfg`` in place for a smoke run of its command (``cfg.task_name``); return what changed.

    Nothing happens unless :func:`smoke_active`.
    """
    if not smoke_active():
        return []
    task = str(cfg.get("task_name", ""))
    changed = []
    with open_dict(cfg):
        for key, cap, null in _CAPS.get(task, []):
            if not _has(cfg, key):
                continue
            value = OmegaConf.select(cfg, key)
            if value is None and null == "all":
                new = cap
            elif _number(value) and (value < 0 or value > cap):  # -1: unlimited
                new = type(value)(cap)
            else:
                continue
            OmegaConf.update(cfg, key, new, merge=False)
            changed.append(f"{key} {value} -> {new}")
        for key, new in _SETS.get(task, []):
            if _has(cfg, key) and OmegaConf.select(cfg, key) != new:
                changed.append(f"{key} {OmegaConf.select(cfg, key)} -> {new}")
                OmegaConf.update(cfg, key, new, merge=False)
        for key in ("cache_dir", "eval.cache_dir", "callbacks.fid.cache_dir"):
            value = OmegaConf.select(cfg, key, default=None) if _has(cfg, key) else None
            if value is not None and not str(value).rstrip("/").endswith("smoke"):
                OmegaConf.update(cfg, key, os.path.join(str(value), "smoke"), merge=False)
    if changed:
        print(f"{ENV}=1: a smoke run, its numbers mean nothing ({'; '.join(changed)})")
    return changed


def cap_sampler(sampler_cfg: DictConfig | None) -> DictConfig | None:
    """A sampler config with at most :data:`SAMPLER_STEPS` steps in smoke mode (for a checkpoint's own sampler,
    which is known only once the checkpoint is read)."""
    if not smoke_active() or not isinstance(sampler_cfg, DictConfig) or not _number(sampler_cfg.get("steps")):
        return sampler_cfg
    if sampler_cfg.steps > SAMPLER_STEPS:
        sampler_cfg = sampler_cfg.copy()
        with open_dict(sampler_cfg):
            sampler_cfg.steps = SAMPLER_STEPS
    return sampler_cfg
